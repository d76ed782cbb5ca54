"""Every config parses with the CLI (its groups and the net's class_path) and builds its module as the CLI does,
with a forward on a tiny batch: reduced width in the fast suite, the paper configs at full size in the slow one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from projects.drdf.data import DRDFDataModule
from projects.drdf.experts import IMAGE_EXPERTS
from projects.drdf.model import DRDF
from projects.drdf.module import DRDFModule

CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[3] / "projects" / "drdf" / "configs").glob("*.yaml"))
PAPER = [p for p in CONFIGS if not p.stem.startswith("toy")]


def load(path: Path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def build(cfg: dict) -> DRDFModule:
    """The module a config describes, as the CLI builds it (the ``net`` group is DRDF's arguments)."""
    net = cfg["model"]["net"]
    assert net["class_path"] == "projects.drdf.model.DRDF"
    return DRDFModule(DRDF(**net["init_args"]), **{k: v for k, v in cfg["model"].items() if k != "net"})


def _batch(net_args: dict, image_size: int, vocab: int) -> dict:
    batch = {"image": torch.randn(2, 3, image_size, image_size), "label": torch.tensor([0, 1])}
    if net_args["text_slot"] == "text":
        batch["input_ids"] = torch.randint(5, vocab, (2, 12))
        batch["attention_mask"] = torch.ones(2, 12, dtype=torch.long)
    return batch


def _shrink(net_args: dict, data_cfg: dict) -> int:
    """Same config, tiny widths (and 32-px images for the multimodal ones), no pretrained look-ups."""
    image_size = 32 if net_args["text_slot"] == "text" else data_cfg["image_size"]
    kwargs = {**net_args["expert_kwargs"], "size": "tiny", "image_size": image_size, "image_pretrained": None,
              "text_overrides": {"vocab_size": 64}}
    if net_args["expert"] in IMAGE_EXPERTS:
        for key in ("image_pretrained", "text_overrides"):
            kwargs.pop(key)
    net_args["expert_kwargs"] = kwargs
    small_cnn = {"layers": [1, 1, 1, 1], "channels": [4, 8, 8, 8], "image_size": image_size, "pretrained": None}
    net_args["image_router"] = {**net_args["image_router"], **small_cnn}
    if net_args.get("text_router"):
        net_args["text_router"] = {**net_args["text_router"], "size": "tiny", "text_model": None, "vocab_size": 64}
    return image_size


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_parses_with_the_cli(run_cli, path: Path) -> None:
    model = yaml.safe_load(run_cli("drdf", "fit", "--config", path, "--print_config").out)["model"]
    assert model["net"]["class_path"] == "projects.drdf.model.DRDF"
    assert {"task", "loss", "temperature", "optim", "panel_rows", "cpu_threads"} <= set(model)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_builds_reduced_width_and_runs(path: Path) -> None:
    cfg = load(path)
    net_args, data_cfg = cfg["model"]["net"]["init_args"], cfg["data"]
    image_size = data_cfg["image_size"] if path.stem.startswith("toy") else _shrink(net_args, data_cfg)
    module = build(cfg)
    DRDFDataModule(**data_cfg)  # the data section is valid for the datamodule (no files read here)
    out = module(_batch(net_args, image_size, 64))
    assert out["logits"].shape == (2, data_cfg["num_classes"]) and module.net.num_classes == data_cfg["num_classes"]
    assert out["weights"].shape == (2, net_args["num_experts"])
    assert module.monitor == ("val/auroc" if cfg["model"]["task"] == "binary" else "val/top1")


@pytest.mark.slow
@pytest.mark.parametrize("path", PAPER, ids=[p.stem for p in PAPER])
def test_paper_config_builds_full_size(path: Path) -> None:
    cfg = load(path)
    module = build(cfg)
    module.eval()
    with torch.no_grad():
        out = module(_batch(cfg["model"]["net"]["init_args"], cfg["data"]["image_size"], 30522))
    assert out["logits"].shape == (2, cfg["data"]["num_classes"])
