"""Benchmark rows: each times a method against its own baseline in one process.

A project registers its rows in ``projects/<name>/bench.py`` (``make bench`` rows with :func:`register`,
``make bench-gpu`` rows with :func:`register_gpu_row`, input-pipeline rows with :func:`register_pipeline_row`) and
names that module in the ``cv_papers.bench`` entry-point group of ``pyproject.toml``; shared rows live in
``shared/bench/rows.py``. ``make bench`` (``python -m shared.bench [FILTER]``) discovers and runs them all, then the
input-pipeline rows (``shared/bench/pipeline.py``: each project's training loader against its training step).
"""

from shared.bench.registry import (
    BenchCase,
    BenchRow,
    GpuRow,
    PipelineRow,
    discover,
    register,
    register_gpu_row,
    register_pipeline_row,
    registered_rows,
    time_pair,
)

__all__ = ["BenchCase", "BenchRow", "GpuRow", "PipelineRow", "discover", "register", "register_gpu_row",
           "register_pipeline_row", "registered_rows", "time_pair"]
