"""SPM training on a tiny random UNet: one step per anchoring mode, batched == official losses, anchors, CLI, DDP."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from projects.spm.anchoring import ConceptPool, official_anchors, vocabulary_words
from projects.spm.bench import OfficialMembrane, build_module, official_iteration, official_losses_at, random_ups
from projects.spm.model import TOY_UNET_CONFIG
from projects.spm.toy_base import ToyClassifier, write_random_base

REPO = Path(__file__).resolve().parents[3]
TINY = {**TOY_UNET_CONFIG, "block_out_channels": (16, 32, 32), "cross_attention_dim": 32, "attention_head_dim": 8}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    out = write_random_base(tmp_path_factory.mktemp("tiny_base"), TINY)
    save_file(ToyClassifier().state_dict(), str(out / "classifier.safetensors"))
    return out


@pytest.mark.parametrize("anchoring", ["none", "official", "paper"])
def test_one_step_trains_only_the_membrane(base: Path, anchoring: str):
    module = build_module(base, anchoring)
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


def official_copy(base: Path, anchoring: str, ours) -> tuple:
    """A second module on the same base with ours' membrane weights, run through the official SPMLayer."""
    other = build_module(base, anchoring)
    other.network.load_state_dict(ours.network.state_dict())
    return other, OfficialMembrane(other)


@pytest.mark.parametrize("anchoring", ["none", "official", "paper"])
def test_batched_losses_equal_official_separate_calls(base: Path, anchoring: str):
    module = build_module(base, anchoring)
    random_ups(module.network, seed=3, scale=0.05)
    other, membrane = official_copy(base, anchoring, module)
    cache = module._embeddings()
    torch.manual_seed(1)
    x = torch.randn(1, 3, 16, 16)
    anchors = module.sample_anchors(0)
    ours = module.losses_at(x, 500, cache["targets"][:1], anchors)
    official = official_losses_at(other, membrane, x, 500, cache["targets"][:1], anchors)
    assert set(ours) == set(official)
    for key in ours:
        assert torch.allclose(ours[key].cpu(), official[key], rtol=1e-4, atol=1e-7), key


@pytest.mark.parametrize("anchoring", ["official", "paper"])
def test_iteration_equals_official_loop(base: Path, anchoring: str):
    """Same seed: the merged-weight roll-out + batched calls give the official loop's loss (hooks on, separate
    calls, branch computed at multiplier 0 too)."""
    module = build_module(base, anchoring)
    random_ups(module.network, seed=3, scale=0.05)
    other, membrane = official_copy(base, anchoring, module)
    results = []
    for fn in (module.spm_losses, lambda: official_iteration(other, membrane)):
        random.seed(5)
        torch.manual_seed(5)
        with torch.no_grad():
            results.append(fn())
    for key in ("loss_erase", "loss_anchor", "loss"):
        assert torch.allclose(results[0][key].cpu(), results[1][key], rtol=1e-4, atol=1e-7), key


def test_official_anchor_pairing_equals_the_official_batch_loop(base: Path):
    """batch_size 2 with ``official_anchor_pairing``: the losses of the official loop's batch layout, written out
    (``predict_noise`` = one UNet call on ``cat([latents] * 2)`` with [uncond rows; cond rows]; anchors at
    ``latents.repeat(N // B)``); ours (every anchor at every latent) gives other losses."""
    import torch.nn.functional as F

    from projects.spm.model import Conditioning
    from projects.spm.module import erasing_target

    module = build_module(base, "official", batch_size=2, official_anchor_pairing=True)
    random_ups(module.network, seed=3, scale=0.05)
    other, membrane = official_copy(base, "official", module)
    cache, d = module._embeddings(), other.diffusion
    torch.manual_seed(1)
    x = torch.randn(2, 3, 16, 16)
    anchors = module.sample_anchors(0)  # the batch quirk's [u, s3, u, s4]

    def predict_noise(latents, cond):  # guidance 1: uncond + 1 * (cond - uncond)
        eps = d.predict(torch.cat([latents] * 2), 500, Conditioning.cat([cache["uncond"].expand(len(cond)), cond]))
        e_u, e_c = eps.chunk(2)
        return e_u + 1.0 * (e_c - e_u)

    target, surrogate = cache["targets"][:1].expand(2), cache["surrogate"].expand(2)
    x_anchor = x.repeat(len(anchors) // 2, 1, 1, 1)  # [x1, x2, x1, x2]
    with torch.no_grad():
        pos, neu, anc = predict_noise(x, target), predict_noise(x, surrogate), predict_noise(x_anchor, anchors)
        with membrane.applied(1.0):
            tgt, anc_spm = predict_noise(x, target), predict_noise(x_anchor, anchors)
        ours = module.losses_at(x, 500, cache["targets"][:1], anchors)
        module.hparams.official_anchor_pairing = False
        every_pair = module.losses_at(x, 500, cache["targets"][:1], anchors)
    official = {"loss_erase": F.mse_loss(tgt, erasing_target(pos, neu, module.hparams.eta)),
                "loss_anchor": F.mse_loss(anc_spm, anc)}
    for key, value in official.items():
        assert torch.allclose(ours[key], value, rtol=1e-4, atol=1e-7), key
    assert torch.equal(every_pair["loss_erase"], ours["loss_erase"])
    assert not torch.allclose(every_pair["loss_anchor"], ours["loss_anchor"], rtol=1e-3)


def test_batch_of_latents_is_the_mean_of_single_latent_losses(base: Path):
    module = build_module(base, "paper", batch_size=3)
    random_ups(module.network, seed=3, scale=0.05)
    target = module._embeddings()["targets"][:1]
    torch.manual_seed(2)
    anchors = module.sample_anchors(0)
    random.seed(0)
    x, t, _ = module.make_xt(target)
    assert x.shape == (3, 3, 16, 16)
    batched = module.losses_at(x, t, target, anchors)
    single = [module.losses_at(x[i:i + 1], t, target, anchors) for i in range(3)]
    for key in batched:
        assert torch.allclose(batched[key], torch.stack([s[key] for s in single]).mean(), rtol=1e-4), key


def test_exact_timestep_flag(base: Path):
    module = build_module(base, "none", timestep="exact")
    random.seed(0)
    _, t, k = module.make_xt(module._embeddings()["targets"][:1])
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


def test_concept_pool_probabilities_follow_the_paper(base: Path):
    module = build_module(base, "paper")
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


def test_anchor_uncond_adds_the_empty_prompt_to_every_steps_anchors(base: Path):
    plain, pinned = build_module(base, "paper"), build_module(base, "paper", anchor_uncond=True)
    torch.manual_seed(0)
    a = plain.sample_anchors(0)
    torch.manual_seed(0)
    b = pinned.sample_anchors(0)
    assert b.batch == a.batch + 1 and a.pooled is None  # Conditioning: SD-shaped, text states only
    assert torch.equal(b.text[:-1], a.text) and torch.equal(b.text[-1:], pinned._embeddings()["uncond"].text)


def test_toy_prompt_labels():
    from projects.spm.data import toy_labels
    from projects.spm.module import toy_prompt_labels

    assert toy_prompt_labels("a red circle") == (0, 0) and toy_labels("circle") == (0, None)
    assert toy_labels("a red or blue circle") == (0, None)
    with pytest.raises(ValueError, match="'circle' must name one toy shape.*and one colour"):
        toy_prompt_labels("circle")
    with pytest.raises(ValueError, match="'a red blob'"):
        toy_prompt_labels("a red blob")


def run_cli(tmp_path: Path, base: Path, *extra: str, command: str = "fit") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    env.update(CV_PAPERS_LOGS=str(tmp_path / "logs"), PROGRESS_REFRESH="0", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "projects.spm", command, "--config", "projects/spm/configs/toy.yaml",
           "--model.base_model", str(base), "--model.build_toy_base", "false",
           "--model.classifier", str(base / "classifier.safetensors"), "--model.eval_images_per_prompt", "2",
           "--model.eval_steps", "2", "--logger", "csv", *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_cli_fast_dev_run(tmp_path: Path, base: Path):
    run_cli(tmp_path, base, "--trainer.fast_dev_run", "true")
    spm = tmp_path / "logs" / "spm" / "toy" / "toy_circle_last.safetensors"
    assert spm.is_file()


def test_cli_ddp_two_cpu_processes(tmp_path: Path, base: Path):
    run_cli(tmp_path, base, "--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu",
            "--trainer.devices", "2", "--trainer.strategy", "ddp")


def test_two_process_validation_equals_one_process(tmp_path: Path, base: Path):
    """3 validation batches over 2 processes (2 + 1, none repeated; each seeded by its own number): the rates are
    the 1-process rates exactly."""
    import json

    common = ["--data.val_batches", "3", "--trainer.accelerator", "cpu"]
    run_cli(tmp_path, base, *common, "--run_name", "one", command="validate")
    run_cli(tmp_path, base, *common, "--run_name", "two", "--trainer.devices", "2", "--trainer.strategy", "ddp",
            command="validate")
    one_m, two_m = (json.loads((tmp_path / "logs" / "spm" / r / "summary.json").read_text())["metrics"]
                    for r in ("one", "two"))
    keys = [k for k in one_m if k.startswith("val/")]
    assert "val/target_rate" in keys and "val/nontarget_acc_before" in keys
    assert {k: two_m[k] for k in keys} == pytest.approx({k: one_m[k] for k in keys}, abs=1e-9)


def test_committed_toy_model_is_small_loads_and_is_the_toy_default():
    from omegaconf import OmegaConf

    from projects.spm.model import DiffusionModel
    from projects.spm.toy_base import DEFAULT_DIR, load_classifier

    cfg = OmegaConf.load(REPO / "projects/spm/configs/toy.yaml")
    assert (REPO / cfg.model.base_model).resolve() == DEFAULT_DIR
    assert sum(f.stat().st_size for f in DEFAULT_DIR.rglob("*") if f.is_file()) < 10 * 2**20
    model = DiffusionModel.from_folder(DEFAULT_DIR)
    assert model.vae is None and model.clip_sample == 1.0
    images = model.sample(["a red circle", "a blue star"], seed=0, steps=2, guidance=5.0)
    assert images.shape == (2, 3, 16, 16) and 0 <= images.min() and images.max() <= 1
    shape_logits, color_logits = load_classifier(REPO / cfg.model.classifier)(images)
    assert shape_logits.shape == (2, 6) and color_logits.shape == (2, 6)
