"""Benchmark rows: each times a method against its own baseline in one process.

A project registers rows in ``projects/<name>/bench.py``; shared rows live in ``shared/bench/rows.py``.
``make bench`` (``python -m shared.bench [FILTER]``) discovers and runs them all.
"""

from shared.bench.registry import BenchCase, BenchRow, register, registered_rows, time_pair

__all__ = ["BenchCase", "BenchRow", "register", "registered_rows", "time_pair"]
