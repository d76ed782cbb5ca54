"""Every paper config builds its model (forward on a tiny batch): reduced width in the fast suite, full size slow."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from projects.drdf.module import DRDFModule

CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[3] / "projects" / "drdf" / "configs").glob("*.yaml"))
PAPER = [p for p in CONFIGS if not p.stem.startswith("toy")]


def _model_cfg(path: Path) -> tuple[dict, dict]:
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    return cfg["model"], cfg["data"]


def _batch(model_cfg: dict, data_cfg: dict, image_size: int, vocab: int) -> dict:
    batch = {"image": torch.randn(2, 3, image_size, image_size), "label": torch.tensor([0, 1])}
    if model_cfg.get("multimodal", True):
        batch["input_ids"] = torch.randint(5, vocab, (2, 12))
        batch["attention_mask"] = torch.ones(2, 12, dtype=torch.long)
    return batch


def _shrink(model_cfg: dict, data_cfg: dict) -> tuple[dict, int]:
    """Same config, tiny widths (and 32-px images for the multimodal ones), no pretrained look-ups."""
    m = dict(model_cfg)
    image_size = 32 if m.get("multimodal", True) else data_cfg["image_size"]
    m["expert_kwargs"] = {**m["expert_kwargs"], "size": "tiny", "image_size": image_size,
                          "image_pretrained": None, "text_overrides": {"vocab_size": 64}}
    if m["expert"] in ("resnet18", "resnet50", "vgg16_bn", "mobilenetv2", "efficientnet_b0", "densenet121",
                       "vit_s16"):
        for key in ("image_pretrained", "text_overrides"):
            m["expert_kwargs"].pop(key)
    small_cnn = {"layers": [1, 1, 1, 1], "channels": [4, 8, 8, 8], "image_size": image_size, "pretrained": None}
    m["image_router"] = {**m["image_router"], **small_cnn}
    if m.get("text_router"):
        m["text_router"] = {**m["text_router"], "size": "tiny", "text_model": None, "vocab_size": 64}
    return m, image_size


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_builds_reduced_width_and_runs(path: Path) -> None:
    model_cfg, data_cfg = _model_cfg(path)
    if not path.stem.startswith("toy"):
        model_cfg, image_size = _shrink(model_cfg, data_cfg)
    else:
        image_size = data_cfg["image_size"]
    module = DRDFModule(**model_cfg)
    out = module(_batch(model_cfg, data_cfg, image_size, 64))
    assert out["logits"].shape == (2, model_cfg["num_classes"])
    assert out["weights"].shape == (2, model_cfg["num_experts"])
    assert module.monitor == ("val/auroc" if model_cfg["task"] == "binary" else "val/top1")


@pytest.mark.slow
@pytest.mark.parametrize("path", PAPER, ids=[p.stem for p in PAPER])
def test_paper_config_builds_full_size(path: Path) -> None:
    model_cfg, data_cfg = _model_cfg(path)
    module = DRDFModule(**model_cfg)
    module.eval()
    with torch.no_grad():
        out = module(_batch(model_cfg, data_cfg, data_cfg["image_size"], 30522))
    assert out["logits"].shape == (2, model_cfg["num_classes"])
