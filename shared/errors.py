"""Errors a user caused end the run with one line; divergence and interruption with their own exit codes."""

from __future__ import annotations

import errno
import os
import sys

from lightning.pytorch.utilities.exceptions import SIGTERMException

from shared.interrupt import EXIT_DIVERGED, EXIT_INTERRUPTED
from shared.nonfinite import TrainingDiverged


def run_with_clear_errors(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``; a ``FileNotFoundError`` / ``ValueError``, or an ``OSError`` about a path (a file
    where a folder is needed, no permission), exits with code 2 and its one-line message (``CV_PAPERS_DEBUG=1``
    re-raises it with the traceback). A diverged run exits with ``EXIT_DIVERGED`` and its one line, an interrupted
    one with ``EXIT_INTERRUPTED`` (``shared.interrupt``). Shared by every command-line entry point."""
    try:
        return fn(*args, **kwargs)
    except SIGTERMException as stop:    # a SystemExit with code 0 in Lightning: an interrupted run is not finished
        finish_wandb(EXIT_INTERRUPTED)
        if getattr(stop, "message", ""):
            sys.stderr.write(f"{stop.message}\n")
        sys.exit(EXIT_INTERRUPTED)
    except TrainingDiverged as err:
        if os.environ.get("CV_PAPERS_DEBUG"):
            raise
        finish_wandb(EXIT_DIVERGED)
        sys.stderr.write(f"error: {err}\n")
        sys.exit(EXIT_DIVERGED)
    except (ValueError, OSError) as err:
        user_error = isinstance(err, ValueError | FileNotFoundError) or err.filename is not None  # OSError: a path
        if os.environ.get("CV_PAPERS_DEBUG") or not user_error:
            raise
        finish_wandb(2)
        sys.stderr.write(f"error: {one_line(err)}\n(set CV_PAPERS_DEBUG=1 for the traceback)\n")
        sys.exit(2)


def finish_wandb(exit_code: int) -> None:
    """Close a wandb run now (it prints its "wandb sync ..." lines), so the error is the last line printed
    rather than followed by them at exit. Nothing when wandb was never imported."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)


PATH_HINTS = {errno.ENOTDIR: "a part of this path is a file; expected a folder there",
              errno.EEXIST: "a file is in the way of a folder to create there",
              errno.EISDIR: "a folder where a file was expected",
              errno.EACCES: "check the permissions or choose another path",
              errno.ENOSPC: "the disk is full"}


def one_line(err: BaseException) -> str:
    """The error's message on one line. An error raised inside a DataLoader worker reaches the main process as
    "Caught ValueError in DataLoader worker process 3. Original Traceback ... ValueError: <message>": keep the
    message and say where it was raised."""
    if isinstance(err, OSError) and err.filename is not None and not isinstance(err, FileNotFoundError):
        hint = PATH_HINTS.get(err.errno)
        return f"{err.filename}: {err.strerror}" + (f" ({hint})" if hint else "")
    text = str(err)
    if "Original Traceback" in text:
        name = type(err).__name__
        tail = text.rstrip().rsplit(f"\n{name}: ", 1)
        where = text.splitlines()[0].removeprefix(f"Caught {name} ").rstrip(".")
        text = f"{tail[1] if len(tail) == 2 else text.rstrip().splitlines()[-1]} (raised {where})"
    return " ".join(line.strip() for line in text.strip().splitlines())
