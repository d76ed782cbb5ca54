"""Checks a DataModule runs in ``setup``: a bad dataset stops the run with one line naming the file.

Each check raises ValueError whose message names the file (and the field), the value found, what was
expected and what to do, so the CLI can print it as a single ``error:`` line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def require_samples(dataset_len: int, split: str, source: str | Path) -> None:
    """Refuse an empty split: training or evaluating on nothing would otherwise end silently without metrics."""
    if dataset_len == 0:
        raise ValueError(f"{source}: the {split!r} split has no samples, expected at least one; check that the "
                         "file lists this split's images (and data.root / the split name)")


def require_labels_in_range(labels: Sequence[int] | np.ndarray, num_classes: int, source: str | Path, field: str,
                            base: int = 0, classes_from: str = "data.num_classes",
                            advice: str = "fix the file or set data.num_classes") -> None:
    """Every label in ``[0, num_classes)``. ``base`` is the file's first class number (1 for 1-based files), so
    the message shows the values and the valid range as they are written in ``source``; ``classes_from`` says
    where ``num_classes`` comes from (the config, or the format itself)."""
    values = np.asarray(labels, dtype=np.int64).reshape(-1)
    bad = values[(values < 0) | (values >= num_classes)]
    if bad.size:
        distinct = list(dict.fromkeys(int(v) + base for v in bad.tolist()))
        shown = ", ".join(map(str, distinct[:5])) + (", ..." if len(distinct) > 5 else "")
        raise ValueError(f"{source}: {field} has {bad.size} value(s) outside {base}..{num_classes - 1 + base} "
                         f"({classes_from}={num_classes}): {shown}; {advice}")


def require_num_classes(found: int, num_classes: int, source: str | Path, what: str) -> None:
    """The dataset defines ``found`` classes (``what`` they are: 'categories', 'wnids'); the config says
    ``num_classes``."""
    if found != num_classes:
        raise ValueError(f"{source}: {found} {what} but data.num_classes={num_classes}; set --data.num_classes "
                         f"{found} to match, or fix the file")
