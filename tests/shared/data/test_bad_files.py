"""Unreadable images during training and evaluation: one line by default; with ``skip_bad_files`` replaced,
named once, counted, resumable, and a stop over the bad-fraction budget.

Units on a fake dataset; the whole path on the RAMS-Trans toy set (CUB layout, PNG files) with truncated images,
through the CLI in process.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from projects.rams_trans.data import write_toy_cub
from projects.rams_trans.module import RAMSTransModule
from shared.data.bad_files import BadFiles, SkipBadFiles, collate_marked
from shared.data.images import ImageReadError
from shared.interrupt import EXIT_INTERRUPTED


class Flaky(torch.utils.data.Dataset):
    def __init__(self, n: int, bad: set[int]) -> None:
        self.n, self.bad = n, bad

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        if i in self.bad:
            raise ImageReadError(f"cannot read image img{i}.jpg", Path(f"img{i}.jpg"), "OSError: truncated")
        return torch.tensor([i])


def test_a_bad_sample_is_replaced_by_the_next_readable_one_and_marked():
    data = SkipBadFiles(Flaky(5, {1, 2, 4}))
    assert data[0] == (torch.tensor([0]), ())
    assert data[1] == (torch.tensor([3]), ("img1.jpg: OSError: truncated", "img2.jpg: OSError: truncated"))
    assert data[4] == (torch.tensor([0]), ("img4.jpg: OSError: truncated",))          # wraps around
    batch, bad = collate_marked(None)([data[0], data[4]])
    assert batch.tolist() == [[0], [0]] and bad == ["img4.jpg: OSError: truncated"]
    with pytest.raises(ValueError, match="no readable image in the 2 samples"):
        SkipBadFiles(Flaky(2, {0, 1}))[0]


def test_the_tally_names_each_file_once_counts_every_replacement_and_stops_over_the_budget(capsys):
    tally = BadFiles(max_fraction=0.1)            # 10 samples a pass: at most 1
    one_bad = [(torch.zeros(1), []), (torch.ones(1), ["a.jpg: truncated"])]
    for _ in range(2):                             # two passes meet the same file
        assert len(list(tally.watch(iter(one_bad), "train", 10))) == 2
    assert capsys.readouterr().err.count("warning: data.skip_bad_files: unreadable image replaced") == 1
    assert tally.summary() == {"max_fraction": 0.1, "train": {"replaced": 2, "files": ["a.jpg"]}}
    with pytest.raises(ValueError, match=r"data.max_bad_fraction 0.1: 2 unreadable image\(s\) in this pass over the "
                                         r"val split of 10 samples \(at most 1\); the files: b.jpg, c.jpg"):
        list(tally.watch(iter([(torch.zeros(1), ["b.jpg: x", "c.jpg: y"])]), "val", 10))
    restored = BadFiles(0.1)
    restored.load_state_dict(tally.state_dict())
    assert restored.summary() == tally.summary()
    with pytest.raises(ValueError, match=r"data.max_bad_fraction must be in \[0, 1\); got 1.5"):
        BadFiles(1.5)


ARGS = ["--config", "projects/rams_trans/configs/toy.yaml", "--data.toy_num_train", "16", "--data.toy_num_test",
        "6", "--data.batch_size", "4", "--data.eval_batch_size", "4", "--model.net.pretrained", "false",
        "--model.net.backbone_kwargs", "{embed_dim: 32, depth: 2, num_heads: 2}", "--model.num_panels", "0",
        "--trainer.max_steps", "9", "--trainer.val_check_interval", "3", "--logger", "none"]


@pytest.fixture
def toy_with_bad_images(tmp_path: Path) -> tuple[Path, list[str]]:
    """The 16 + 6 image toy set with 2 training images and 1 test image (PNG) cut to a third of their bytes."""
    root = tmp_path / "toy"
    write_toy_cub(root, 16, 6, 72, 0.02, 14, 0)
    names = dict(line.split() for line in (root / "images.txt").read_text().splitlines())
    split = dict(line.split() for line in (root / "train_test_split.txt").read_text().splitlines())
    train = [names[i] for i in sorted(names, key=int) if split[i] == "1"]
    test = [names[i] for i in sorted(names, key=int) if split[i] == "0"]
    cut = [train[2], train[9], test[1]]
    for name in cut:
        path = root / "images" / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    return root, cut


def test_a_truncated_image_stops_the_run_with_its_name_by_default(run_cli, toy_with_bad_images):
    root, cut = toy_with_bad_images
    r = run_cli("rams_trans", "fit", *ARGS, "--data.root", root, "--run_name", "strict", check=False)
    assert r.code == 2 and "cannot read image" in r.last_line and any(name in r.last_line for name in cut)


def test_skip_bad_files_replaces_counts_and_resumes_exactly_after_a_sigterm(run_cli, toy_with_bad_images,
                                                                             monkeypatch):
    root, cut = toy_with_bad_images
    skip = ["--data.root", root, "--data.skip_bad_files", "true", "--data.max_bad_fraction", "0.2"]
    full = run_cli("rams_trans", "fit", *ARGS, *skip, "--run_name", "full")
    summary = full.summary("full")
    assert summary["outcome"] == "finished" and summary["global_step"] == 9
    bad = summary["bad_files"]
    assert sorted(bad["train"]["files"] + bad["val"]["files"]) == sorted(str(root / "images" / n) for n in cut)
    assert bad["train"]["replaced"] >= 2 * 2 and bad["val"]["replaced"] == 3       # 9 steps: over 2 epochs; 3 vals
    assert full.err.count("warning: data.skip_bad_files") == 3                      # each file named once

    def preempt_at_step_6(module, outputs, batch, batch_idx):     # SIGTERM, as a cluster sends it
        if module.trainer.global_step == 6 and not module.trainer.received_sigterm:
            os.kill(os.getpid(), signal.SIGTERM)

    with monkeypatch.context() as patch:
        patch.setattr(RAMSTransModule, "on_train_batch_end", preempt_at_step_6, raising=False)
        stopped = run_cli("rams_trans", "fit", *ARGS, *skip, "--run_name", "part", check=False)
    assert stopped.code == EXIT_INTERRUPTED and stopped.summary("part")["global_step"] == 6
    resumed = run_cli("rams_trans", "fit", *ARGS, *skip, "--run_name", "part", "--ckpt_path", "last")
    assert resumed.summary("part")["bad_files"] == bad
    for key, value in full.cli.model.state_dict().items():
        torch.testing.assert_close(resumed.cli.model.state_dict()[key], value, rtol=0, atol=0, msg=key)
    assert {k: v for k, v in resumed.summary("part")["metrics"].items() if k.startswith("val/")} == \
        {k: v for k, v in summary["metrics"].items() if k.startswith("val/")}


def test_more_bad_files_than_the_budget_stop_the_run_with_one_line(run_cli, toy_with_bad_images):
    root, _ = toy_with_bad_images
    r = run_cli("rams_trans", "fit", *ARGS, "--data.root", root, "--data.skip_bad_files", "true", "--run_name",
                "budget", check=False)
    assert r.code == 2
    assert r.last_line.startswith("error: data.max_bad_fraction 0.001: 1 unreadable image(s) in this pass over the "
                                  "train split of 16 samples (at most 0)")
    assert json.loads((r.run_dir("budget") / "summary.json").read_text())["outcome"] == "failed"
