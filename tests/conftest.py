"""Fixtures every test file shares.

* Each test runs with the logs folder in its own ``tmp_path`` (``CV_PAPERS_LOGS``, read by ``shared.cli.logs_dir``
  at call time), the progress bars quiet, and torch's thread count, matmul precision and Lightning's seed variables
  put back afterwards: no test depends on the order the suite runs in.
* ``threads(n)``: run this test with ``n`` torch threads. The suite's own count is ``CV_PAPERS_TEST_THREADS``, else
  1: the suite's models are tiny, and on a busy machine (or several workers) more threads only wait on each other.
* ``run_cli(project, *args)``: ``python -m projects.<project> ...`` in this process (the project's
  ``__main__.run``, or ``entry``), returning the exit code, what it printed (an uncaught exception: code 1 and its
  traceback) and the CLI object; a non-zero exit fails the test unless ``check=False``. Subprocesses are kept for
  what needs one: a SIGKILL, two-process DDP, a wandb run.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import traceback
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


SUITE_THREADS = int(os.environ.get("CV_PAPERS_TEST_THREADS", 1))


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CV_PAPERS_LOGS", str(tmp_path / "logs"))
    monkeypatch.setenv("PROGRESS_REFRESH", "0")
    for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):
        monkeypatch.delenv(name, raising=False)
    torch.set_num_threads(SUITE_THREADS)
    precision = torch.get_float32_matmul_precision()
    yield
    torch.set_num_threads(SUITE_THREADS)
    torch.set_float32_matmul_precision(precision)


@pytest.fixture
def threads() -> Callable[[int], None]:
    """``threads(n)`` sets torch's thread count for the rest of this test (the suite's count comes back after)."""
    return torch.set_num_threads


@dataclass
class CLIRun:
    """One in-process CLI run: exit code, what it printed, the ``ProjectCLI`` (None after an error)."""

    project: str
    code: int
    out: str
    err: str
    cli: Any
    logs: Path

    def run_dir(self, name: str) -> Path:
        return self.logs / self.project / name

    def summary(self, name: str, stage: str = "fit") -> dict:
        """The run's ``summary.json`` (``fit``), or ``<stage>_summary.json`` of a ``validate`` / ``test``."""
        return json.loads((self.run_dir(name) / ("summary.json" if stage == "fit" else f"{stage}_summary.json"))
                          .read_text())

    @property
    def last_line(self) -> str:
        lines = self.err.strip().splitlines()
        return lines[-2] if len(lines) > 1 and lines[-1].startswith("(set CV_PAPERS_DEBUG") else (lines or [""])[-1]


@pytest.fixture
def run_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., CLIRun]:
    """``run_cli("did", "fit", "--config", ..., check=True)``; runs from the repository root."""
    monkeypatch.chdir(REPO)

    def run(project: str, *args: object, check: bool = True,
            entry: Callable[[list[str]], Any] | None = None) -> CLIRun:
        entry = entry or importlib.import_module(f"projects.{project}.__main__").run
        out, err = io.StringIO(), io.StringIO()
        code, cli = 0, None
        with redirect_stdout(out), redirect_stderr(err):
            try:
                cli = entry([str(a) for a in args])
            except SystemExit as exit_:
                code = 0 if exit_.code is None else exit_.code if isinstance(exit_.code, int) else 1
            except Exception:  # noqa: BLE001 -- what `python -m` would print before exiting 1
                code = 1
                traceback.print_exc()
        result = CLIRun(project, code, out.getvalue(), err.getvalue(), cli, Path(os.environ["CV_PAPERS_LOGS"]))
        if check and code != 0:
            raise AssertionError(f"python -m projects.{project} {' '.join(map(str, args))} exited {code}:\n"
                                 f"{result.out[-3000:]}\n{result.err[-4000:]}")
        return result

    return run
