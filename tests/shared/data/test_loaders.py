"""shared.data.loaders: epoch orders from the seed, per-sample augmentation seeds, resume to the sample, and
evaluation shards without repeated samples; shared.errors.one_line for errors raised in DataLoader workers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from shared.data.loaders import EpochSampler, SeededSamples, eval_loader, sample_seed, scored, train_loader
from shared.errors import one_line


class Noisy(Dataset):
    """Item i is (i, a random draw from torch's generator): the draw stands for a random augmentation."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return i, torch.rand(())


def _module(world: int = 1, rank: int = 0, epoch: int = 0, done: int = 0):
    """A data module attached to a stand-in trainer at ``epoch`` with ``done`` batches of it trained."""
    progress = SimpleNamespace(current=SimpleNamespace(completed=done))
    trainer = SimpleNamespace(world_size=world, global_rank=rank, current_epoch=epoch,
                              fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)))
    return SimpleNamespace(trainer=trainer)


def _epoch(loader: DataLoader) -> tuple[list[int], list[float]]:
    items = [(int(i), float(v)) for idx, val in loader for i, v in zip(idx, val, strict=True)]
    return [i for i, _ in items], [v for _, v in items]


def test_the_order_is_a_permutation_drawn_from_seed_plus_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    module = _module(epoch=2)
    loader = train_loader(module, Noisy(10), batch_size=3, num_workers=0)
    order, _ = _epoch(loader)
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(7 + 2)).tolist()
    assert order == expected[:9]   # drop_last: 3 batches of 3
    module.trainer.current_epoch = 3
    assert _epoch(loader)[0] != order


def test_augmentation_draws_follow_the_sample_not_the_global_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")            # (an earlier fit in the same process may have set it)
    loader = train_loader(_module(), Noisy(8), batch_size=4, num_workers=0)
    torch.manual_seed(0)
    first = dict(zip(*_epoch(loader), strict=True))
    torch.manual_seed(123)                       # another global state: the same draws
    before = torch.get_rng_state()
    again = dict(zip(*_epoch(loader), strict=True))
    assert first == again
    assert torch.equal(torch.get_rng_state(), before)   # the loader left the global generator alone
    with_workers = train_loader(_module(), Noisy(8), batch_size=4, num_workers=2)
    assert dict(zip(*_epoch(with_workers), strict=True)) == first
    expected = SeededSamples(Noisy(8))[(5, sample_seed(0, 0, 5))][1]
    assert first[5] == pytest.approx(float(expected))


def test_a_resumed_epoch_yields_exactly_the_samples_not_yet_trained() -> None:
    order, draws = _epoch(train_loader(_module(epoch=1), Noisy(20), batch_size=4, num_workers=0))
    resumed = _module(epoch=1, done=2)           # the loop counters a resumed run restores: 2 batches trained
    loader = train_loader(resumed, Noisy(20), batch_size=4, num_workers=0)
    assert _epoch(loader) == (order[8:], draws[8:])
    assert _epoch(train_loader(resumed, Noisy(20), batch_size=4, num_workers=2)) == (order[8:], draws[8:])
    resumed.trainer.fit_loop.epoch_loop.batch_progress.current.completed = 0     # the next epoch starts afresh
    assert _epoch(loader) == (order, draws)


def test_training_shards_cover_the_epoch_once_per_process_pair() -> None:
    shards = [list(EpochSampler(Noisy(10), seed=0, num_replicas=2, rank=r)) for r in (0, 1)]
    assert sorted(i for shard in shards for i, _ in shard) == list(range(10))


@pytest.mark.parametrize("n", [7, 8, 2])
def test_evaluation_scores_every_sample_exactly_once_on_two_processes(n: int) -> None:
    seen = [int(i) for r in (0, 1) for idx, _ in eval_loader(_module(world=2, rank=r), Noisy(n), 3, 0)
            for i in idx]
    assert sorted(seen) == list(range(n))        # DistributedSampler would repeat a sample when n is odd
    assert [int(i) for idx, _ in eval_loader(_module(), Noisy(n), 3, 0) for i in idx] == list(range(n))


def test_fewer_evaluation_samples_than_processes_pad_with_a_step_that_counts_as_none() -> None:
    """1 sample on 2 processes: the second process runs one padding step (the first sample as input) and
    ``scored`` tells its module to count none of it; an empty set is one clear error."""
    loaders = [eval_loader(_module(world=2, rank=r), Noisy(1), 3, 0) for r in (0, 1)]
    assert [[int(i) for idx, _ in loader for i in idx] for loader in loaders] == [[0], [0]]
    assert [loader.padding_only for loader in loaders] == [False, True]
    for loader, counted in zip(loaders, (4, 0), strict=True):
        module = SimpleNamespace(trainer=SimpleNamespace(testing=False, val_dataloaders=loader))
        assert scored(module, 4) == counted
    with pytest.raises(ValueError, match=r"the evaluation set \(Noisy\) is empty"):
        eval_loader(_module(world=2, rank=1), Noisy(0), 3, 0)
    assert len(eval_loader(_module(), Noisy(1), 3, 0)) == 1            # one process: no padding


def test_padded_shards_run_as_many_steps_and_mark_the_padding() -> None:
    """SPM's validation: 1 step over 2 processes; the second runs a step holding -1 (nothing to score)."""
    shards = [[int(i) for i, _ in eval_loader(_module(world=2, rank=r), Noisy(1), 1, 0, pad_with=-1)]
              for r in (0, 1)]
    assert shards == [[0], [-1]]


class Broken(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        raise ValueError(f"data/images/{i}.jpg: cannot identify image file; expected a JPEG or PNG")


def test_an_error_in_a_dataloader_worker_becomes_its_own_one_line_message() -> None:
    with pytest.raises(ValueError) as info:
        next(iter(DataLoader(Broken(), batch_size=2, num_workers=1)))
    assert "Original Traceback" in str(info.value)        # what torch hands back: the worker's whole traceback
    line = one_line(info.value)
    assert line == ("data/images/0.jpg: cannot identify image file; expected a JPEG or PNG "
                    "(raised in DataLoader worker process 0)")


def test_a_path_error_is_one_line_and_another_os_error_keeps_its_traceback(tmp_path, capsys, monkeypatch) -> None:
    """``--data.root`` / ``--out`` naming a file: the mkdir below it ends in one line naming the path; an OSError
    that names no path (not the user's input) is raised as it is."""
    from shared.errors import run_with_clear_errors

    monkeypatch.delenv("CV_PAPERS_DEBUG", raising=False)
    (tmp_path / "notes.txt").write_text("a file")
    with pytest.raises(SystemExit) as exit_info:
        run_with_clear_errors(lambda: (tmp_path / "notes.txt" / "images").mkdir(parents=True, exist_ok=True))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        f"error: {tmp_path / 'notes.txt' / 'images'}: Not a directory (a part of this path is a file; expected a "
        "folder there)")
    with pytest.raises(OSError, match="socket closed"):
        run_with_clear_errors(lambda: (_ for _ in ()).throw(OSError("socket closed")))
