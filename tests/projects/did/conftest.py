"""What several DiD tests share, built once per session: the toy COCO set and one short fit on it."""

from __future__ import annotations

import os
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO
from pathlib import Path

import pytest

from projects.did.__main__ import run
from projects.did.data import write_toy_coco
from tests.projects.did.toy_set import REPO, TOY, toy_args


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy set in the COCO 2014 layout (read-only for the tests)."""
    return write_toy_coco(tmp_path_factory.mktemp("did_toy") / "toy", **TOY)


@pytest.fixture(scope="session")
def short_fit(toy_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``fit`` on the toy config for 2 steps with one validation batch after the second (CSV logger), in this
    process: its run folder (``summary.json``, ``panels/``, ``checkpoints/last.ckpt``)."""
    logs = tmp_path_factory.mktemp("did_fit_logs")
    seed_vars = {name: os.environ.get(name) for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CV_PAPERS_LOGS", str(logs))
        mp.setenv("PROGRESS_REFRESH", "0")
        mp.chdir(REPO)
        out, err = StringIO(), StringIO()
        try:
            with redirect_stdout(out), redirect_stderr(err):
                run(["fit", *toy_args(toy_root), "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
                     "--trainer.limit_val_batches", "1", "--logger", "csv", "--run_name", "short"])
        except SystemExit as exit_:
            raise AssertionError(f"the short toy fit exited {exit_.code}:\n{err.getvalue()[-4000:]}") from None
        finally:
            for name, value in seed_vars.items():   # seed_everything's variables stay out of the other tests
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
    return logs / "did" / "short"
