"""The row registries and the alternating timer behind ``make bench``, ``make bench-gpu`` and the pipeline rows.

Projects register their rows here; the bench entry points find them through the ``cv_papers.bench`` entry-point
group of ``pyproject.toml`` (:func:`discover`), so nothing under ``shared/`` names a project.
"""

from __future__ import annotations

import importlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Literal

import torch

ENTRY_POINT_GROUP = "cv_papers.bench"


@dataclass
class BenchCase:
    """What a row's setup returns: the two callables to compare and a few facts about the setting."""

    method: Callable[[], object]
    baseline: Callable[[], object]
    details: dict = field(default_factory=dict)


@dataclass
class BenchRow:
    """One registered comparison.

    ``kind="speedup"`` reports baseline_time / method_time and passes when ratio >= target;
    ``kind="overhead"`` reports method_time / baseline_time and passes when ratio <= target.
    ``grad=False`` times both callables under ``torch.inference_mode()``; rows that time training steps
    (forward + backward + optimizer step) register with ``grad=True``.
    """

    name: str
    setup: Callable[[], BenchCase]
    target: float
    kind: Literal["speedup", "overhead"]
    repeats: int = 15
    warmup: int = 3
    grad: bool = False


@dataclass
class GpuRow:
    """One paper-size row of ``make bench-gpu``. ``build(device, tiny)`` returns the case and the images one call of
    the method and one call of the baseline process (for images/s); ``unit`` names what those are (the training
    rows' builders take ``batch`` too: the input-pipeline rows time their steps at batch 2 on a CPU). ``grad``:
    training steps (autograd on); without it both run under ``torch.inference_mode()``. The bf16 pass runs the fp32
    case under bf16 autocast, or, where ``build_bf16`` is set (generation: pipelines load the weights in half
    precision), that case. ``switches``: the speed switches ``build(device, tiny, switch=NAME)`` takes
    (``shared/bench/switches.py``; it then returns the switched step and its plain twin)."""

    name: str
    paper: str
    build: Callable[..., tuple[BenchCase, int, int]]
    unit: str = "img"
    repeats: int = 10
    warmup: int = 3
    grad: bool = True
    build_bf16: Callable[[str, bool], tuple[BenchCase, int, int]] | None = None
    switches: tuple[str, ...] = ()


@dataclass
class PipelineRow:
    """One project's training loader against its training step (``shared/bench/pipeline.py``).

    ``loader(root, workers, files, tiny)`` writes a dataset in the real layout under ``root`` and returns the
    project's training DataLoader over it with a dict of details; ``gpu_row`` names the :class:`GpuRow` whose
    method is the paper-size step."""

    name: str
    paper: str
    loader: Callable[..., tuple[torch.utils.data.DataLoader, dict]]
    gpu_row: str


_ROWS: dict[str, BenchRow] = {}
_GPU_ROWS: dict[str, GpuRow] = {}
_PIPELINE_ROWS: dict[str, PipelineRow] = {}


def register(name: str, *, target: float, kind: Literal["speedup", "overhead"], repeats: int = 15,
             warmup: int = 3, grad: bool = False) -> Callable[[Callable[[], BenchCase]], Callable[[], BenchCase]]:
    """Decorator: register ``setup`` (a function returning a :class:`BenchCase`) as a bench row."""
    if kind not in ("speedup", "overhead"):
        raise ValueError(f"bench row {name!r}: kind must be 'speedup' or 'overhead', got {kind!r}")

    def decorate(setup: Callable[[], BenchCase]) -> Callable[[], BenchCase]:
        if name in _ROWS:
            raise ValueError(f"bench row {name!r} is registered twice")
        _ROWS[name] = BenchRow(name, setup, target, kind, repeats, warmup, grad)
        return setup

    return decorate


def _add(table: dict, row: GpuRow | PipelineRow) -> None:
    if row.name in table:
        raise ValueError(f"bench row {row.name!r} is registered twice")
    table[row.name] = row


def register_gpu_row(row: GpuRow) -> GpuRow:
    """Add a ``make bench-gpu`` row (rows run project by project, in the order each project registers them)."""
    _add(_GPU_ROWS, row)
    return row


def register_pipeline_row(row: PipelineRow) -> PipelineRow:
    """Add an input-pipeline row (``make bench-pipeline``)."""
    _add(_PIPELINE_ROWS, row)
    return row


def _in_project_order(rows: list, fn_of: Callable) -> list:
    """Rows grouped by the module that registered them (``shared``'s first, then the projects' in name order), each
    module's rows in registration order: the order does not depend on which test or tool imported a module first."""
    return sorted(rows, key=lambda row: (not fn_of(row).__module__.startswith("shared."), fn_of(row).__module__))


def gpu_rows() -> list[GpuRow]:
    return _in_project_order(list(_GPU_ROWS.values()), lambda row: row.build)


def pipeline_rows() -> list[PipelineRow]:
    return _in_project_order(list(_PIPELINE_ROWS.values()), lambda row: row.loader)


def discover() -> None:
    """Import the shared rows and every module of the ``cv_papers.bench`` entry-point group (each project's
    ``bench.py``), which register their rows on import. Idempotent."""
    importlib.import_module("shared.bench.rows")
    found = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)
    if not found:
        raise RuntimeError(f"no '{ENTRY_POINT_GROUP}' entry points: the repository is not installed "
                           f"(run `make install` in {Path(__file__).resolve().parents[2]})")
    for ep in found:
        ep.load()


def device_target(gpu: float, cpu: float) -> float:
    """A row's target on the machine it runs on: the box steps are built for accelerators (>= 10x a per-sample
    loop on a GPU, >= 1x on CPU, where they label with scipy's C code like the loop)."""
    return gpu if torch.cuda.is_available() else cpu


def registered_rows() -> list[BenchRow]:
    return _in_project_order(list(_ROWS.values()), lambda row: row.setup)


def _timed(fn: Callable[[], object]) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def time_one(fn: Callable[[], object], repeats: int = 15, warmup: int = 3, grad: bool = False) -> float:
    """Median seconds of one call of ``fn`` after ``warmup`` calls (autograd on with ``grad``, as :func:`time_pair`)."""
    with torch.inference_mode(not grad), torch.set_grad_enabled(grad):
        for _ in range(warmup):
            fn()
        return statistics.median(_timed(fn) for _ in range(repeats))


def time_pair(method: Callable[[], object], baseline: Callable[[], object], repeats: int = 15,
              warmup: int = 3, grad: bool = False) -> dict:
    """Time ``method`` and ``baseline`` alternately after a warm-up; medians of each and of the per-pair ratio.

    Without ``grad`` both run under ``torch.inference_mode()``; with it, autograd is on (training steps).
    """
    with torch.inference_mode(not grad), torch.set_grad_enabled(grad):
        for _ in range(warmup):
            method()
            baseline()
        t_method, t_base, ratios = [], [], []
        for i in range(repeats):
            # Alternate which one goes first so drifts (clocks, caches) hit both equally.
            if i % 2 == 0:
                tm, tb = _timed(method), _timed(baseline)
            else:
                tb, tm = _timed(baseline), _timed(method)
            t_method.append(tm)
            t_base.append(tb)
            ratios.append(tm / tb)
    return {
        "method_s": statistics.median(t_method),
        "baseline_s": statistics.median(t_base),
        "method_over_baseline": statistics.median(ratios),
    }
