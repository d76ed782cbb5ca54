"""Benchmark rows: each times a method against its own baseline in one process.

A project registers rows in ``projects/<name>/bench.py``; shared rows live in ``shared/bench/rows.py``.
``make bench`` (``python -m shared.bench [FILTER]``) discovers and runs them all, then the input-pipeline rows
(``shared/bench/pipeline.py``: each project's training loader against its training step, in images/s).
"""

from shared.bench.registry import BenchCase, BenchRow, register, registered_rows, time_pair

__all__ = ["BenchCase", "BenchRow", "register", "registered_rows", "time_pair"]
