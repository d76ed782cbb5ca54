"""Every paper config builds its model and runs one forward on a tiny batch.

The fast variant keeps each config's width, input size, patch size, grid and flags but only 1 encoder block;
the full-size build (all 12 blocks) is the `slow` test.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from projects.rams_trans.data import FGVCDataModule
from projects.rams_trans.model import RAMSTrans
from projects.rams_trans.module import RAMSTransModule

CONFIGS = sorted((Path(__file__).resolve().parents[3] / "projects" / "rams_trans" / "configs").glob("*.yaml"))
PAPER = [c for c in CONFIGS if not c.stem.startswith("toy")]


def load(path: Path) -> dict:
    cfg = OmegaConf.load(path)
    return OmegaConf.to_container(cfg, resolve=True)


def build(cfg: dict) -> RAMSTransModule:
    """The module a config describes, as the CLI builds it (the ``net`` group is RAMSTrans' arguments)."""
    net = cfg["model"]["net"]
    assert net["class_path"] == "projects.rams_trans.model.RAMSTrans"
    return RAMSTransModule(RAMSTrans(**net["init_args"]), **{k: v for k, v in cfg["model"].items() if k != "net"})


def build_and_forward(path: Path, depth: int | None) -> None:
    cfg = load(path)
    net = cfg["model"]["net"]["init_args"]
    if depth is not None:
        net["backbone_kwargs"] = {**(net.get("backbone_kwargs") or {}), "depth": depth}
    module = build(cfg)
    FGVCDataModule(**cfg["data"])   # the data section is valid for the datamodule (no files read here)
    s = cfg["data"]["crop"]
    assert module.net.img_size == s
    assert module.net.grid == (s // module.net.vit.patch_size,) * 2
    module.eval()
    with torch.no_grad():
        out = module(torch.randn(1, 3, s, s))
    assert len(out["logits"]) == net["num_scales"]
    assert out["logits"][-1].shape == (1, cfg["data"]["num_classes"])
    assert module.monitor == f"val/{cfg['model']['report']}_top1"


def test_paper_configs_exist() -> None:
    assert {c.stem for c in CONFIGS} >= {"cub", "cub_official", "dogs", "inat2017", "vit_baseline_cub", "toy"}
    grids = {c.stem: load(c)["data"]["crop"] // load(c)["model"]["net"]["init_args"]["patch_size"] for c in PAPER}
    assert grids == {"cub": 28, "cub_official": 14, "dogs": 14, "inat2017": 19, "vit_baseline_cub": 28}


@pytest.mark.parametrize("path", PAPER, ids=[c.stem for c in PAPER])
def test_config_builds_its_full_width_model_one_block(path: Path) -> None:
    torch.manual_seed(0)
    build_and_forward(path, depth=1)


@pytest.mark.slow
@pytest.mark.parametrize("path", PAPER, ids=[c.stem for c in PAPER])
def test_config_builds_its_full_size_model(path: Path) -> None:
    torch.manual_seed(0)
    build_and_forward(path, depth=None)


def test_the_16x16_grid_toy_config_changes_only_the_geometry() -> None:
    """toy_grid16.yaml is toy.yaml with 4 px patches (a 16x16 grid on the same 64 px images) and its pretrained ViT."""
    toy, grid16 = (load(CONFIGS[[c.stem for c in CONFIGS].index(s)]) for s in ("toy", "toy_grid16"))
    net, net16 = toy["model"]["net"]["init_args"], grid16["model"]["net"]["init_args"]
    assert (net["patch_size"], net16["patch_size"]) == (8, 4) and net16["img_size"] == net["img_size"] == 64
    assert net16["pretrained"] == "shared/pretrain/toy_vit_p4.safetensors"
    for key in ("patch_size", "pretrained"):
        del net[key], net16[key]
    assert grid16 == toy


def test_toy_config_model(tmp_path: Path) -> None:
    build_and_forward(CONFIGS[[c.stem for c in CONFIGS].index("toy")], depth=None)


@pytest.mark.parametrize("stem", ["toy", "toy_grid16"])
def test_toy_config_starts_from_the_committed_pretrained_vit_and_steps(stem: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """toy.yaml loads toy_vit (8x8 grid), toy_grid16.yaml toy_vit_p4 (16x16 grid), by path; one SGD step runs."""
    monkeypatch.chdir(CONFIGS[0].parents[3])          # the config's path is relative to the repository root
    cfg = load(CONFIGS[[c.stem for c in CONFIGS].index(stem)])
    module = build(cfg)
    state = load_file(cfg["model"]["net"]["init_args"]["pretrained"])
    own = module.net.vit.model.state_dict()
    assert set(own) == set(state)
    for k, v in own.items():
        assert torch.equal(v, state[k]), k
    for k in range(cfg["model"]["net"]["init_args"]["num_scales"]):  # each scale's CLS starts as the pretrained CLS
        assert torch.equal(module.net.cls_tokens[k], state["cls_token"][0])
    torch.manual_seed(0)
    s, classes = cfg["data"]["crop"], cfg["data"]["num_classes"]
    assert module.net.grid == (s // cfg["model"]["net"]["init_args"]["patch_size"],) * 2
    labels = torch.randint(0, classes, (2,))
    loss = sum(torch.nn.functional.cross_entropy(z, labels) for z in module(torch.randn(2, 3, s, s))["logits"])
    loss.backward()
    before = module.net.vit.model.patch_embed.proj.weight.detach().clone()
    torch.optim.SGD(module.parameters(), lr=0.1).step()
    assert torch.isfinite(loss) and not torch.equal(before, module.net.vit.model.patch_embed.proj.weight)


def test_the_recipe_refuses_an_unknown_optimizer_and_builds_the_official_sgd() -> None:
    from projects.rams_trans.module import Optimization

    with pytest.raises(ValueError, match=r"model\.optim\.name must be 'sgd' \(paper\) or 'adamw' \(toy\), got 'adam'"):
        Optimization(name="adam")
    opt = Optimization().build([torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["lr"] == 0.03 and opt.defaults["momentum"] == 0.9
    assert opt.defaults["weight_decay"] == 0.0 and Optimization().warmup_steps == 500
