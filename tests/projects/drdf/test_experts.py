"""Every registered backbone builds at tiny size, runs a forward and back-propagates; DRDF wires them up."""

from __future__ import annotations

import pytest
import torch

from projects.drdf.experts import EXPERTS, IMAGE_EXPERTS, MULTIMODAL_EXPERTS, build_expert
from projects.drdf.model import DRDF

VOCAB = 60


def _batch(image_size: int = 32, text: bool = True) -> dict:
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(2, 3, image_size, image_size, generator=g)}
    if text:
        batch["input_ids"] = torch.randint(5, VOCAB, (2, 9), generator=g)
        batch["input_ids"][:, 0] = 2  # [CLS]
        batch["attention_mask"] = torch.ones(2, 9, dtype=torch.long)
        batch["attention_mask"][1, 6:] = 0
    return batch


def test_registry_has_at_least_twelve_backbones() -> None:
    assert len(EXPERTS) >= 12
    assert set(EXPERTS) == set(IMAGE_EXPERTS) | set(MULTIMODAL_EXPERTS)


@pytest.mark.parametrize("name", list(EXPERTS))
def test_each_backbone_builds_tiny_and_runs(name: str) -> None:
    torch.manual_seed(0)
    if name in IMAGE_EXPERTS:
        expert = build_expert(name, 5, size="tiny", image_size=32, cifar_stem=True)
    else:
        expert = build_expert(name, 5, size="tiny", image_size=32, text_overrides={"vocab_size": VOCAB})
    logits, feats = expert(_batch(text=name not in IMAGE_EXPERTS))
    assert logits.shape == (2, 5) and feats.shape == (2, expert.feature_dim)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in expert.parameters())


def test_text_experts_refuse_image_only_batches() -> None:
    expert = build_expert("concat_bert", 2, size="tiny", image_size=32, text_overrides={"vocab_size": VOCAB})
    with pytest.raises(ValueError, match="input_ids"):
        expert(_batch(text=False))


def test_unknown_expert_lists_the_registry() -> None:
    with pytest.raises(ValueError, match="resnet18"):
        build_expert("resnet19", 2)


TINY_MM = dict(size="tiny", image_size=32, text_overrides={"vocab_size": VOCAB})
TINY_ROUTERS = dict(text_router={"size": "tiny", "vocab_size": VOCAB},
                    image_router={"backbone": "resnet18", "image_size": 32, "layers": [1, 1, 1, 1],
                                  "channels": [4, 8, 8, 8]})


@pytest.mark.parametrize("fusion", ["logits", "probs", "features"])
def test_drdf_multimodal_forward(fusion: str) -> None:
    model = DRDF(2, "concat_bert", 3, TINY_MM, fusion=fusion, **TINY_ROUTERS)
    out = model(_batch())
    assert out["logits"].shape == (2, 2) and out["expert_logits"].shape == (3, 2, 2)
    torch.testing.assert_close(out["weights"].sum(-1), torch.ones(2))
    torch.testing.assert_close(out["modality"].sum(-1), torch.ones(2))
    out["logits"].sum().backward()
    assert model.text_router.head.weight.grad is not None and model.mwf.score.weight.grad is not None


@pytest.mark.parametrize("mode", ["image", "none", "constant"])
def test_unimodal_text_slot_modes(mode: str) -> None:
    model = DRDF(4, "resnet18", 2, dict(size="tiny", image_size=32, cifar_stem=True), text_slot=mode,
                 image_router=TINY_ROUTERS["image_router"])
    out = model(_batch(text=False))
    assert out["weights"].shape == (2, 2)
    if mode == "none":
        torch.testing.assert_close(out["modality"], torch.tensor([[0.0, 1.0]] * 2))
    if mode == "constant":  # a constant text carries no per-sample information: r_t is the same for every sample
        _, r_t = model.text_router(_batch(text=False))
        torch.testing.assert_close(r_t[0], r_t[1])


def test_uniform_routing_has_no_router_and_single_is_one_expert() -> None:
    ens = DRDF(2, "concat_bert", 3, TINY_MM, routing="uniform")
    assert ens.text_router is None and ens.image_router is None and ens.router_parameters() == []
    out = ens(_batch())
    torch.testing.assert_close(out["weights"], torch.full((2, 3), 1 / 3))
    torch.testing.assert_close(out["logits"], out["expert_logits"].mean(0))
    single = DRDF(2, "concat_bert", 1, TINY_MM, routing="uniform")
    out = single(_batch())
    torch.testing.assert_close(out["logits"], out["expert_logits"][0])


def test_frozen_routers_and_experts_get_no_gradient() -> None:
    routers = {"text_router": {**TINY_ROUTERS["text_router"], "freeze": True},
               "image_router": {**TINY_ROUTERS["image_router"], "freeze": True}}
    model = DRDF(2, "concat_bert", 2, TINY_MM, freeze_experts=True, **routers)
    model.train()
    model(_batch())["logits"].sum().backward()
    assert all(p.grad is None for p in model.experts.parameters())
    assert all(p.grad is None for p in model.text_router.encoder.parameters())
    assert model.text_router.head.weight.grad is not None
    assert not model.image_router.encoder.training  # frozen BatchNorm keeps its statistics


def test_heterogeneous_unimodal_experts_and_the_light_routers() -> None:
    routers = dict(text_router={"kind": "bow", "bow_dim": 8, "vocab_size": VOCAB},
                   image_router={"kind": "patch", "patch": 8, "dim": 8})
    model = DRDF(2, experts=["text_bert", {"name": "image_grid", "hidden": 16}, "image_grid"], num_experts=None,
                 expert_kwargs=TINY_MM, **routers)
    assert model.num_experts == 3 and model.expert_names == ["text_bert", "image_grid", "image_grid"]
    assert model.text_only == [0] and model.image_only == [1, 2]
    assert model.experts[1].head[0].out_features == 16  # the per-expert override
    out = model(_batch())
    assert out["expert_logits"].shape == (3, 2, 2)
    torch.testing.assert_close(out["weights"].sum(-1), torch.ones(2))
    out["logits"].sum().backward()
    assert model.image_router.encoder[0].weight.grad is not None and model.text_router.encoder.weight.grad is not None
    # the text expert never looks at the image: changing the image leaves its logits alone
    other = {**_batch(), "image": torch.randn(2, 3, 32, 32)}
    model.eval()
    torch.testing.assert_close(model.experts[0](other)[0], model.experts[0](_batch())[0])


def test_expert_list_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="num_experts=2 disagrees"):
        DRDF(2, experts=["text_bert", "image_grid", "image_grid"], num_experts=2, expert_kwargs=TINY_MM,
             routing="uniform")
    with pytest.raises(ValueError, match=r"experts\[1\]"):
        DRDF(2, experts=["text_bert", {"hidden": 3}], num_experts=None, expert_kwargs=TINY_MM, routing="uniform")
    with pytest.raises(ValueError, match="one feature size"):
        DRDF(2, experts=["text_bert", {"name": "image_grid", "image_overrides": {"channels": [8, 16, 32, 48]}}],
             num_experts=None, expert_kwargs=TINY_MM, routing="uniform", fusion="features")
