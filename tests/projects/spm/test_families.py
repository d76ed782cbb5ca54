"""SPM on SD v2.x and SDXL (tiny random pipelines of each family, 8x8 latents, 2 steps): the folder's family, our
denoising loop == the diffusers pipeline, DDIM step == DDIMScheduler.step, training steps, official anchors and
pairing, resolution buckets, composition, the cross-family load error, FT on SDXL and the family configs."""

from __future__ import annotations

import contextlib
import io
import random
import re
from pathlib import Path

import pytest
import torch
import yaml
from diffusers import DDIMScheduler
from torch import nn

from projects.spm.anchoring import anchor_batch, official_anchors
from projects.spm.bench import build_module, random_ups
from projects.spm.composition import SPMComposition
from projects.spm.data import SPMStepData
from projects.spm.diffusion.conditioning import Conditioning
from projects.spm.diffusion.ddim import DDIM
from projects.spm.diffusion.model import DiffusionModel
from projects.spm.diffusion.sampling import denoise, sample
from projects.spm.module import SPMModule
from projects.spm.network import SPMNetwork, adapted_layers
from projects.spm.rollout import dynamic_crop, resolution_bucket
from projects.spm.tools.generate import main as generate
from projects.spm.toy.classifier import load_classifier
from projects.spm.toy.scenes import TOY_COLORS, TOY_SHAPES, toy_caption
from projects.spm.transport import facilitated_gammas
from shared.cli import ProjectCLI
from tests.projects.spm.tiny_sd import write_random_spm

REPO = Path(__file__).resolve().parents[3]
PROMPTS = ["a red circle", "a blue star"]


def random_state(unet: nn.Module, seed: int, scale: float = 0.1) -> dict[str, torch.Tensor]:
    """A rank-1 SPM state (kohya keys) with random downs and ups."""
    net = SPMNetwork(unet)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in net.adapters.values():
            adapter.lora_up.weight.copy_(torch.randn(adapter.lora_up.weight.shape, generator=g) * scale)
    state = {k.removeprefix("adapters."): v.clone() for k, v in net.state_dict().items()}
    net.remove()
    return state


def test_the_folder_gives_the_family(tiny_sd: dict) -> None:
    sd1, sd2, xl = (tiny_sd[f].model for f in ("sd1", "sd2", "sdxl"))
    pipe2, pipe_xl = tiny_sd["sd2"].pipe, tiny_sd["sdxl"].pipe
    assert (sd1.is_xl, sd1.ddim.prediction_type, sd2.is_xl, sd2.ddim.prediction_type) == (False, "epsilon", False,
                                                                                           "v_prediction")
    assert xl.is_xl and xl.ddim.prediction_type == "epsilon" and xl.ddim.clip_sample is None  # Euler: no clipping
    assert not any(m.ddim.use_clipped_model_output for m in (sd1, sd2, xl))
    # SD 2.x / XL: linear proj_in / proj_out are adapted as Linear layers; SD 1.x: 1x1 convs.
    for model, kind in ((sd1, nn.Conv2d), (sd2, nn.Linear), (xl, nn.Linear)):
        projections = [layer for path, layer in adapted_layers(model.unet).values() if path.endswith(("proj_in",
                                                                                                       "proj_out"))]
        assert projections and all(type(layer) is kind for layer in projections)
    # SDXL conditioning = the pipeline's: penultimate states of both encoders + encoder 2's pooled text_embeds.
    cond = xl.encode(PROMPTS)
    embeds, _, pooled, _ = pipe_xl.encode_prompt(PROMPTS, do_classifier_free_guidance=False)
    assert cond.text.shape == (2, 16, 64) and torch.equal(cond.text, embeds) and torch.equal(cond.pooled, pooled)
    assert torch.equal(xl.encode_prompts(PROMPTS), cond.text)
    assert sd2.encode(PROMPTS).pooled is None and torch.equal(sd2.encode(PROMPTS).text,
                                                              pipe2.encode_prompt(PROMPTS, "cpu", 1, False)[0])


@pytest.mark.parametrize("family, sampler, rescale", [("sd1", "ddim", 0.0), ("sd2", "ddim", 0.0),
                                                      ("sdxl", "default", 0.0), ("sdxl", "default", 0.7)])
def test_denoise_equals_the_diffusers_pipeline(tiny_sd: dict, family: str, sampler: str, rescale: float) -> None:
    """2 steps from the same noise: our loop (SD: our DDIM with v -> eps; SDXL: the folder's Euler scheduler, pooled
    embeddings and time ids) gives the pipeline's latents."""
    pipe, model = tiny_sd[family].pipe, tiny_sd[family].model
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    kw = {"guidance_rescale": rescale} if rescale else {}
    ref = pipe(PROMPTS, negative_prompt=["", ""], latents=noise.clone(), height=16, width=16, num_inference_steps=2,
               guidance_scale=5.0, output_type="latent", **kw).images
    ours = denoise(model, noise, model.encode(PROMPTS), model.encode([""]), 5.0, steps=2, sampler=sampler,
                   guidance_rescale=rescale)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_step_equals_ddim_scheduler_step(prediction_type: str) -> None:
    """clip_sample on: ``use_clipped_model_output`` False (default, the official call) and True (the toy model's
    setting) each equal diffusers' DDIMScheduler.step(eta=0) with that flag."""
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=True,
                              clip_sample_range=1.0, set_alpha_to_one=False, prediction_type=prediction_type)
    scheduler.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x, out = torch.randn(2, 4, 8, 8, generator=g) * 3, torch.randn(2, 4, 8, 8, generator=g)  # x0 gets clipped
    results = []
    for flag in (False, True):
        ddim = DDIM(scheduler.alphas_cumprod, clip_sample=1.0, prediction_type=prediction_type,
                    use_clipped_model_output=flag)
        for t in scheduler.timesteps.tolist():
            ref = scheduler.step(out, t, x, eta=0.0, use_clipped_model_output=flag).prev_sample
            ours = ddim.step(x, out, t, t - 100)
            torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
        results.append(ours)
    assert not torch.allclose(results[0], results[1])  # the flag matters when x0 is clipped


def test_toy_folder_keeps_the_rederived_eps() -> None:
    toy = DiffusionModel.from_folder(REPO / "projects/spm/toy_model")
    assert toy.ddim.clip_sample == 1.0 and toy.ddim.use_clipped_model_output  # "_use_clipped_model_output": true


@pytest.mark.slow
def test_the_toy_model_draws_only_with_the_rederived_eps() -> None:
    """Why the key stays: the 36 "a <colour> <shape>" prompts, 2 images each (20 DDIM steps, CFG 5), judged by the
    toy classifier: shapes right with the re-derived eps (README: 0.950 on 720 images), near chance (1/6) with
    diffusers' default (0.260 on 720)."""
    toy = DiffusionModel.from_folder(REPO / "projects/spm/toy_model")
    judge = load_classifier(REPO / "projects/spm/toy_model/classifier.safetensors")
    prompts = [toy_caption(s, c) for s in TOY_SHAPES for c in TOY_COLORS for _ in range(2)]
    shapes = torch.arange(len(TOY_SHAPES)).repeat_interleave(2 * len(TOY_COLORS))
    accuracy = {}
    for flag in (True, False):
        toy.ddim.use_clipped_model_output = flag
        with torch.no_grad():
            shape_logits, _ = judge(sample(toy, prompts, seed=1234, steps=20, guidance=5.0))
        accuracy[flag] = (shape_logits.argmax(1) == shapes).float().mean().item()
    assert accuracy[True] >= 0.8 and accuracy[False] <= 0.45, accuracy


@pytest.mark.parametrize("family, anchoring", [("sd2", "official"), ("sdxl", "official"), ("sdxl", "paper")])
def test_training_step_on_sd2_and_sdxl(tiny_sd: dict, family: str, anchoring: str) -> None:
    """One iteration (roll-out, both UNet calls, backward) on a v-prediction SD 2.x and on SDXL; SDXL's roll-out
    uses CFG rescale 0.7 (official diffusion_xl), SD's none; official SDXL anchors carry pooled anchors."""
    module = build_module(tiny_sd[family].folder, anchoring, resolution=16, max_denoising_steps=4, batch_size=2)
    assert module.rollout.rescale_for(module.diffusion.is_xl) == (0.7 if family == "sdxl" else 0.0)
    random_ups(module.network, seed=3, scale=0.05)
    random.seed(0)
    torch.manual_seed(0)
    out = module.spm_losses()
    assert torch.isfinite(out["loss"]) and out["loss_anchor"] > 0 and out["loss_erase"] > 0
    out["loss"].backward()
    assert all(p.grad is not None for p in module.network.parameters() if p.ndim > 0)
    anchors = module.sample_anchors(0)
    assert (anchors.pooled is not None) == (family == "sdxl")
    if anchoring == "official" and family == "sdxl":
        uncond = module.embeddings().uncond
        assert torch.equal(anchors.pooled[0], uncond.pooled[0]) and torch.equal(anchors.text[2], uncond.text[0])


def test_official_sdxl_anchors_draw_text_and_pooled_separately() -> None:
    g = torch.Generator().manual_seed(0)
    target = Conditioning(torch.randn(1, 16, 64, generator=g), torch.randn(1, 32, generator=g) * 5)
    anchors = official_anchors(target, 4, batch_quirk=False, generator=g)
    for got, want in ((anchors.text, target.text), (anchors.pooled, target.pooled)):
        ratio = got.flatten(1).norm(dim=1) / want.norm()  # each at its own target's norm x U(0.8, 1.2)
        assert got.shape[1:] == want.shape[1:] and ((ratio >= 0.8) & (ratio <= 1.2)).all()


def test_anchor_pairing_ours_and_official() -> None:
    """B = 2 latents, the batch quirk's anchors [u, s3, u, s4]: ours pairs every anchor with every latent; the
    official loop's ``latents.repeat`` gives (x1, u), (x2, s3), (x1, u), (x2, s4)."""
    x = torch.tensor([1.0, 2.0]).view(2, 1, 1, 1)
    anchors = Conditioning(torch.tensor([0.0, 3.0, 0.0, 4.0]).view(4, 1, 1))  # u = 0, s3 = 3, s4 = 4

    def pairs(official: bool) -> list[tuple[int, int]]:
        xs, cs = anchor_batch(x, anchors, official)
        return [(int(a), int(c)) for a, c in zip(xs.flatten(), cs.text.flatten(), strict=True)]

    assert pairs(True) == [(1, 0), (2, 3), (1, 0), (2, 4)]
    assert pairs(False) == [(1, 0), (1, 3), (1, 0), (1, 4), (2, 0), (2, 3), (2, 0), (2, 4)]
    assert anchor_batch(x[:1], anchors, True)[0].equal(anchor_batch(x[:1], anchors, False)[0])  # B = 1: the same
    with pytest.raises(ValueError, match="3 anchor rows are not a multiple of batch_size 2"):
        anchor_batch(x, anchors[:3], True)


def test_resolution_buckets_follow_the_official_draw() -> None:
    """Multiples of 64 in [res/2, res) drawn as get_random_resolution_in_bucket draws them (same RNG calls)."""
    for res, expected in ((512, range(256, 512, 64)), (768, range(384, 768, 64)), (1024, range(512, 1024, 64))):
        torch.manual_seed(0)
        ours = [resolution_bucket(res, True, 32) for _ in range(200)]
        torch.manual_seed(0)
        official = [tuple(int(torch.randint(res // 2 // 64, res // 64, (1,))) * 64 for _ in range(2))
                    for _ in range(200)]
        assert ours == official and {h for h, _ in ours} == set(expected)
    assert resolution_bucket(768, False, 64) == (768, 768)


def test_dynamic_crops_follow_the_official_draw_and_reach_every_sdxl_call(tiny_sd: dict) -> None:
    """Official ``get_add_time_ids(dynamic_crops=True)``: original = int(H s), s in [1, 3), top-left uniform where
    the crop fits (same RNG calls); one draw per iteration, in the roll-out's and the losses' add_time_ids."""
    torch.manual_seed(0)
    ours = [dynamic_crop(448, 320) for _ in range(200)]
    torch.manual_seed(0)
    official = []
    for _ in range(200):
        scale = torch.rand(1).item() * 2 + 1
        size = (int(448 * scale), int(320 * scale))
        official.append((*size, torch.randint(0, size[0] - 448 + 1, (1,)).item(),
                         torch.randint(0, size[1] - 320 + 1, (1,)).item()))
    assert ours == official
    assert all(448 <= h < 3 * 448 and 0 <= top <= h - 448 and 0 <= left <= w - 320 for h, w, top, left in ours)
    module = build_module(tiny_sd["sdxl"].folder, "official", resolution=16, max_denoising_steps=4, dynamic_crops=True)
    seen = []
    hook = module.diffusion.unet.register_forward_pre_hook(
        lambda _, args, kwargs: seen.append(kwargs["added_cond_kwargs"]["time_ids"].clone()), with_kwargs=True)
    random.seed(0)
    torch.manual_seed(5)
    module.spm_losses()
    hook.remove()
    torch.manual_seed(5)
    expected = dynamic_crop(16, 16)
    assert expected[:2] != (16, 16) and len(seen) >= 3       # a crop drawn; roll-out + frozen + membrane calls
    assert all((ids == torch.tensor([*expected, 16, 16], dtype=ids.dtype)).all() for ids in seen)
    assert module.diffusion.crop_condition is None           # restored after the iteration
    with pytest.raises(ValueError, match="dynamic_crops is SDXL's size / crop conditioning.*not SDXL"):
        build_module(tiny_sd["sd1"].folder, dynamic_crops=True)


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_spms_compose_on_sd2_and_sdxl(tiny_sd: dict, family: str) -> None:
    """Two SPMs, per-sample gammas through the hooks == merged weights == two membranes at those gammas (Eq. 9)."""
    model = tiny_sd[family].model
    states = [random_state(model.unet, seed) for seed in (1, 2)]
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    cond = model.encode(PROMPTS)
    comp = SPMComposition(model.unet, states, [["red"], ["star"]])
    with torch.no_grad():
        with comp.applied(torch.tensor([[1.0, 0.5], [1.0, 0.5]])):  # uniform rows: merged into the weights
            assert not comp.hooked
            merged = model.predict(x, 500, cond)
        comp.merge_uniform = False
        with comp.applied(torch.tensor([1.0, 0.5])):
            hooked = model.predict(x, 500, cond)
        comp.remove()
        nets = [SPMNetwork(model.unet, multiplier=gamma) for gamma in (1.0, 0.5)]
        for net, state in zip(nets, states, strict=True):
            net.load_spm_state_dict({f"adapters.{k}": v for k, v in state.items()})
        separate = model.predict(x, 500, cond)
        for net in nets:
            net.remove()
        plain = model.predict(x, 500, cond)
    torch.testing.assert_close(hooked, merged, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(hooked, separate, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(hooked, plain, atol=1e-4)


def test_an_spm_of_another_family_names_both(tiny_sd: dict, tmp_path: Path) -> None:
    path = write_random_spm(tiny_sd["sd1"].model.unet, tmp_path / "snoopy_sd1.safetensors", ["Snoopy"], seed=0)
    for family, name in (("sdxl", "SDXL"), ("sd2", "SD v2.x")):
        unet = tiny_sd[family].model.unet
        for load in (SPMNetwork.from_file, lambda u, p: SPMComposition.from_files(u, [p])):
            with pytest.raises(ValueError) as err:
                load(unet, path)
            message = str(err.value)
            assert "\n" not in message and str(path) in message and "key 'lora_unet_" in message
            assert len(re.findall(r"\(\d+(?:, \d+)+\)", message)) >= 2, message  # both shapes
            assert f"an SD v1.x SPM cannot load into an {name} UNet" in message
    # Same family: an SDXL SPM loads into the SDXL UNet.
    xl_path = write_random_spm(tiny_sd["sdxl"].model.unet, tmp_path / "x.safetensors", ["x"], seed=0)
    SPMNetwork.from_file(tiny_sd["sdxl"].model.unet, xl_path).remove()


def test_ft_on_sdxl_uses_what_the_unet_sees(tiny_sd: dict) -> None:
    """SDXL s_f: flattened cosine of the concatenated penultimate states; a prompt equal to the concept gets 1."""
    xl = tiny_sd["sdxl"].model
    prompts = ["a red circle", "red", "a blue star"]
    gammas = facilitated_gammas(xl.text_encoder, xl.tokenizer, prompts, [["red"], ["blue star"]],
                                embed=xl.encode_prompts)
    cond = xl.encode(prompts)
    same = facilitated_gammas(xl.text_encoder, xl.tokenizer, prompts, [["red"], ["blue star"]],
                              prompt_embeds=cond.text, embed=xl.encode_prompts)
    assert gammas.shape == (3, 2) and torch.equal(gammas, same)
    assert gammas[1, 0] == pytest.approx(1.0) and gammas[0, 0] == 1.0 and gammas[2, 1] == 1.0  # token overlap
    s_f = facilitated_gammas(xl.text_encoder, xl.tokenizer, prompts, [["red"]], metric="clipcos",
                             embed=xl.encode_prompts)
    want = torch.cosine_similarity(cond.text.flatten(1), xl.encode_prompts(["red"]).flatten(1))
    torch.testing.assert_close(s_f[:, 0], want, rtol=1e-5, atol=1e-6)


def test_generate_cli_on_sdxl_with_an_spm_and_ft(tiny_sd: dict, tmp_path: Path) -> None:
    path = write_random_spm(tiny_sd["sdxl"].model.unet, tmp_path / "red.safetensors", ["red"], seed=0, scale=0.0)
    info = generate(["--base_model", str(tiny_sd["sdxl"].folder), "--spm", str(path), "--prompts", *PROMPTS,
                     "--steps", "2", "--width", "16", "--height", "16", "--logger", "none", "--out",
                     str(tmp_path / "out")])
    assert info["images"] == 2 and len(list((tmp_path / "out" / "images").glob("*.png"))) == 2


CONFIGS = ["sd21_object", "sd21_nudity", "sdxl_object", "sdxl_nudity"]


@pytest.mark.parametrize("name", CONFIGS)
def test_family_configs_parse_with_the_cli(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["python -m projects.spm"])  # the CLI reads args=, not pytest's argv
    monkeypatch.setenv("SD21_MODEL_DIR", "/models/sd21")
    monkeypatch.setenv("SDXL_MODEL_DIR", "/models/sdxl")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        ProjectCLI(SPMModule, SPMStepData, "spm",
                   args=["fit", "--config", str(REPO / f"projects/spm/configs/{name}.yaml"), "--print_config"])
    assert done.value.code in (0, None)
    model = yaml.safe_load(out.getvalue())["model"]
    family = name.split("_")[0]
    rollout = model["rollout"]
    assert model["base"]["path"] == {"sd21": "/models/sd21", "sdxl": "/models/sdxl"}[family]
    assert rollout["resolution"] == {"sd21": 768, "sdxl": 1024}[family] and rollout["dynamic_resolution"] is True
    assert model["anchoring"]["official_pairing"] is False and rollout["guidance_rescale"] is None
