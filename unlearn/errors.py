"""The one exception type for mistakes a user can fix (config, paths, data, checkpoints).

Launchers turn it into a one-line `error: ...` and exit status 2, without a traceback.
Everything else is a bug in this project and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input; the message names what is wrong and what was expected."""


EXIT_USER_ERROR = 2
EXIT_REQUEUE = 3
"""Exit status after a preemption signal was handled and a checkpoint saved: requeue me."""
