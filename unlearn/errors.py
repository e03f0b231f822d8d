"""Exceptions that end a run with a one-line message, and the exit statuses the launchers use.

`UserError`: a mistake the user can fix (config, paths, data, checkpoints); `NoSpace`, one of them:
a checkpoint did not fit on its disk. `Diverged`: the loss or gradients stayed non-finite for
train.max_nonfinite_steps steps in a row. The launchers print each as a single `error: ...` line,
without a traceback; `Stopped` (a stop signal ended an evaluation) as one line too, exit 3. Everything
else is a bug in this project and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Iterator

EXIT_USER_ERROR = 2
EXIT_REQUEUE = 3
"""Exit status after a preemption signal was handled and a checkpoint saved (an evaluation: the suites
that finished kept in eval.json): requeue me."""
EXIT_DIVERGED = 4
"""Exit status after a divergence stop: do not requeue (the same settings would diverge again)."""
EXIT_NO_SPACE = 5
"""Exit status when a checkpoint did not fit on its disk (the partial save removed, older ones intact)."""


class UserError(Exception):
    """A problem with the user's input; the message names what is wrong and what was expected."""

    every_rank = False
    """True when every rank raises it alike (config checks before start-up): only rank 0 prints it."""
    exit_status = EXIT_USER_ERROR


class NoSpace(UserError):
    """The disk holding the checkpoints is full; the message names the folder and the space needed."""

    exit_status = EXIT_NO_SPACE


class Diverged(Exception):
    """Training produced only non-finite losses/gradients for too long; the last good checkpoint stays."""


def guarded(fn: Callable[[], object]) -> None:
    """Run `fn`; a UserError becomes one `error:` line on stderr and exit status 2 (5 for NoSpace), a
    divergence stop one line and status 4 (no traceback), a Stopped one line and status 3. In a
    multi-rank run the launcher (deepspeed, torchrun, srun --kill-on-bad-exit) then ends the other
    ranks, so none waits in a collective."""
    try:
        check_environment()
        fn()
    except UserError as exc:
        if not exc.every_rank or os.environ.get("RANK", "0") == "0":
            print(f"error: {_one_line(exc)}", file=sys.stderr, flush=True)
        raise SystemExit(exc.exit_status) from None
    except Diverged as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_DIVERGED) from None
    except Stopped as exc:
        print(f"{exc}: what finished is kept; the same command does the rest", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_REQUEUE) from None


class Stopped(BaseException):
    """A stop signal ended work that keeps what it finished (an evaluation: its finished suites), so the
    same command does only the rest; exit status EXIT_REQUEUE. A BaseException, like KeyboardInterrupt,
    so that no `except Exception` on its way swallows it."""


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """Within the block (main thread), the first SIGTERM (preemption, scancel) or SIGUSR1 (SLURM's warning
    before the time limit) raises Stopped; later ones (a stop often comes both ways) are ignored from
    then on, so the clean-up and the exit run to the end."""
    import signal

    def stop(signum, frame) -> None:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        raise Stopped(f"stopped by {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is stop:  # no stop came: the handlers of before
            for sig, handler in previous.items():
                signal.signal(sig, handler)


REQUIRED = ("yaml", "torch", "transformers")
"""Packages every launcher needs (pyproject.toml pins them), looked up without importing them."""


def check_environment() -> None:
    """A Python without the project's packages (a new shell where .venv is not active) gets one line
    saying how to reach the environment, before anything runs or is written."""
    import importlib.util

    missing = [name for name in REQUIRED if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"{', '.join(missing)} not installed for {sys.executable}; expected the project's "
                        "environment: `source .venv/bin/activate` in this shell (`make setup` creates it), "
                        "or `pip install -e .` into yours")


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
