"""Every DiD config builds: full-size model with random init (slow) and a reduced-width twin at full resolution."""

import inspect
import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from omegaconf import OmegaConf
from safetensors.torch import load_file

from projects.did.data import DiDData
from projects.did.model import DiD
from projects.did.module import DiDModule, Loss, Optimization

CONFIGS = Path(__file__).resolve().parents[3] / "projects" / "did" / "configs"
PAPER = ["coco.yaml", "voc2007.yaml", "voc2012.yaml", "vit_baseline_coco.yaml"]
PRESETS = ["one_gpu.yaml", "ddp8.yaml"]


def load(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONFIGS / name), resolve=True)


def build(cfg: dict, **net_overrides) -> DiDModule:
    """The module a config describes, as the CLI builds it (``model.net`` = DiD's arguments), random init."""
    net = cfg["model"]["net"]
    assert net["class_path"] == "projects.did.model.DiD"
    model = DiD(**{**net["init_args"], "pretrained": False, **net_overrides})
    return DiDModule(model, **{k: v for k, v in cfg["model"].items() if k != "net"})


@pytest.mark.parametrize("name", PAPER + ["toy.yaml"])
def test_config_keys_are_valid(name: str) -> None:
    cfg = load(name)
    assert set(cfg.get("trainer", {})) <= set(inspect.signature(Trainer.__init__).parameters)
    DiDData(**cfg["data"])
    model = cfg["model"]
    assert set(model) <= set(inspect.signature(DiDModule.__init__).parameters)
    assert set(model["net"]["init_args"]) <= set(inspect.signature(DiD.__init__).parameters)
    Loss(**model.get("loss", {}))
    Optimization(**model.get("optim", {}))


def test_a_bad_optimizer_name_is_refused() -> None:
    with pytest.raises(ValueError, match=r"model\.optim\.name must be 'sgd' \(paper\) or 'adamw' \(toy\), got 'adam'"):
        Optimization(name="adam")


@pytest.mark.parametrize("name", PRESETS)
def test_presets_only_touch_batch_and_trainer(name: str) -> None:
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIGS / name))
    assert set(cfg) <= {"data", "trainer"} and set(cfg.get("data", {})) <= {"batch_size"}
    assert set(cfg["trainer"]) <= set(inspect.signature(Trainer.__init__).parameters)


def _forward(module: DiDModule, cfg: dict) -> None:
    size, net = cfg["data"]["img_size"], cfg["model"]["net"]["init_args"]
    with torch.no_grad():
        out = module.eval()(torch.randn(1, 3, size, size))
    assert out["fused"].shape == (1, cfg["data"]["num_classes"])
    if net["local_views"]:
        assert out["views"].shape == (1, net["top_n"], 3, size, size)
        assert out["class_maps"].shape[-2:] == (size // 16, size // 16)
    else:
        assert out["local"] is None


@pytest.mark.parametrize("name", PAPER)
def test_paper_config_reduced_width_at_full_resolution(name: str) -> None:
    cfg = load(name)
    net = cfg["model"]["net"]["init_args"]
    assert net["img_size"] == 448 and net["backbone"].startswith("vit_base_patch16")
    _forward(build(cfg, embed_dim=32, depth=1, num_heads=2), cfg)


def same_model_groups(names: list[str]) -> list[list[str]]:
    """The configs grouped by their ``model`` section: configs that describe the same module are built once."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(json.dumps(load(name)["model"], sort_keys=True), []).append(name)
    return list(groups.values())


@pytest.mark.slow
@pytest.mark.parametrize("names", same_model_groups(PAPER), ids=",".join)
def test_paper_config_full_size_model(names: list[str]) -> None:
    """(voc2007.yaml and voc2012.yaml describe the same module: one build and forward at 448 for both.)"""
    cfg = load(names[0])
    module = build(cfg)
    assert module.net.backbone.embed_dim == 768 and module.net.backbone.depth == 12
    assert module.net.backbone.grid_size == (28, 28)
    _forward(module, cfg)


def test_toy_config_starts_from_the_committed_pretrained_vit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CONFIGS.parents[2])             # the config's path is relative to the repository root
    net = load("toy.yaml")["model"]["net"]["init_args"]
    model = DiD(**net)
    state = load_file(net["pretrained"])
    own = model.backbone.model.state_dict()
    assert set(own) == set(state)
    for k, v in own.items():
        if k.startswith("norm."):       # official quirk: the final LayerNorm is re-initialised, not loaded (§1)
            assert torch.equal(v, torch.ones_like(v) if k.endswith("weight") else torch.zeros_like(v)), k
            continue
        assert torch.equal(v, state[k]), k


def test_the_16x16_grid_toy_config_changes_only_the_geometry() -> None:
    """toy_grid16.yaml is toy.yaml with 4 px patches (a 16x16 grid on the same 64 px images) and its pretrained ViT."""
    toy, grid16 = load("toy.yaml"), load("toy_grid16.yaml")
    net, net16 = toy["model"]["net"]["init_args"], grid16["model"]["net"]["init_args"]
    assert (net["patch_size"], net16["patch_size"]) == (8, 4) and net16["img_size"] == net["img_size"] == 64
    assert net16["pretrained"] == "shared/pretrain/toy_vit_p4.safetensors"
    for key in ("patch_size", "pretrained"):
        del net[key], net16[key]
    assert grid16 == toy
