"""The row registry and the alternating timer behind ``make bench``."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch


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


_ROWS: dict[str, BenchRow] = {}


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


def device_target(gpu: float, cpu: float) -> float:
    """A row's target on the machine it runs on: the box steps are built for accelerators (issue 18: >= 10x a
    per-sample loop on a GPU, >= 1x on CPU, where they label with scipy's C code like the loop)."""
    return gpu if torch.cuda.is_available() else cpu


def registered_rows() -> list[BenchRow]:
    return list(_ROWS.values())


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
