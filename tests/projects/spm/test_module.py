"""SPM training on a tiny random UNet: one step per anchoring mode, batched == official losses, anchors, the CLI
(in process; 2-process DDP as a subprocess), and a checkpoint of the flat module arguments."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from projects.spm.anchoring import Anchoring, ConceptPool, official_anchors, vocabulary_words
from projects.spm.bench import OfficialMembrane, build_module, official_iteration, official_losses_at, random_ups
from projects.spm.diffusion.conditioning import Conditioning
from projects.spm.diffusion.model import DiffusionModel
from projects.spm.diffusion.sampling import sample
from projects.spm.losses import erasing_target
from projects.spm.toy.classifier import load_classifier
from projects.spm.toy.judge import toy_prompt_labels
from projects.spm.toy.scenes import toy_labels
from projects.spm.toy.toy_base import DEFAULT_DIR

REPO = Path(__file__).resolve().parents[3]
TOY = REPO / "projects/spm/configs/toy.yaml"


@pytest.mark.parametrize("anchoring", ["none", "official", "paper"])
def test_one_step_trains_only_the_membrane(tiny_base: Path, anchoring: str):
    module = build_module(tiny_base, anchoring)
    frozen = {k: v.clone() for k, v in module.diffusion.state_dict().items()}
    membrane = {k: v.clone() for k, v in module.network.state_dict().items()}
    opt = module.configure_optimizers()["optimizer"]
    for group in opt.param_groups:  # the warm-up starts at lr 0
        group["lr"] = 1e-3
    random.seed(0)
    torch.manual_seed(0)
    out = module.spm_losses()
    assert torch.isfinite(out["loss"]) and ("loss_anchor" in out) == (anchoring != "none")
    assert 1 <= out["k"] <= 29 and out["t"] == 999 - int(out["k"] * 1000 / 30)
    out["loss"].backward()
    opt.step()
    assert all(torch.equal(frozen[k], v) for k, v in module.diffusion.state_dict().items())  # bit-identical
    changed = [k for k, v in module.network.state_dict().items() if not torch.equal(membrane[k], v)]
    assert any(k.endswith("lora_up.weight") for k in changed)
    assert not any(k.endswith(".alpha") for k in changed)


def official_copy(base: Path, anchoring: str | Anchoring, ours) -> tuple:
    """A second module on the same base with ours' membrane weights, run through the official SPMLayer."""
    other = build_module(base, anchoring)
    other.network.load_state_dict(ours.network.state_dict())
    return other, OfficialMembrane(other)


@pytest.mark.parametrize("anchoring", ["none", "official", "paper"])
def test_batched_losses_equal_official_separate_calls(tiny_base: Path, anchoring: str):
    module = build_module(tiny_base, anchoring)
    random_ups(module.network, seed=3, scale=0.05)
    other, membrane = official_copy(tiny_base, anchoring, module)
    targets = module.embeddings().targets
    torch.manual_seed(1)
    x = torch.randn(1, 3, 16, 16)
    anchors = module.sample_anchors(0)
    ours = module.losses_at(x, 500, targets[:1], anchors)
    official = official_losses_at(other, membrane, x, 500, targets[:1], anchors)
    assert set(ours) == set(official)
    for key in ours:
        assert torch.allclose(ours[key].cpu(), official[key], rtol=1e-4, atol=1e-7), key


@pytest.mark.parametrize("anchoring", ["official", "paper"])
def test_iteration_equals_official_loop(tiny_base: Path, anchoring: str):
    """Same seed: the merged-weight roll-out + batched calls give the official loop's loss (hooks on, separate
    calls, branch computed at multiplier 0 too)."""
    module = build_module(tiny_base, anchoring)
    random_ups(module.network, seed=3, scale=0.05)
    other, membrane = official_copy(tiny_base, anchoring, module)
    results = []
    for fn in (module.spm_losses, lambda: official_iteration(other, membrane)):
        random.seed(5)
        torch.manual_seed(5)
        with torch.no_grad():
            results.append(fn())
    for key in ("loss_erase", "loss_anchor", "loss"):
        assert torch.allclose(results[0][key].cpu(), results[1][key], rtol=1e-4, atol=1e-7), key


def test_official_anchor_pairing_equals_the_official_batch_loop(tiny_base: Path):
    """batch_size 2 with ``official_pairing``: the losses of the official loop's batch layout, written out
    (``predict_noise`` = one UNet call on ``cat([latents] * 2)`` with [uncond rows; cond rows]; anchors at
    ``latents.repeat(N // B)``); ours (every anchor at every latent) gives other losses."""
    pairing = Anchoring(mode="official", official_pairing=True)
    module = build_module(tiny_base, pairing, batch_size=2)
    random_ups(module.network, seed=3, scale=0.05)
    other, membrane = official_copy(tiny_base, pairing, module)
    e, d = module.embeddings(), other.diffusion
    torch.manual_seed(1)
    x = torch.randn(2, 3, 16, 16)
    anchors = module.sample_anchors(0)  # the batch quirk's [u, s3, u, s4]

    def predict_noise(latents, cond):  # guidance 1: uncond + 1 * (cond - uncond)
        eps = d.predict(torch.cat([latents] * 2), 500, Conditioning.cat([e.uncond.expand(len(cond)), cond]))
        e_u, e_c = eps.chunk(2)
        return e_u + 1.0 * (e_c - e_u)

    target, surrogate = e.targets[:1].expand(2), e.surrogate.expand(2)
    x_anchor = x.repeat(len(anchors) // 2, 1, 1, 1)  # [x1, x2, x1, x2]
    with torch.no_grad():
        pos, neu, anc = predict_noise(x, target), predict_noise(x, surrogate), predict_noise(x_anchor, anchors)
        with membrane.applied(1.0):
            tgt, anc_spm = predict_noise(x, target), predict_noise(x_anchor, anchors)
        ours = module.losses_at(x, 500, e.targets[:1], anchors)
        module.anchoring = dataclasses.replace(module.anchoring, official_pairing=False)
        every_pair = module.losses_at(x, 500, e.targets[:1], anchors)
    official = {"loss_erase": F.mse_loss(tgt, erasing_target(pos, neu, module.hparams.eta)),
                "loss_anchor": F.mse_loss(anc_spm, anc)}
    for key, value in official.items():
        assert torch.allclose(ours[key], value, rtol=1e-4, atol=1e-7), key
    assert torch.equal(every_pair["loss_erase"], ours["loss_erase"])
    assert not torch.allclose(every_pair["loss_anchor"], ours["loss_anchor"], rtol=1e-3)


def test_batch_of_latents_is_the_mean_of_single_latent_losses(tiny_base: Path):
    module = build_module(tiny_base, "paper", batch_size=3)
    random_ups(module.network, seed=3, scale=0.05)
    target = module.embeddings().targets[:1]
    torch.manual_seed(2)
    anchors = module.sample_anchors(0)
    random.seed(0)
    x, t, _ = module.make_xt(target)
    assert x.shape == (3, 3, 16, 16)
    batched = module.losses_at(x, t, target, anchors)
    single = [module.losses_at(x[i:i + 1], t, target, anchors) for i in range(3)]
    for key in batched:
        assert torch.allclose(batched[key], torch.stack([s[key] for s in single]).mean(), rtol=1e-4), key


def test_exact_timestep_flag(tiny_base: Path):
    module = build_module(tiny_base, "none", timestep="exact")
    random.seed(0)
    _, t, k = module.make_xt(module.embeddings().targets[:1])
    assert t == 957 - 33 * k


def test_official_anchors_norm_and_batch_quirk():
    g = torch.Generator().manual_seed(0)
    target, uncond = torch.randn(1, 77, 768, generator=g), torch.randn(1, 77, 768, generator=g)
    plain = official_anchors(target, 4, batch_quirk=False, generator=g)
    ratio = plain.flatten(1).norm(dim=1) / target.norm()
    assert plain.shape == (4, 77, 768) and ((ratio >= 0.8) & (ratio <= 1.2)).all()
    quirk = official_anchors(target, 4, uncond, batch_quirk=True, generator=g)
    # [u, s1, u, s2, u, s3, u, s4] -> the second half [u, s3, u, s4]
    assert torch.equal(quirk[0], uncond[0]) and torch.equal(quirk[2], uncond[0])
    assert not torch.equal(quirk[1], uncond[0]) and not torch.equal(quirk[3], uncond[0])


def test_concept_pool_probabilities_follow_the_paper(tiny_base: Path):
    module = build_module(tiny_base, "paper")
    d = module.diffusion
    pool_words = vocabulary_words(d.tokenizer)
    assert "circle" in pool_words and "red" in pool_words
    target = d.encode_prompts(["circle"])
    pool = ConceptPool(pool_words, d.encode_prompts, target, alpha=2.0)
    emb = d.encode_prompts(pool_words)
    cos = torch.nn.functional.cosine_similarity(emb.flatten(1), target.flatten(1))
    expected = (1 - cos.abs()) ** 2
    assert torch.allclose(pool.probs[0], expected, atol=1e-5)
    assert pool.probs[0][pool_words.index("circle")] < 1e-6  # the target itself is never an anchor
    assert pool.sample(0, 6).shape == (6, *target.shape[1:])
    uniform = ConceptPool(pool_words, d.encode_prompts, target, alpha=0.0)  # alpha 0: 0^0 must not let it in
    assert uniform.probs[0][pool_words.index("circle")] == 0
    others = [p for i, p in enumerate(uniform.probs[0].tolist()) if i != pool_words.index("circle")]
    assert others == [1.0] * len(others)


def test_anchoring_uncond_adds_the_empty_prompt_to_every_steps_anchors(tiny_base: Path):
    plain, pinned = build_module(tiny_base, "paper"), build_module(tiny_base, Anchoring(uncond=True))
    torch.manual_seed(0)
    a = plain.sample_anchors(0)
    torch.manual_seed(0)
    b = pinned.sample_anchors(0)
    assert b.batch == a.batch + 1 and a.pooled is None  # Conditioning: SD-shaped, text states only
    assert torch.equal(b.text[:-1], a.text) and torch.equal(b.text[-1:], pinned.embeddings().uncond.text)


def test_toy_prompt_labels():
    assert toy_prompt_labels("a red circle") == (0, 0) and toy_labels("circle") == (0, None)
    assert toy_labels("a red or blue circle") == (0, None)
    with pytest.raises(ValueError, match="'circle' must name one toy shape.*and one colour"):
        toy_prompt_labels("circle")
    with pytest.raises(ValueError, match="'a red blob'"):
        toy_prompt_labels("a red blob")


def cli_args(base: Path, *extra: object) -> list[str]:
    """The toy config on the tiny base, its judge at 2 images per prompt and 2 DDIM steps."""
    return [str(a) for a in ("--config", TOY, "--model.base.path", base, "--model.base.build_toy", "false",
                             "--trainer.callbacks.classifier", base / "classifier.safetensors",
                             "--trainer.callbacks.images_per_prompt", "2", "--trainer.callbacks.steps", "2",
                             "--logger", "csv", *extra)]


def test_one_step_fit_validates_alike_on_one_and_two_processes(run_cli, tiny_base: Path, tmp_path: Path):
    """One training step, then 3 validation batches: in this process, and on 2 CPU processes (DDP, 2 + 1 batches,
    none repeated, each seeded by its own number). lr 0 keeps the membrane where it starts on both, so every judged
    rate is the 1-process rate exactly; each run writes its SPM file."""
    common = ["fit", *cli_args(tiny_base, "--data.iterations", "1", "--data.val_batches", "3",
                               "--model.optim.lr", "0", "--trainer.accelerator", "cpu")]
    one = run_cli("spm", *common, "--run_name", "one")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    env.update(PROGRESS_REFRESH="0", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "projects.spm", *common, "--run_name", "two", "--trainer.devices",
                           "2", "--trainer.strategy", "ddp"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Starting with 2 processes" in proc.stdout + proc.stderr
    for run in ("one", "two"):
        assert (one.run_dir(run) / "toy_circle_last.safetensors").is_file()
    one_m, two_m = one.summary("one")["metrics"], json.loads((one.run_dir("two") / "summary.json").read_text())[
        "metrics"]
    keys = [k for k in one_m if k.startswith("val/")]
    assert "val/target_rate" in keys and "val/nontarget_acc_before" in keys
    assert {k: two_m[k] for k in keys} == pytest.approx({k: one_m[k] for k in keys}, abs=1e-9)


def test_a_checkpoint_of_the_flat_arguments_is_one_line_naming_its_format(run_cli, tiny_base: Path,
                                                                          tmp_path: Path):
    """A checkpoint written before the module's arguments were grouped (flat ``model.anchor_strength``, ...)."""
    old = tmp_path / "old.ckpt"
    torch.save({"pytorch-lightning_version": "2.6.6", "state_dict": {}, "optimizer_states": [],
                "hyper_parameters": {"base_model": str(tiny_base), "target": "circle", "anchor_strength": 3.0,
                                     "lr": 0.01, "eval_images_per_prompt": 50}}, old)
    run = run_cli("spm", "validate", *cli_args(tiny_base), "--ckpt_path", old, check=False)
    assert run.code == 2
    assert "written by an earlier version of this repository (module hyper-parameters format 1" in run.last_line
    assert str(old) in run.last_line and "\n" not in run.last_line


def test_committed_toy_model_is_small_loads_and_is_the_toy_default():
    cfg = OmegaConf.load(TOY)
    assert (REPO / cfg.model.base.path).resolve() == DEFAULT_DIR
    assert sum(f.stat().st_size for f in DEFAULT_DIR.rglob("*") if f.is_file()) < 10 * 2**20
    model = DiffusionModel.from_folder(DEFAULT_DIR)
    assert model.vae is None and model.ddim.clip_sample == 1.0
    images = sample(model, ["a red circle", "a blue star"], seed=0, steps=2, guidance=5.0)
    assert images.shape == (2, 3, 16, 16) and 0 <= images.min() and images.max() <= 1
    shape_logits, color_logits = load_classifier(REPO / cfg.trainer.callbacks[0].init_args.classifier)(images)
    assert shape_logits.shape == (2, 6) and color_logits.shape == (2, 6)
