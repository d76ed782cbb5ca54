"""The DataLoaders every project builds alike: training resumable to the sample, evaluation exact on many processes.

Training (:func:`train_loader`)

* the order of an epoch is a permutation drawn from ``seed + epoch`` (as ``DistributedSampler`` draws it), sharded
  over the processes by the sampler itself, so Lightning leaves it in place;
* every sample's random augmentation is drawn from its own generator seeded by ``(seed, epoch, index)``
  (:class:`SeededSamples`): the same crops and flips with 0 or 8 workers, persistent or not, on 1 or 8 GPUs, and
  after a resume;
* each pass asks the trainer which epoch it is and how many of its batches are already trained (both restored
  from the checkpoint on a resume), and skips exactly those samples: a run resumed in the middle of an epoch sees
  the rest of that epoch's order (Lightning alone would restart the epoch with a new order).

Evaluation (:func:`eval_loader`): in order; on several processes each sample is scored by exactly one of them
(:class:`ShardSampler`: no padding with repeated samples, so mAP and top-1 on 8 GPUs are the 1-GPU
numbers; the metrics gather uneven shards through torchmetrics). A set smaller than the number of processes
leaves some process no sample: that process runs one marked step instead (the set's first sample, which
:func:`scored` tells the module to count as none), so every process validates and logs alike.

Neither loader draws from the global random generator when its iterator starts (each has its own
``torch.Generator``), so validation passes do not shift the training's dropout stream.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, SequentialSampler

from shared.data.bad_files import BadFiles, SkipBadFiles, collate_marked
from shared.metrics import IGNORE_INDEX


def run_seed() -> int:
    """The run's ``seed_everything`` value (Lightning exports it as ``PL_GLOBAL_SEED``), else 0."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample's augmentation in one epoch (``numpy.random.SeedSequence`` mixing)."""
    return int(np.random.SeedSequence([abs(seed), epoch, index]).generate_state(1, np.uint64)[0] >> 1)


class SeededSamples(Dataset):
    """Wraps a dataset: item ``(index, seed)`` is ``dataset[index]`` with torch's CPU generator seeded by ``seed``
    for that call only (the caller's generator state is restored after it)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


class EpochSampler(DistributedSampler):
    """``DistributedSampler``'s order (permutation from ``seed + epoch``, padded and sharded over ``num_replicas``)
    yielding ``(index, sample_seed)`` pairs for :class:`SeededSamples`.

    ``position()``, when given, returns ``(epoch, samples of this shard already trained)`` at the start of each
    pass; the pass is that epoch without those samples. Without it the epoch is ``set_epoch``'s, from the start.
    """

    def __init__(self, dataset: Dataset, seed: int, shuffle: bool = True, num_replicas: int = 1, rank: int = 0,
                 position: Callable[[], tuple[int, int]] | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.position = position

    def __iter__(self) -> Iterator[tuple[int, int]]:
        skip = 0
        if self.position is not None:
            self.epoch, skip = self.position()
        epoch = self.epoch
        for index in list(super().__iter__())[skip:]:
            yield index, sample_seed(self.seed, epoch, index)


class ShardSampler(DistributedSampler):
    """Samples ``rank, rank + num_replicas, ...`` in order: every sample once over all processes, none repeated
    (a ``DistributedSampler`` subclass, so Lightning keeps it; a process may get one sample fewer, or none).

    ``pad_with``: fill every shard up to the longest with this index, for a dataset that reads it as "nothing to
    score" (SPM's validation steps, fewer than the processes: each process still runs as many steps, which DDP's
    first forward after training needs)."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, pad_with: int | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.total_size, self.pad_with = len(dataset), pad_with
        self.num_samples = len(range(rank, self.total_size, num_replicas))
        if pad_with is not None:
            self.num_samples = -(-self.total_size // num_replicas)

    def __iter__(self) -> Iterator[int]:
        mine = list(range(self.rank, self.total_size, self.num_replicas))
        return iter(mine + [self.pad_with] * (self.num_samples - len(mine)))


PAD = -1   # the index of a padding step's sample in an evaluation shard


class PaddedSamples(Dataset):
    """``dataset[i]``, and for :data:`PAD` the first sample (a real input for the forward; :func:`scored` says it
    counts as none)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[0 if index == PAD else index]


class WatchedLoader(DataLoader):
    """A DataLoader that, given ``bad_files`` (a :class:`~shared.data.bad_files.BadFiles`), reads the marks of
    :class:`~shared.data.bad_files.SkipBadFiles` off its batches and yields the batches as the model expects them.
    ``padding_only``: this process's evaluation shard is one padding step (see :func:`scored`)."""

    bad_files: BadFiles | None = None
    split: str = ""
    padding_only: bool = False

    def __iter__(self) -> Iterator[Any]:
        batches = super().__iter__()
        if self.bad_files is None:
            return batches
        return self.bad_files.watch(batches, self.split, len(self.sampler))


def watched(loader: WatchedLoader, bad_files: BadFiles | None, split: str) -> WatchedLoader:
    loader.bad_files, loader.split = bad_files, split
    return loader


class ResumableLoader(WatchedLoader):
    """A DataLoader over an :class:`EpochSampler` that follows the trainer's position. It tells Lightning it is
    resumable (``state_dict`` / ``load_state_dict``) so a mid-epoch resume does not warn; it has no state of its own:
    the position is the trainer's loop state, which Lightning saves and restores."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _trainer(datamodule: Any) -> Any:
    return getattr(datamodule, "trainer", None)


def train_loader(datamodule: Any, dataset: Dataset, batch_size: int, num_workers: int, *, drop_last: bool = True,
                 collate_fn: Callable | None = None, bad_files: BadFiles | None = None) -> ResumableLoader:
    """The training loader of ``datamodule`` (a LightningDataModule, attached to its trainer or not); with
    ``bad_files``, unreadable images are replaced and counted (``shared.data.bad_files``)."""
    trainer = _trainer(datamodule)
    world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def position() -> tuple[int, int]:
        """The epoch and the samples of it already trained. The loop counters are the restored ones when a resumed
        run makes its first iterator, and zero when an epoch starts afresh (Lightning resets them before)."""
        done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        return trainer.current_epoch, done * batch_size

    sampler = EpochSampler(dataset, seed=run_seed(), num_replicas=world, rank=rank,
                           position=position if trainer is not None else None)
    if bad_files is not None:
        dataset, collate_fn = SkipBadFiles(dataset), collate_marked(collate_fn)
    loader = ResumableLoader(SeededSamples(dataset), batch_size=batch_size, sampler=sampler,
                             drop_last=drop_last and len(sampler) >= batch_size, num_workers=num_workers,
                             persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available(),
                             collate_fn=collate_fn, generator=torch.Generator())
    return watched(loader, bad_files, "train")


def eval_loader(datamodule: Any, dataset: Dataset, batch_size: int, num_workers: int, *,
                collate_fn: Callable | None = None, pad_with: int | None = None, bad_files: BadFiles | None = None,
                split: str = "val") -> DataLoader:
    """A validation / test / predict loader: in order, every sample once over all processes. Fewer samples than
    processes: a process left without one gets a padding step (``pad_with``, which the dataset reads as "nothing
    to score", else :data:`PAD` through :class:`PaddedSamples` and :func:`scored`)."""
    trainer = _trainer(datamodule)
    padding_only = False
    if trainer is not None and trainer.world_size > 1:
        if pad_with is None and len(dataset) < trainer.world_size:
            if len(dataset) == 0:
                raise ValueError(f"the evaluation set ({type(dataset).__name__}) is empty")
            dataset, pad_with = PaddedSamples(dataset), PAD
            padding_only = trainer.global_rank >= len(dataset)
        sampler = ShardSampler(dataset, num_replicas=trainer.world_size, rank=trainer.global_rank,
                               pad_with=pad_with)
    else:
        sampler = SequentialSampler(dataset)
    if bad_files is not None:
        dataset, collate_fn = SkipBadFiles(dataset), collate_marked(collate_fn)
    loader = WatchedLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                           persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available(),
                           collate_fn=collate_fn, generator=torch.Generator())
    loader.padding_only = padding_only
    return watched(loader, bad_files, split)


def scored(module: Any, batch_size: int) -> int:
    """How many samples of the current evaluation batch count: all ``batch_size``, or 0 in a padding step (a
    process of more processes than evaluation samples). The step still runs the forward and logs every key, with
    its metrics updated by the first 0 samples and its logged means weighted by ``batch_size=0``, so every process
    makes the same collective calls and the numbers are the 1-process ones."""
    trainer = module.trainer
    loaders = trainer.test_dataloaders if trainer.testing else trainer.val_dataloaders
    loaders = loaders if isinstance(loaders, list | tuple) else [loaders]
    return 0 if any(getattr(loader, "padding_only", False) for loader in loaders) else batch_size


def labels_or_ignored(labels: torch.Tensor, k: int) -> torch.Tensor:
    """What an evaluation step gives its metrics: the labels, or ``IGNORE_INDEX`` everywhere in a padding step."""
    return labels if k else torch.full_like(labels, IGNORE_INDEX)


def scored_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Cross-entropy of the ``k`` scored samples (``scored``); in a padding step a zero that still depends on the
    logits, so the evaluation loss (a MeanMetric updated with ``weight=k``) runs the same calls on every process."""
    return F.cross_entropy(logits[:k], labels[:k]) if k else logits.sum() * 0
