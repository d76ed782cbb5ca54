"""The pretraining tier: corpus determinism and disjoint classes, exact resume, the committed weights."""

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from shared.backbones.vit import ViTBackbone
from shared.data.toyworld import SHAPES
from shared.pretrain.__main__ import DEFAULT_OUT
from shared.pretrain.corpus import (
    CLASS_NAMES,
    PART_COLORS,
    CorpusSpec,
    build_split,
    render_chunk,
    sample_corpus_scene,
    scene_target,
)
from shared.pretrain.train import Recipe, train

TINY = Recipe(arch=dict(embed_dim=32, depth=1, num_heads=2, mlp_ratio=2.0), n_train=96, n_val=32, batch_size=16,
              steps=6, warmup_steps=2)


def test_classes_are_disjoint_from_the_downstream_toy_tasks():
    assert len(CLASS_NAMES) == 102 and len(set(CLASS_NAMES)) == 102
    assert not set(CLASS_NAMES) & set(SHAPES)          # DiD's toy categories
    assert not {"white", "yellow"} & set(PART_COLORS)  # RAMS-Trans' toy classes are white / yellow parts
    assert not any(f"with_{c}_part" in name for name in CLASS_NAMES for c in ("white", "yellow"))


def test_target_names_each_objects_shape_and_host_part_colours():
    scene = sample_corpus_scene(np.random.default_rng(1), CorpusSpec())
    y = scene_target(scene)
    names = {CLASS_NAMES[i] for i in np.flatnonzero(y)}
    for o in scene.objects:
        assert o.kind in names
        assert (f"{o.color}_with_{o.part.color}_part" if o.part else f"{o.color}_plain") in names


def test_corpus_is_a_function_of_the_seed_and_targets_name_every_object(tmp_path):
    spec = CorpusSpec(seed=3)
    x1, y1 = render_chunk((spec, 0, 5, 8))
    x2, y2 = render_chunk((spec, 0, 5, 8))
    x3, _ = render_chunk((spec, 0, 6, 8))
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2) and not np.array_equal(x1, x3)
    assert x1.shape == (8, 64, 64, 3) and x1.dtype == np.uint8
    assert (y1.sum(1) >= 2).all() and (y1.sum(1) <= 8).all()  # 1-4 objects, a shape and a colour class each
    images, targets = build_split(spec, 1, 8, tmp_path / "val")
    assert np.array_equal(images[:8], render_chunk((spec, 1, 0, 8))[0]) and targets.shape == (8, 102)


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    data = tmp_path / "data"
    straight, card = train(TINY, tmp_path / "a", data, threads=1, progress=False, eval_every=3)
    first, none = train(TINY, tmp_path / "b", data, threads=1, progress=False, stop_after=4)
    assert none is None and torch.load(tmp_path / "b" / "ckpt.pt", weights_only=True)["step"] == 4
    resumed, card_b = train(TINY, tmp_path / "b", data, threads=1, progress=False, eval_every=3)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert card["steps"] == 6 and set(card["held_out"]) == {"mAP", "exact_set_acc", "label_f1"}
    with pytest.raises(ValueError, match="another recipe"):
        train(replace(TINY, lr=0.5), tmp_path / "b", data, threads=1, progress=False)


COMMITTED = [DEFAULT_OUT, DEFAULT_OUT.with_name("toy_vit_p4")]  # the 8x8-grid ViT (patch 8) and the 16x16 one (patch 4)


@pytest.mark.parametrize("out", COMMITTED, ids=lambda p: p.name)
def test_committed_weights_load_by_path_with_every_key_and_match_their_card(out, caplog):
    weights, card_file = out.with_suffix(".safetensors"), out.with_suffix(".json")
    card = json.loads(card_file.read_text())
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == card["sha256"]
    assert weights.stat().st_size < 10 * 2**20
    r = card["recipe"]
    with caplog.at_level("INFO"):
        vit = ViTBackbone(r["backbone"], pretrained=str(weights), img_size=r["img_size"],
                          patch_size=r["patch_size"], **r["arch"])
    assert "missing keys" not in caplog.text and "loaded" in caplog.text
    state = load_file(str(weights))
    for k, v in vit.model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert card["held_out"]["mAP"] > 5 * 4.7  # far above chance (the positive rate, 4.7 % of labels)


@pytest.mark.parametrize("out", COMMITTED, ids=lambda p: p.name)
def test_card_says_how_to_regenerate(out):
    card = json.loads(Path(out.with_suffix(".json")).read_text())
    assert card["regenerate"].startswith("python -m shared.pretrain")
    if card["recipe"]["patch_size"] != 8:
        assert f"--patch-size {card['recipe']['patch_size']}" in card["regenerate"]
    assert card["samples_seen"] == card["steps"] * card["recipe"]["batch_size"]
