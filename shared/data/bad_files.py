"""Unreadable images in the middle of a run: replaced, named once, counted, and a stop when too many are bad.

Off by default: an unreadable or truncated image ends the run with one line naming it (right for a small set).
With ``--data.skip_bad_files true`` (``fit`` / ``validate`` / ``test``; ``predict`` skips them when it scans its
folder) a sample whose image cannot be read is replaced by the next readable sample in index order
(:class:`SkipBadFiles`): the replacement depends only on the index, inside the sample's own seeded generator
(``shared.data.loaders.SeededSamples``), so the same files are replaced the same way on a resume, with any number
of workers. Each replaced file is named once in a warning line; :class:`BadFiles` counts them per split in the
main process (the dataset marks each sample, the collate function carries the marks, the loader reads them off)
and stops the run with one line when a pass over a split meets more than ``--data.max_bad_fraction`` of its
samples bad. The counts go into ``summary.json`` (``bad_files``) and the checkpoint (the datamodule's state).

A replaced evaluation image is scored as its replacement (the metrics stay defined; the count says how far off).
On several processes each counts its own shard against the fraction of that shard.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import Dataset, default_collate

from shared.data.images import ImageReadError


class SkipBadFiles(Dataset):
    """``(dataset[i], ())``, or, when reading sample ``i`` raises :class:`ImageReadError`, ``(dataset[j], bad)``
    for the next readable ``j`` in index order (wrapping) with the unreadable files' paths in ``bad``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, tuple[str, ...]]:
        bad: list[str] = []
        n = len(self.dataset)
        for step in range(n):
            try:   # the index as given first (a padding index included), then the next ones in order
                return self.dataset[index if step == 0 else (index + step) % n], tuple(bad)
            except ImageReadError as err:
                bad.append(f"{err.path or '?'}: {err.reason}")
        raise ValueError(f"no readable image in the {n} samples of {type(self.dataset).__name__}: {bad[:3]}")


def collate_marked(collate_fn: Callable | None) -> Callable:
    """The collate function of marked samples: ``(batch, bad paths of the batch)``."""
    inner = collate_fn or default_collate

    def collate(items: list[tuple[Any, tuple[str, ...]]]) -> tuple[Any, list[str]]:
        return inner([sample for sample, _ in items]), [b for _, bad in items for b in bad]

    return collate


class BadFiles:
    """The run's tally of replaced images, per split; the budget ``max_fraction`` of a pass over a split."""

    def __init__(self, max_fraction: float = 0.001) -> None:
        if not 0 <= max_fraction < 1:
            raise ValueError(f"data.max_bad_fraction must be in [0, 1); got {max_fraction}")
        self.max_fraction = max_fraction
        self.count: dict[str, int] = {}
        self.files: dict[str, list[str]] = {}

    def allowed(self, size: int) -> int:
        return math.floor(self.max_fraction * size + 1e-9)

    def watch(self, batches: Iterator[tuple[Any, list[str]]], split: str, size: int) -> Iterator[Any]:
        """Unmark the batches of one pass over ``split`` (``size`` samples in this process), recording every bad
        file; a pass that meets more than the budget stops with one line."""
        in_pass = 0
        for batch, bad in batches:
            for entry in bad:
                in_pass += 1
                self.count[split] = self.count.get(split, 0) + 1
                path = entry.split(": ", 1)[0]
                seen = self.files.setdefault(split, [])
                if path not in seen:
                    seen.append(path)
                    sys.stderr.write(f"warning: data.skip_bad_files: unreadable image replaced by the next sample: "
                                     f"{entry} ({split}: {in_pass} this pass, at most {self.allowed(size)} of "
                                     f"{size})\n")
                if in_pass > self.allowed(size):
                    raise ValueError(
                        f"data.max_bad_fraction {self.max_fraction:g}: {in_pass} unreadable image(s) in this pass over "
                        f"the {split} split of {size} samples (at most {self.allowed(size)}); the files: "
                        f"{', '.join(self.files[split][:5])}{' ...' if len(self.files[split]) > 5 else ''}. "
                        f"Replace or remove them, or raise --data.max_bad_fraction")
            yield batch

    def summary(self) -> dict[str, Any]:
        return {"max_fraction": self.max_fraction,
                **{split: {"replaced": self.count[split], "files": self.files[split]} for split in self.count}}

    def state_dict(self) -> dict[str, Any]:
        return {"count": dict(self.count), "files": {k: list(v) for k, v in self.files.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = dict(state.get("count", {}))
        self.files = {k: list(v) for k, v in state.get("files", {}).items()}
