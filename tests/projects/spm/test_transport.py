"""Facilitated Transport on hand-made prompts: exact token overlap, cosine range and identity, max over an SPM's
strings, facilitate_factor, fixed gammas, metric choice, and the batched path equal to a per-pair reference."""

from __future__ import annotations

import pytest
import torch

from projects.spm.diffusion.model import DiffusionModel
from projects.spm.transport import facilitated_gammas


@pytest.fixture(scope="module")
def toy(tiny_base) -> DiffusionModel:
    return DiffusionModel.from_folder(tiny_base)


def gammas(toy: DiffusionModel, prompts, concepts, **kw) -> torch.Tensor:
    return facilitated_gammas(toy.text_encoder, toy.tokenizer, prompts, concepts, **kw)


def reference(toy: DiffusionModel, prompt: str, concept: str, metric: str) -> float:
    """One (prompt, concept) pair the way the official loop scores it: flattened cosine, python token sets."""
    enc = toy.encode_prompts([prompt, concept])
    s_f = torch.cosine_similarity(enc[0].flatten(), enc[1].flatten(), dim=0).item()
    ids = toy.tokenizer([prompt, concept], padding="max_length", truncation=True,
                        max_length=toy.tokenizer.model_max_length).input_ids
    special = set(toy.tokenizer.all_special_ids)
    p, c = set(ids[0]) - special, set(ids[1]) - special
    s_t = len(p & c) / len(c)
    return {"clipcos": s_f, "tokenuni": s_t, "clipcos_tokenuni": max(s_f, s_t)}[metric]


def test_token_overlap_exact(toy):
    prompts = ["a red square", "a red circle", "a blue star", "red red circle circle", "an object"]
    g = gammas(toy, prompts, [["red circle"], ["blue star"], ["purple ring"]], metric="tokenuni")
    expected = torch.tensor([[0.5, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert g.shape == (5, 3) and g.dtype == torch.float32
    assert torch.equal(g, expected)  # |T(c) & T(p)| / |T(c)| on sets without BOS/EOS/pad


def test_clip_cosine_in_range_and_one_for_identical_text(toy):
    prompts = ["red circle", "a blue star", "an object", ""]
    g = gammas(toy, prompts, [["red circle"], ["green cross"]], metric="clipcos")
    assert ((g >= -1 - 1e-6) & (g <= 1 + 1e-6)).all()
    assert g[0, 0].item() == pytest.approx(1.0, abs=1e-5)
    assert (g[1:, 0] < 1 - 1e-4).all()  # different prompts are not identical in the flattened 16 x D space


@pytest.mark.parametrize("metric", ["clipcos", "tokenuni", "clipcos_tokenuni"])
def test_batched_equals_per_pair_reference(toy, metric):
    prompts = ["a red square", "a blue star", "a white ring", "an object", "a shape"]
    concepts = ["red circle", "blue star", "white ring", "a green cross"]
    g = gammas(toy, prompts, [[c] for c in concepts], metric=metric)
    ref = torch.tensor([[reference(toy, p, c, metric) for c in concepts] for p in prompts])
    assert torch.allclose(g, ref, atol=1e-5)


def test_max_over_an_spms_strings_and_default_metric(toy):
    prompts = ["a red square", "a blue star", "a white ring"]
    single = gammas(toy, prompts, [["red circle"], ["blue star"], ["white ring"]])
    multi = gammas(toy, prompts, [["red circle", "blue star"], ["white ring"]])
    assert torch.allclose(multi[:, 0], single[:, :2].amax(1)) and torch.allclose(multi[:, 1], single[:, 2])
    assert multi[1, 0].item() == pytest.approx(1.0, abs=1e-5)  # "a blue star" hits the SPM's 2nd string fully
    # Default metric = max(s_f, s_t).
    s_f = gammas(toy, prompts, [["red circle"]], metric="clipcos")
    s_t = gammas(toy, prompts, [["red circle"]], metric="tokenuni")
    assert torch.allclose(single[:, :1], torch.maximum(s_f, s_t))


def test_facilitate_factor_fixed_allone_and_prompt_embeds(toy):
    prompts = ["a red square", "a blue star"]
    concepts = [["red circle"], ["blue star"]]
    base = gammas(toy, prompts, concepts)
    assert torch.allclose(gammas(toy, prompts, concepts, facilitate_factor=2.0), 2 * base)
    fixed = gammas(toy, prompts, concepts, fixed=[2.0, 0.5])
    assert torch.equal(fixed, torch.tensor([[2.0, 0.5], [2.0, 0.5]]))
    # The official loop multiplies fixed multipliers by facilitate_factor too.
    assert torch.equal(gammas(toy, prompts, concepts, fixed=[2.0, 0.5], facilitate_factor=2.0), 2 * fixed)
    assert torch.equal(gammas(toy, prompts, concepts, metric="allone"), torch.ones(2, 2))
    # Embeddings passed in (as used for generation) give the same gammas as encoding the prompts here.
    embeds = toy.encode_prompts(prompts)
    assert torch.allclose(gammas(toy, prompts, concepts, prompt_embeds=embeds), base, atol=1e-6)


def test_bad_input_errors(toy):
    with pytest.raises(ValueError, match="metric 'cos' is not one of"):
        gammas(toy, ["a"], [["red circle"]], metric="cos")
    with pytest.raises(ValueError, match="2 values for 1 SPMs"):
        gammas(toy, ["a"], [["red circle"]], fixed=[1.0, 2.0])
    with pytest.raises(ValueError, match="SPM 1 has no concept strings"):
        gammas(toy, ["a"], [["red circle"], []])
    one_list = r"one list of concept strings per SPM, e.g. \[\['circle'\]\].*got \['circle'\]"
    with pytest.raises(ValueError, match=one_list):
        gammas(toy, ["a circle"], ["circle"])           # read as the SPMs "c", "i", "r", ... before
