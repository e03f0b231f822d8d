"""Exceptions that end a run with a one-line message, and the exit statuses the launchers use.

`UserError`: a mistake the user can fix (config, paths, data, checkpoints). `Diverged`: the loss or
gradients stayed non-finite for train.max_nonfinite_steps steps in a row. The launchers print either
as a single `error: ...` line, without a traceback. Everything else is a bug in this project and
keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input; the message names what is wrong and what was expected."""


class Diverged(Exception):
    """Training produced only non-finite losses/gradients for too long; the last good checkpoint stays."""


EXIT_USER_ERROR = 2
EXIT_REQUEUE = 3
"""Exit status after a preemption signal was handled and a checkpoint saved: requeue me."""
EXIT_DIVERGED = 4
"""Exit status after a divergence stop: do not requeue (the same settings would diverge again)."""
