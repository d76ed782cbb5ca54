"""What every toy study does alike: run ``fit`` through the project's CLI, read its ``summary.json``, write
the rows to the project's committed result file (mean ± std cells: ``shared.stats``).

A study's result file (``projects/<name>/results/<study>.json``) is what ``make claims`` renders; the raw runs
stay under ``logs/<name>/<run>/``.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import instantiate_module

from shared.backbones.weights import torch_load
from shared.cli import REPO_ROOT, logs_dir


def run_fit(project: str, config: str, name: str, seed: int, overrides: Sequence[str] = (),
            quiet: bool = True) -> dict:
    """One ``python -m projects.<project> fit`` (CSV logger); returns its summary plus ``wall_s`` and ``run_dir``.

    A run folder that already finished the very same command (``study_command.json``) is reused, not re-run,
    so a study interrupted or extended (another seed, another init) only trains what is missing.
    """
    cmd = [sys.executable, "-m", f"projects.{project}", "fit", "--config", config, "--seed_everything", str(seed),
           "--run_name", name, "--logger", "csv", *overrides]
    rerun = ["--overwrite", "true"]     # an unfinished earlier run of this name is replaced, not continued
    run_dir = logs_dir() / project / name
    stamp = run_dir / "study_command.json"
    if stamp.is_file() and json.loads(stamp.read_text())["args"] == cmd[1:] and (run_dir / "summary.json").is_file():
        print("reusing", run_dir, flush=True)
        return {**json.loads((run_dir / "summary.json").read_text()), "wall_s": json.loads(stamp.read_text())["wall_s"],
                "run_dir": str(run_dir)}
    print("$", " ".join(cmd[1:]), flush=True)
    stamp.unlink(missing_ok=True)
    start = time.perf_counter()
    subprocess.run([*cmd, *rerun], check=True, cwd=REPO_ROOT, stdout=subprocess.DEVNULL if quiet else None)
    wall = round(time.perf_counter() - start, 1)
    stamp.write_text(json.dumps({"args": cmd[1:], "wall_s": wall}))
    return {**json.loads((run_dir / "summary.json").read_text()), "wall_s": wall, "run_dir": str(run_dir)}


def results_path(project: str, study: str) -> Path:
    return REPO_ROOT / "projects" / project / "results" / f"{study}.json"


def committed(project: str, study: str) -> dict | None:
    """The committed result file of a study (``rows``, ``command``, ...), or None before its first run."""
    path = results_path(project, study)
    return json.loads(path.read_text()) if path.is_file() else None


def write_results(project: str, study: str, payload: dict) -> Path:
    """Write ``payload`` (rows, table, the command) to the project's committed result file."""
    path = results_path(project, study)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {path}")
    return path


def rebuild_toy_run(ckpt: str | Path, module_cls: type, data_cls: type, what: str) -> tuple[Any, Any, dict]:
    """A toy run's module (weights loaded) and data module from its Lightning checkpoint, for a measurement.

    Our own checkpoint, read with ``weights_only=True``; the module is built from its hyper-parameters as
    ``--ckpt_path`` would (the injected ``net`` from its ``class_path`` / ``init_args``) with ``pretrained`` off
    (the state dict holds the weights); a relative data root is taken from the repository root. ``what`` names
    the measurement in the error raised for a run on a real dataset. Returns ``(module, datamodule, datamodule
    hyper-parameters)``.
    """
    state = torch_load(ckpt)
    hp, dm = state.get("hyper_parameters"), state.get("datamodule_hyper_parameters")
    if hp is None or dm is None:
        raise ValueError(f"{ckpt}: no hyper_parameters / datamodule_hyper_parameters (not a training checkpoint "
                         "of this repository's CLI)")
    if dm.get("dataset") != "toy":
        raise ValueError(f"{ckpt}: {what} needs the toy dataset's ground truth; this run used {dm.get('dataset')!r}")
    hp = {k: v for k, v in hp.items() if k != "_instantiator"}
    net = hp["net"]
    hp["net"] = {**net, "init_args": {**net.get("init_args", {}), "pretrained": False}}
    module = instantiate_module(module_cls, hp)
    module.load_state_dict(state["state_dict"])
    root = Path(dm["root"])
    if not root.is_absolute() and not root.exists():
        root = REPO_ROOT / root                                   # runs launched from the repository root
    dm = {**_init_args(data_cls, dm), "root": str(root)}
    return module, data_cls(**dm), dm


def _init_args(cls: type, hp: dict) -> dict:
    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in hp.items() if k in params}


def keep_committed_rows(project: str, study: str, rows: list[dict], key: Sequence[str] = ("init", "variant", "seed"),
                        ) -> list[dict]:
    """``rows`` plus the committed result file's rows this run did not redo (matched on ``key``).

    A study extended by another init or seed (``--inits scratch``) keeps the rows already committed instead of
    re-training them; their run folders need not exist any more. Committed rows come first, in their order.
    """
    path = results_path(project, study)
    if not path.is_file():
        return rows
    redone = {tuple(r[k] for k in key) for r in rows}
    kept = [r for r in json.loads(path.read_text()).get("rows", []) if tuple(r.get(k) for k in key) not in redone]
    if kept:
        print(f"keeping {len(kept)} committed row(s) of {path.name} this run did not redo", flush=True)
    return [*kept, *rows]


def with_option(argv: Sequence[str], option: str, values: Sequence[str], default: Sequence[str]) -> list[str]:
    """``argv`` with ``option``'s values replaced by ``values`` (dropped when they are the ``default``): the
    command that regenerates a result file whose rows came from several runs of a study."""
    out, skipping = [], False
    for a in argv:
        if a == option or a.startswith(option + "="):
            skipping = a == option
            continue
        if skipping and not a.startswith("--"):
            continue
        skipping = False
        out.append(a)
    return out if list(values) == list(default) else [*out, option, *values]
