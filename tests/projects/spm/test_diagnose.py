"""The phrase-erasure diagnostics on a tiny random toy model: token alignment of a word inside a phrase, the
attention-recording processors (same output, mass sums to 1, uniform on identical tokens, originals restored),
the group bookkeeping, and the SPM drift measure (zero membrane = zero drift, guided change = its two parts)."""

from __future__ import annotations

import pytest
import torch

from projects.spm.bench import random_ups
from projects.spm.diffusion.model import DiffusionModel
from projects.spm.network import SPMNetwork
from projects.spm.toy.diagnose import (
    AttentionRecorder,
    concept_position,
    group_mass,
    guidance_strength,
    matched_noise,
    projection,
    spm_drift,
    text_encoder_report,
    token_groups,
)


@pytest.fixture(scope="module")
def toy(tiny_base) -> DiffusionModel:
    return DiffusionModel.from_folder(tiny_base)


def test_token_groups_align_the_word_inside_a_phrase(toy):
    tok = toy.tokenizer
    length = tok.model_max_length
    assert token_groups(tok, "a red circle") == {"BOS": [0], "a": [1], "red": [2], "circle": [3], "EOS": [4],
                                                 "padding": list(range(5, length))}
    assert token_groups(tok, "circle") == {"BOS": [0], "circle": [1], "EOS": [2], "padding": list(range(3, length))}
    assert token_groups(tok, "red red circle")["red"] == [1, 2]
    assert token_groups(tok, "")["EOS"] == [1]
    assert [concept_position(tok, p) for p in ("circle", "a red circle", "a blue square", "")] == [1, 3, 3, 0]
    ids = tok("a yellow circle", padding="max_length", max_length=length).input_ids
    assert ids[concept_position(tok, "a yellow circle")] == tok("circle", add_special_tokens=False).input_ids[0]


def test_group_mass_sums_positions():
    mass = torch.arange(6, dtype=torch.float)
    groups = {"BOS": [0], "circle": [1], "EOS": [2], "padding": [3, 4, 5]}
    assert group_mass(mass, groups) == {"BOS": 0.0, "circle": 1.0, "EOS": 2.0, "padding": 12.0}


def test_attention_recorder_same_output_mass_and_restore(toy):
    unet = toy.unet
    x, t = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 500, 900])
    ctx = toy.encode_prompts(["circle", "a red circle", ""])
    before = {k: type(v) for k, v in unet.attn_processors.items()}
    with torch.no_grad():
        plain = unet(x, t, encoder_hidden_states=ctx).sample
        with AttentionRecorder(unet) as rec:
            recorded = unet(x, t, encoder_hidden_states=ctx).sample
            unet(x, t, encoder_hidden_states=ctx[:1].expand(3, -1, -1).clone())
    assert torch.allclose(plain, recorded, atol=1e-5)
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before
    cross = [n for n, m in unet.named_modules() if getattr(m, "is_cross_attention", False)]
    assert len(rec.records) == len(cross) and all(len(calls) == 2 for calls in rec.records.values())
    mass = rec.token_mass()
    assert mass.shape == (len(cross), 3, ctx.shape[1])
    assert torch.allclose(mass.sum(-1), torch.ones(len(cross), 3), atol=1e-5)
    h = rec.normalized_entropy()
    assert h.shape == (len(cross), 3) and ((h > 0) & (h <= 1 + 1e-5)).all()


def test_identical_tokens_get_uniform_attention(toy):
    ctx = toy.encode_prompts(["circle"])[:, :1].expand(2, 7, -1).clone()  # 7 copies of the BOS output
    with torch.no_grad(), AttentionRecorder(toy.unet) as rec:
        toy.unet(torch.randn(2, 3, 16, 16), torch.tensor([100, 700]), encoder_hidden_states=ctx)
    assert torch.allclose(rec.token_mass(), torch.full((1,), 1 / 7), atol=1e-5)
    assert torch.allclose(rec.normalized_entropy(), torch.ones(1), atol=1e-5)


def test_projection_of_the_opposite_is_minus_one_and_strength_per_timestep():
    d = torch.randn(4, 3, 2, 2)
    assert torch.allclose(projection(-d, d), -torch.ones(4), atol=1e-6)
    assert torch.allclose(projection(torch.zeros_like(d), d), torch.zeros(4))
    circle = torch.tensor([1.0, 1.0, 2.0, 2.0]).view(4, 1, 1, 1).expand(4, 3, 2, 2)
    eps = {"": torch.zeros(4, 3, 2, 2), "circle": circle}
    assert guidance_strength(eps, torch.tensor([900, 900, 100, 100]), ["circle"]) == {"circle": {100: 4.0, 900: 1.0}}


def test_text_encoder_report_is_one_for_the_reference(toy):
    rows = text_encoder_report(toy, ["circle", "a red circle", ""])
    assert rows["circle"]["sequence"] == pytest.approx(1.0, abs=1e-6)
    assert rows["circle"]["concept_token"] == pytest.approx(1.0, abs=1e-6)
    assert rows["a red circle"]["concept_position"] == 3
    assert rows["a red circle"]["concept_token_input"] < 1 - 1e-4  # other position embedding


def test_spm_drift_zero_for_closed_membrane_and_parts_add_up(toy, tmp_path):
    x, t = matched_noise(toy, per_timestep=2, timesteps=(800, 200))
    prompts = ["", "circle", "a red circle"]
    net = SPMNetwork(toy.unet)
    net.save(tmp_path / "zero.safetensors", ["circle"])
    random_ups(net, scale=0.05)
    net.save(tmp_path / "random.safetensors", ["circle"])
    net.remove()
    zero = spm_drift(toy, tmp_path / "zero.safetensors", x, t, prompts)
    assert all(abs(r["drift"]) < 1e-6 and abs(r["along_circle"]) < 1e-6 for r in zero.values())
    moved = spm_drift(toy, tmp_path / "random.safetensors", x, t, prompts)
    assert all(r["drift"] > 0 for r in moved.values())
    for p in prompts[1:]:
        r = moved[p]
        assert r["guided_along_own"] == pytest.approx(r["uncond_part"] + r["cond_part"], rel=1e-4, abs=1e-6)
    assert not toy.unet._forward_hooks and all(not m._forward_hooks for m in toy.unet.modules())
