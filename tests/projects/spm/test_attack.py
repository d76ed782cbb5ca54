"""The attacks of ``python -m projects.spm attack`` on the tiny SD v1 / v2 / SDXL pipelines and the tiny toy model:
each objective falls with a step, discrete tokens are real vocabulary ids, the erased model's FT gamma is the
attacked prompt's own, the ASR arithmetic, the JSON settings and the bad inputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image

from projects.spm.attacks.inversion import concept_inversion
from projects.spm.attacks.ring_a_bell import concept_pairs, ring_a_bell
from projects.spm.attacks.soft_prompt import relaxed_vectors, soft_prompt_attack
from projects.spm.attacks.target import ErasedModel
from projects.spm.attacks.text import concept_slot_ids, embedding_tables, encode_with_slots, slot_ids
from projects.spm.tools.attack import asr, main
from tests.projects.spm.conftest import FAMILIES
from tests.projects.spm.tiny_sd import write_random_spm


@pytest.fixture(scope="module")
def erased(tiny_sd, tmp_path_factory) -> dict[str, ErasedModel]:
    """Each family's tiny model with one random SPM for "circle", FT on."""
    out = {}
    for family in FAMILIES:
        model = tiny_sd[family].model
        spm = write_random_spm(model.unet, tmp_path_factory.mktemp(family) / "circle.safetensors", ["circle"], 3)
        out[family] = ErasedModel(model, [spm])
    return out


def concept_latents(target: ErasedModel, n: int = 2) -> torch.Tensor:
    model = target.model
    shape = model.latent_shape(n, *(2 * [model.unet.config.sample_size * model.latent_scale]))
    return torch.randn(shape, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("family", FAMILIES)
def test_soft_prompt_step_lowers_its_objective_and_ends_on_real_tokens(erased, family):
    target = erased[family]
    model, x0 = target.model, concept_latents(target)
    tables = embedding_tables(model)
    ids, slots = slot_ids(model, ["a circle"], 2)
    assert all(i.shape[1] == t.model_max_length for i, (t, _) in zip(ids, model.text_encoders, strict=True))
    logits = torch.zeros(2, tables[0].shape[0]).requires_grad_(True)

    def objective() -> torch.Tensor:
        cond = encode_with_slots(model, ids, slots, relaxed_vectors(logits, tables, 1.0))
        return target.denoising_loss(cond, x0, target.gammas(["a circle"], cond), torch.Generator().manual_seed(1))

    before = objective()
    before.backward()
    assert logits.grad.abs().sum() > 0                      # the text side is differentiable end to end
    with torch.no_grad():
        logits -= 50.0 * logits.grad / logits.grad.norm()
    assert objective().item() < before.item()

    result = soft_prompt_attack(target, "a circle", x0, k=2, steps=2, lr=0.5, batch=2)
    vocab = min(len(t) for t, _ in model.text_encoders)
    assert len(result.tokens) == 2 and all(0 <= t < vocab for t in result.tokens)
    real = [i.clone() for i in ids]
    for i in real:
        i[slots] = torch.tensor(result.tokens)
    with torch.no_grad():
        assert torch.equal(result.cond.text, model.encode_ids(real).text)          # generated from real ids
    assert result.gammas.shape == (1, 1) and len(result.trace) == 2


@pytest.mark.parametrize("family", FAMILIES)
def test_concept_inversion_step_lowers_its_objective(erased, family):
    target = erased[family]
    model, x0 = target.model, concept_latents(target)
    ids, slots = slot_ids(model, [""], 1)
    vectors = [t.mean(0, keepdim=True).clone().requires_grad_(True) for t in embedding_tables(model)]

    def objective() -> torch.Tensor:
        cond = encode_with_slots(model, ids, slots, vectors)
        return target.denoising_loss(cond, x0, target.gammas([""], cond), torch.Generator().manual_seed(1))

    before = objective()
    before.backward()
    with torch.no_grad():
        for v in vectors:
            v -= 1e-2 * v.grad / v.grad.norm()
    assert objective().item() < before.item()
    result = concept_inversion(target, "", x0, placement="prefix", steps=2, batch=2)
    assert result.tokens is None and result.text == "<concept>" and len(result.trace) == 2


@pytest.mark.parametrize("family", FAMILIES)
def test_concept_inversion_in_place_of_the_word(erased, family):
    """Pham et al.'s placement: the learned word where "circle" stood, so FT no longer sees the erased token."""
    target = erased[family]
    model, x0 = target.model, concept_latents(target)
    ids, slots = concept_slot_ids(model, "a red circle", "circle")
    for (tokenizer, _), row in zip(model.text_encoders, ids, strict=True):
        words = tokenizer("a red circle").input_ids
        at = words.index(tokenizer("circle", add_special_tokens=False).input_ids[0])
        assert slots[0].nonzero().flatten().tolist() == [at] and row[0, at] == words[0]
        assert row[0, :len(words)].tolist()[:at] == words[:at] and row[0, at + 1:len(words)].tolist() == words[at + 1:]
    replaced = concept_inversion(target, "a red circle", x0, concept="circle", steps=2, batch=2)
    prefixed = concept_inversion(target, "a red circle", x0, placement="prefix", steps=2, batch=2)
    assert replaced.text == "a red <concept>" and prefixed.text == "<concept> a red circle"
    assert prefixed.gammas.item() == 1.0 and replaced.gammas.item() < 1.0     # FT: the word's overlap is gone
    for prompt in ("a red square", "circle circle"):
        with pytest.raises(ValueError, match="exactly once"):
            concept_slot_ids(model, prompt, "circle")
    too_long = "a " * model.tokenizer.model_max_length + "circle"
    for make in (lambda: slot_ids(model, [too_long], 2), lambda: concept_slot_ids(model, too_long, "circle")):
        with pytest.raises(ValueError, match="exceeds the text encoder"):
            make()


@pytest.mark.parametrize("family", FAMILIES)
def test_ring_a_bell_keeps_its_best_and_searches_real_tokens(erased, family):
    target = erased[family]
    pairs = concept_pairs(["a red circle", "a blue star"], "circle")
    assert pairs == [("a red circle", "a red")]
    result = ring_a_bell(target, "a red circle", pairs, length=3, population=8, generations=4, eta=1.0)
    assert all(b >= a for a, b in zip(result.trace, result.trace[1:], strict=False))   # the elite survives
    specials = set(target.model.tokenizer.all_special_ids)
    assert len(result.tokens) == 3 and not specials & set(result.tokens)
    assert result.gammas.shape == (1, 1)


def test_ft_gamma_is_the_attacked_prompts_own(erased):
    target = erased["sd1"]
    model = target.model
    on, off = [target.gammas([p], model.encode([p])) for p in ("a circle", "a blue star")]
    assert on.item() > off.item()                       # "circle" in the prompt: the membrane acts harder
    ids = model.tokenize(["a circle"])
    cond = model.encode_ids(ids)                       # an attack's gamma follows the ids, not the decoded text
    assert torch.equal(target.gammas(["unrelated text"], cond, ids[0]), on)
    fixed = ErasedModel(model, [], ft=True)
    assert fixed.gammas(["a circle"], model.encode(["a circle"])).shape == (1, 0)     # the base model: no SPM


def test_asr_arithmetic():
    rows = [{"success": True, "no_attack_success": False, "attacked_rate": 1.0, "no_attack_rate": 0.0},
            {"success": True, "no_attack_success": True, "attacked_rate": 0.5, "no_attack_rate": 0.5},
            {"success": False, "no_attack_success": False, "attacked_rate": 0.0, "no_attack_rate": 0.0},
            {"success": False, "no_attack_success": False, "attacked_rate": 0.0, "no_attack_rate": 0.0}]
    r = asr(rows)
    assert (r["asr"], r["no_attack_asr"], r["successes"], r["prompts"]) == (0.5, 0.25, 2, 4)
    assert (r["image_rate"], r["no_attack_image_rate"]) == (0.375, 0.125)


TINY_FLAGS = ["--steps", "2", "--guidance", "3", "--target_images", "2", "--sp_steps", "2", "--sp_k", "2",
              "--ci_steps", "2", "--rab_length", "3", "--rab_population", "6", "--rab_generations", "2"]


def test_the_command_on_the_toy_model_writes_images_csvs_and_its_settings(tiny_base: Path, tmp_path: Path, capsys):
    unet = UNet2DConditionModel.from_pretrained(tiny_base / "unet")
    spm = write_random_spm(unet, tmp_path / "circle.safetensors", ["circle"], 4)
    out = tmp_path / "attack"
    info = main(["--base_model", str(tiny_base), "--spm", str(spm), "--concept", "circle", "--prompts",
                 "a red circle", "circle", "--seeds", "0", "1", "--judge", "toy", "--classifier",
                 str(tiny_base / "classifier.safetensors"), "--out", str(out), *TINY_FLAGS])
    saved = json.loads((out / "attack.json").read_text())
    assert saved["judge"]["kind"] == "toy" and saved["judge"]["classifier"].endswith("classifier.safetensors")
    assert saved["settings"]["soft_prompt"]["k"] == 2 and saved["settings"]["ring_a_bell"]["generations"] == 2
    assert saved["settings"]["concept_inversion"]["steps"] == 2 and saved["ft"] is True
    for name in ("soft_prompt", "concept_inversion", "ring_a_bell"):
        assert len(list((out / name / "images").glob("*.png"))) == 4              # 2 prompts x 2 seeds
        assert (out / f"{name}.csv").read_text().count("\n") == 3
        for row in csv.DictReader((out / f"{name}.csv").open()):              # each seed's verdict, and its mean
            judged = [int(j) for j in row["judged"].split()]
            assert len(judged) == 2 and float(row["attacked_rate"]) == sum(judged) / 2
            assert (row["success"] == "True") == any(judged)
        grid = Image.open(out / name / "grid.png")                              # 2 prompts (rows) x 2 seeds
        assert grid.size[0] == grid.size[1] and grid.size[0] > 2 * 16
        assert 0 <= info["results"][name]["asr"] <= 1
    assert "soft_prompt: ASR" in capsys.readouterr().out


def test_bad_inputs_get_one_line(tiny_base: Path, tiny_sd, tmp_path: Path, capsys):
    sd1_spm = write_random_spm(tiny_sd["sd1"].model.unet, tmp_path / "sd1.safetensors", ["circle"], 1)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    common = ["--base_model", str(tiny_base), "--judge", "toy", "--classifier",
              str(tiny_base / "classifier.safetensors"), "--out", str(tmp_path / "o"), *TINY_FLAGS]
    cases = [(["--spm", str(tmp_path / "none.safetensors"), "--concept", "circle", "--prompts", "x"],
              ["none.safetensors", "does not exist"]),
             (["--spm", str(sd1_spm), "--concept", "circle", "--prompts", "a circle"], ["sd1.safetensors"]),
             (["--concept", "circle", "--prompts_file", str(empty)], [str(empty), "no prompt"]),
             (["--concept", "circle"], ["no prompt to attack"]),
             (["--concept", "dog", "--prompts", "a dog"], ["'dog'", "3 tokens"]),
             (["--concept", "the", "--prompts", "the circle"], ["--judge toy", "'the'"]),
             (["--concept", "circle", "--prompts", "a circle", "--rab_length", "16"],
              ["--rab_length 16", "at most 14"]),
             (["--concept", "circle", "--prompts", "a red square"], ["'a red square'", "0 times", "exactly once"])]
    for args, words in cases:
        with pytest.raises(SystemExit) as exc:
            main([*common, *args])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "error: " in err and all(w in err for w in words), err
    with pytest.raises(SystemExit):
        main([*common, "--concept", "circle", "--prompts", "x", "--attacks", "gcg"])
    assert "invalid choice: 'gcg'" in capsys.readouterr().err
    try:
        import nudenet  # noqa: F401
    except ImportError:
        with pytest.raises(SystemExit):
            main([*common, "--concept", "circle", "--prompts", "x", "--judge", "nudenet"])
        assert "needs the nudenet package" in capsys.readouterr().err


def test_robustness_study_table_and_claim():
    from projects.spm.toy.robustness import NAMES, claim, table
    from shared.claims import verdict
    rows = [{"model": m, "ft": "on", "seed": s, "no_attack_asr": 1.0 if m == "base" else 0.0,
             "no_attack_image_rate": 0.9 if m == "base" else 0.1,
             "asr": {a: (1.0 if m == "base" else 0.25 * s) for a in NAMES},
             "image_rate": {a: (0.8 if m == "base" else 0.1 * s) for a in NAMES},
             "gamma": {} if m == "base" else {a: 0.5 for a in NAMES}}
            for s in (0, 1, 2) for m in ("base", "toy")]
    text = table(rows)
    assert "| base model | 100.0 ± 0.0 |" in text and "| toy-scaled recipe, FT on | 0.0 ± 0.0 | 25.0 ± 25.0" in text
    assert "| images judged circle, % |" in text and "| base model | 90.0 ± 0.0 | 80.0 ± 0.0" in text
    assert "| toy-scaled recipe, FT on | 0.50 ± 0.00 |" in text                 # the gammas, SPM rows only
    block = claim(rows)
    assert len(block["comparisons"]) == 4 and block["unit"] == "ASR %"
    assert block["mechanism"]["gamma of the inverted prompts x 100, toy-scaled recipe, FT on"]["values"] == [50.0] * 3
    assert verdict(block)[0] == "supported"                  # 25 ± 25 against 100 ± 0: lower beyond 2 SE
    rows[-1]["asr"]["inversion_replace"] = 1.0                # one attack brings it back: not all hold
    assert verdict(claim(rows))[0] in ("inconclusive", "not supported")


def test_robustness_plot_draws_every_model(tmp_path: Path):
    from projects.spm.toy.robustness import plot
    rates = {"soft_prompt": 0.25, "inversion_replace": 1.0, "inversion_prefix": 0.5, "ring_a_bell": 0.0}
    rows = [{"model": m, "ft": f, "seed": s, "no_attack_asr": 0.5, "no_attack_image_rate": 0.2, "asr": rates,
             "image_rate": rates}
            for s in (0, 1) for m, f in (("base", "on"), ("toy", "on"), ("toy", "off"))]
    plot(rows, tmp_path / "asr.png")
    assert Image.open(tmp_path / "asr.png").size[0] > 500


def test_robustness_row_merges_the_two_inversion_placements(monkeypatch, tmp_path: Path):
    from projects.spm.toy import robustness

    def fake_run(model, ft, seed, suffix, flags):
        out = tmp_path / f"run{suffix}"
        out.mkdir()
        rates = lambda a: {"asr": a, "image_rate": a / 2, "no_attack_asr": 0.25, "no_attack_image_rate": 0.1}  # noqa
        if suffix:
            assert flags[-2:] == ["--ci_placement", "replace"]
            results = {"concept_inversion": rates(1.0)}
        else:
            assert flags == ["--ci_placement", "prefix"]
            results = {"soft_prompt": rates(0.5), "concept_inversion": rates(0.75), "ring_a_bell": rates(0.0)}
        (out / "attack.json").write_text(json.dumps({"results": results}))
        for attack in results:                  # two prompts' gammas: the replaced word gets less than the rest
            gammas = ("0.2000", "0.4000") if suffix else ("1.0000", "1.0000")
            (out / f"{attack}.csv").write_text("prompt,gammas\n" + "".join(f"p,{g}\n" for g in gammas))
        return out

    monkeypatch.setattr(robustness, "attack_run", fake_run)
    row = robustness.study_row("toy", "on", 0)
    assert row["asr"] == {"soft_prompt": 0.5, "inversion_prefix": 0.75, "ring_a_bell": 0.0, "inversion_replace": 1.0}
    assert row["no_attack_asr"] == 0.25 and row["image_rate"]["inversion_replace"] == 0.5
    assert row["gamma"]["inversion_replace"] == pytest.approx(0.3) and row["gamma"]["soft_prompt"] == 1.0
