"""Bench: one SPM training iteration, ours vs a straightforward re-implementation of the official loop.

The official loop (``train_spm.py`` + ``train_util.predict_noise``) on the same tiny UNet, run on its own copy of
the module: the official ``SPMLayer`` (each adapted layer's forward patched to ``org_forward(x) + up(down(x)) *
multiplier * scale``, so the branch is computed at multiplier 0 too, docs/papers/spm.md §1.2), the DDIM roll-out
with it on, then five separate UNet calls that each run an [uncond; cond] batch (eps_pos, eps_neu and
eps_M(target): batch 2 each; anchors with and without the membrane: batch 8 each), predictions moved to the CPU for
the loss, stepped by torch's default AdamW (the official AdamW8bit needs CUDA). Ours is ``SPMModule.spm_losses``
(its losses: ``losses.py``) stepped by the module's own optimizer (fused AdamW). Both sides draw the same target,
k, x_T and anchors from the same seed, and give the same loss (checked when the row is built).
"""

from __future__ import annotations

import contextlib
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from projects.spm.anchoring import Anchoring
from projects.spm.composition import SPMComposition
from projects.spm.diffusion.conditioning import Conditioning, as_conditioning
from projects.spm.diffusion.configs import SD14_UNET_CONFIG, SDXL_UNET_CONFIG
from projects.spm.diffusion.ddim import ddim_timesteps
from projects.spm.diffusion.model import DiffusionModel
from projects.spm.diffusion.sampling import rollout
from projects.spm.losses import erasing_target
from projects.spm.module import BaseModel, Optimization, SPMModule
from projects.spm.network import adapted_layers
from projects.spm.rollout import Rollout
from projects.spm.toy.scenes import TOY_COLORS, TOY_SHAPES, toy_caption
from projects.spm.toy.toy_base import TOY_UNET_CONFIG, write_random_base
from projects.spm.transport import encode, facilitated_gammas, tokenize
from shared.bench import BenchCase, GpuRow, register, register_gpu_row


class OfficialMembrane:
    """The official ``SPMLayer`` on ``module``'s UNet, with ``module.network``'s adapters as its weights: the
    original forward of every adapted layer is replaced (monkey-patched, as the official code does) by
    ``org_forward(x) + up(down(x)) * multiplier * scale``; ``module.network``'s own hooks are detached for good."""

    def __init__(self, module: SPMModule) -> None:
        network, self.multiplier = module.network, 0.0
        network.remove()
        for name, (_, layer) in adapted_layers(module.diffusion.unet).items():
            layer.forward = self._patched(layer.forward, network.adapters[name])

    def _patched(self, org_forward, adapter):
        def forward(x: torch.Tensor) -> torch.Tensor:
            return org_forward(x) + adapter(x) * self.multiplier  # adapter() includes alpha / rank
        return forward

    @contextlib.contextmanager
    def applied(self, multiplier: float):  # official ``with network:`` sets 1 on entry, 0 on exit
        self.multiplier = multiplier
        try:
            yield
        finally:
            self.multiplier = 0.0


def official_predict(module: SPMModule, x: torch.Tensor, t: int, uncond: Conditioning | torch.Tensor,
                     cond: Conditioning | torch.Tensor) -> torch.Tensor:
    """``predict_noise`` with guidance 1: one [uncond; cond] UNet call, returns uncond + 1 * (cond - uncond)."""
    uncond, cond = as_conditioning(uncond), as_conditioning(cond)
    eps = module.diffusion.predict(torch.cat([x] * 2 * cond.batch), t,
                                   Conditioning.cat([uncond.expand(cond.batch), cond]))
    e_u, e_c = eps.chunk(2)
    return e_u + 1.0 * (e_c - e_u)


def official_losses_at(module: SPMModule, membrane, x: torch.Tensor, t: int, target: torch.Tensor,
                       anchors: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The official loss computation for the same inputs as :meth:`SPMModule.losses_at`."""
    e = module.embeddings()
    u = e.uncond
    with torch.no_grad():
        pos = official_predict(module, x, t, u, target)
        neu = official_predict(module, x, t, u, e.surrogate)
    with membrane.applied(1.0):
        tgt = official_predict(module, x, t, u, target)
    loss_erase = F.mse_loss(tgt.float().cpu(), erasing_target(pos.float().cpu(), neu.float().cpu(),
                                                                    module.hparams.eta))
    out = {"loss_erase": loss_erase, "loss": loss_erase}
    if anchors is not None:
        with membrane.applied(1.0):
            anc_spm = official_predict(module, x, t, u, anchors)
        with torch.no_grad():
            anc = official_predict(module, x, t, u, anchors)
        out["loss_anchor"] = F.mse_loss(anc_spm.float().cpu(), anc.float().cpu())
        out["loss"] = loss_erase + module.anchoring.strength * out["loss_anchor"]
    return out


def official_iteration(module: SPMModule, membrane: OfficialMembrane) -> dict[str, torch.Tensor]:
    """§2.2: target, k, x_T (drawn in the order :meth:`SPMModule.spm_losses` draws them), k DDIM steps with the
    membrane on (CFG 3), the official t, then :func:`official_losses_at`."""
    r, d, e = module.rollout, module.diffusion, module.embeddings()
    ti = random.randrange(len(module.targets))
    target = e.targets[ti:ti + 1]
    k = random.randint(1, r.max_denoising_steps - 1)
    x = torch.randn(d.latent_shape(1, r.resolution, r.resolution), device=module.device)
    n_train = d.ddim.num_train_timesteps
    steps = ddim_timesteps(r.max_denoising_steps, n_train)
    with torch.no_grad(), membrane.applied(1.0):
        x = rollout(d, x, steps[:k], e.uncond, target, r.guidance)
    t = n_train - 1 - int(k * n_train / r.max_denoising_steps)
    return official_losses_at(module, membrane, x, t, target, module.sample_anchors(ti))


def build_module(base: Path, anchoring: str | Anchoring = "official", resolution: int = 16, **rollout) -> SPMModule:
    """An :class:`SPMModule` on the model folder ``base``, set up, with ``anchoring`` (a mode or the group), a fixed
    ``resolution`` and ``rollout`` knobs (:class:`~projects.spm.rollout.Rollout`), 1 warm-up step of 10."""
    torch.manual_seed(0)  # the same membrane init for every module built from ``base``
    anchoring = anchoring if isinstance(anchoring, Anchoring) else Anchoring(mode=anchoring)
    module = SPMModule(BaseModel(str(base)), anchoring=anchoring,
                       rollout=Rollout(resolution=resolution, dynamic_resolution=False, **rollout),
                       optim=Optimization(warmup_steps=1, iterations=10))
    module.setup("fit")
    return module


def random_ups(*networks, seed: int = 1, scale: float = 1e-2) -> None:
    """Give the networks the same random non-zero ups (at init they are zero, which would hide a wrong branch)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, adapter in networks[0].adapters.items():
            up = torch.randn(adapter.lora_up.weight.shape, generator=gen) * scale
            for network in networks:
                network.adapters[name].lora_up.weight.copy_(up)


def _train_step(module: SPMModule, opt: torch.optim.Optimizer, losses_fn, seed: int) -> float:
    random.seed(seed)
    torch.manual_seed(seed)
    loss = losses_fn(module)["loss"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def _module_pair(unet_config: dict | None = None, resolution: int = 16, device: str = "cpu",
                 **module_kw) -> tuple[SPMModule, SPMModule, OfficialMembrane]:
    """(ours, official copy, its official membrane): two modules from one random base (the tiny UNet unless
    ``unet_config``; pixel space, so ``resolution`` is the UNet's input size), same membrane, on ``device``."""
    base = write_random_base(Path(tempfile.mkdtemp(prefix="spm_bench_")), unet_config or TOY_UNET_CONFIG)
    ours, official = (build_module(base, "official", resolution, **module_kw).to(device) for _ in range(2))
    shutil.rmtree(base)  # loaded: the SD-sized folder is 3.4 GB
    random_ups(ours.network, official.network)
    return ours, official, OfficialMembrane(official)


def _optimizers(ours: SPMModule, official: SPMModule) -> list[torch.optim.Optimizer]:
    """Ours: the module's own optimizer (fused AdamW); official: torch AdamW with its defaults."""
    return [ours.configure_optimizers()["optimizer"], torch.optim.AdamW(official.network.parameters(), 1e-4)]


def _check_same_loss(ours_loss: float, official_loss: float, what: str, rtol: float = 1e-4) -> None:
    if abs(ours_loss - official_loss) > rtol * max(1.0, abs(official_loss)):
        raise AssertionError(f"{what}: ours gives loss {ours_loss:.6g}, the official-style loop {official_loss:.6g}")


def iteration_case(unet_config: dict | None = None, resolution: int = 16, device: str = "cpu", rtol: float = 1e-4,
                   **module_kw) -> BenchCase:
    """One training iteration (roll-out, losses, backward, AdamW step) vs the official-style loop; both draw the
    same target, k, x_T and anchors per call, and their losses agree to ``rtol`` (checked here)."""
    module, official_module, membrane = _module_pair(unet_config, resolution, device, **module_kw)
    opts = _optimizers(module, official_module)
    with torch.no_grad():
        random.seed(0)
        torch.manual_seed(0)
        ours_loss = float(module.spm_losses()["loss"])
        random.seed(0)
        torch.manual_seed(0)
        _check_same_loss(ours_loss, float(official_iteration(official_module, membrane)["loss"]), "iteration",
                         rtol)
    counters = {"ours": 0, "official": 0}  # the n-th call of each uses seed n: same target, k, x_T and anchors

    def ours() -> None:
        counters["ours"] += 1
        _train_step(module, opts[0], SPMModule.spm_losses, counters["ours"])

    def official() -> None:
        counters["official"] += 1
        _train_step(official_module, opts[1], lambda m: official_iteration(m, membrane), counters["official"])

    unet = "toy 16x16 (32, 64, 64), 7 Transformer2DModels" if unet_config is None else "SD v1.4 config, random init"
    return BenchCase(method=ours, baseline=official,
                     details={"unet": unet, "input": f"{resolution}x{resolution}", "anchoring": "official",
                              "anchors": 4, "max_denoising_steps": module.rollout.max_denoising_steps})


@register("spm: training iteration, ours vs official-style loop (tiny UNet)", target=0.6, kind="overhead",
          repeats=20, warmup=2, grad=True)
def _iteration_row() -> BenchCase:
    return iteration_case()


@register("spm: predictions + loss given x_t, ours vs official-style (tiny UNet)", target=0.6, kind="overhead",
          repeats=20, warmup=2, grad=True)
def _loss_row() -> BenchCase:
    """The part of the iteration after the DDIM roll-out (given x_t)."""
    module, official_module, membrane = _module_pair()
    x = torch.randn(1, 3, 16, 16)
    anchors = module.sample_anchors(0)
    target = module.embeddings().targets[:1]
    opts = _optimizers(module, official_module)
    with torch.no_grad():
        _check_same_loss(float(module.losses_at(x, 500, target, anchors)["loss"]),
                         float(official_losses_at(official_module, membrane, x, 500, target, anchors)["loss"]),
                         "predictions + loss")

    def ours() -> None:
        _train_step(module, opts[0], lambda m: m.losses_at(x, 500, target, anchors), 0)

    def official() -> None:
        _train_step(official_module, opts[1], lambda m: official_losses_at(m, membrane, x, 500, target, anchors), 0)

    return BenchCase(method=ours, baseline=official, details={"unet": "toy 16x16", "anchoring": "official"})


# ----------------------------------------------------------------------------------------------------------
# Many SPMs at once with per-sample Facilitated Transport (composition.py, transport.py)
# ----------------------------------------------------------------------------------------------------------
_CACHE: dict = {}  # built once per process: the SD v1.4-sized random UNet (~3.4 GB fp32), the toy text model


def _sdxl_small_config() -> dict:
    """SDXL's UNet layout (no attention at the top level, 1/2/4 transformer layers per attention level, linear
    proj_in, 2048-dim context, "text_time" pooled + time-id conditioning) at 2/5 of its widths: 128/256/512
    channels with 64-dim heads, 4 instead of 10 layers at the deepest level; for the CPU bench."""
    return {**SDXL_UNET_CONFIG, "block_out_channels": (128, 256, 512), "attention_head_dim": (2, 4, 8),
            "transformer_layers_per_block": (1, 2, 4), "sample_size": 32}


SDXL_SMALL = "SDXL-shaped UNet, 128/256/512 ch, 1/2/4 transformer layers, 32x32, CPU"


def _toy_text():
    """The random toy text encoder + tokenizer (write_random_base) and 20 toy concept strings."""
    if "text" not in _CACHE:
        model = DiffusionModel.from_folder(write_random_base(Path(tempfile.mkdtemp(prefix="spm_bench_")),
                                                             TOY_UNET_CONFIG))
        concepts = [[f"{c} {s}"] for c in TOY_COLORS for s in TOY_SHAPES][:20]
        _CACHE["text"] = (model.text_encoder, model.tokenizer, concepts)
    return _CACHE["text"]


def _unet(which: str, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """(unet, twin): a random UNet and a second module object sharing its weight tensors (no extra memory), so
    the SPM hooks live on the twin and the baseline runs a UNet with no hooks at all."""
    key = f"unet_{which}_{device}_{dtype}"
    if key not in _CACHE:
        torch.manual_seed(0)
        config = {"sd14": SD14_UNET_CONFIG, "sdxl": SDXL_UNET_CONFIG,
                  "sdxl_small": _sdxl_small_config()}.get(which, TOY_UNET_CONFIG)
        unet = UNet2DConditionModel(**config).eval().requires_grad_(False).to(device, dtype)
        with torch.device("meta"):
            twin = UNet2DConditionModel(**config)
        twin.load_state_dict(unet.state_dict(), assign=True)
        _CACHE[key] = unet, twin.eval().requires_grad_(False)
    return _CACHE[key]


def _random_states(unet, num: int) -> list[dict[str, torch.Tensor]]:
    """``num`` rank-1 SPMs with random non-zero downs and ups on ``unet``'s adapted layers."""
    gen = torch.Generator().manual_seed(0)
    states = []
    for _ in range(num):
        state = {}
        for key, (_, layer) in adapted_layers(unet).items():
            fan_in = layer.weight[0].numel()
            state[f"{key}.lora_down.weight"] = torch.randn(1, *layer.weight.shape[1:], generator=gen) / fan_in ** 0.5
            up_shape = (layer.weight.shape[0], 1, 1, 1) if layer.weight.ndim == 4 else (layer.weight.shape[0], 1)
            state[f"{key}.lora_up.weight"] = torch.randn(up_shape, generator=gen) * 1e-3
            state[f"{key}.alpha"] = torch.tensor(1.0)
        states.append(state)
    return states


def step_case(which: str, num_spms: int, prompts: int = 1, merge: bool = True, device: str = "cpu",
              dtype: torch.dtype = torch.float32) -> BenchCase:
    """One CFG denoising step (UNet batch 2 * prompts: the images and their uncond rows) with C SPMs and each
    prompt's FT gammas (on a weight-sharing twin of the UNet) vs the same step on the bare UNet (no hooks).
    With one prompt the two CFG rows share gamma: ``applied()`` merges it into the weights on entry (timed once,
    in the details) unless ``merge`` is off (hooks, gammas folded into the ups); with several prompts the
    per-sample hook path runs. ``dtype``: the UNet's (and so the SPM stacks') weights, as a pipeline loads them."""
    unet, twin = _unet(which, device, dtype)
    text_encoder, tokenizer, concepts = _toy_text()
    texts = ["a red circle next to a blue star", "a green ring", "a white square", "a purple cross"][:prompts]
    gammas = facilitated_gammas(text_encoder, tokenizer, texts, concepts[:num_spms]).to(device)
    previous = _CACHE.pop(f"comp_{which}_{device}_{dtype}", None)  # one composition on the twin at a time
    if previous is not None:
        previous[1].close()
        previous[0].remove()
    comp = SPMComposition(twin, _random_states(unet, num_spms), concepts[:num_spms])
    comp.merge_uniform = merge
    # FT gammas are constant over the denoising steps, so a generation enters applied() once per batch of prompts
    # (that merges or prepares the per-layer tensors) and then runs every step inside it: time one such step.
    scope = contextlib.ExitStack()
    start = time.perf_counter()
    scope.enter_context(comp.applied(gammas))  # [B, C] -> repeated over the [uncond; cond] halves
    enter_ms = (time.perf_counter() - start) * 1e3
    _CACHE[f"comp_{which}_{device}_{dtype}"] = comp, scope
    cfg = unet.config
    gen = torch.Generator().manual_seed(0)
    n = 2 * prompts
    x = torch.randn(n, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=gen).to(device, dtype)
    ctx = torch.randn(n, tokenizer.model_max_length if which == "toy" else 77, cfg.cross_attention_dim,
                      generator=gen).to(device, dtype)
    t = torch.full((n,), 500, device=device)
    added = {}
    if cfg.addition_embed_type == "text_time":  # SDXL: pooled text embedding and (H, W, 0, 0, H, W) time ids
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        size = 8 * cfg.sample_size
        added = {"added_cond_kwargs": {
            "text_embeds": torch.randn(n, pooled, generator=gen).to(device, dtype),
            "time_ids": torch.tensor([[size, size, 0, 0, size, size]], device=device, dtype=dtype).expand(n, -1)}}

    def with_spms() -> None:
        twin(x, t, encoder_hidden_states=ctx, **added)

    def bare() -> None:
        unet(x, t, encoder_hidden_states=ctx, **added)

    names = {"sd14": "SD v1.4 config, random init, 64x64 latents", "sdxl_small": SDXL_SMALL,
             "sdxl": "SDXL base 1.0 config, random init, 128x128 latents"}
    return BenchCase(method=with_spms, baseline=bare, details={
        "unet": names.get(which, "toy 16x16 (32, 64, 64)"),
        "spms": num_spms, "adapted_layers": len(comp.stacks), "unet_batch": n, "mode": "linear",
        "path": "hooks" if comp.hooked else "merged", "applied_entry_ms (once per generation)": round(enter_ms, 2),
        "gammas": [[round(g, 3) for g in row] for row in gammas.tolist()]})


# The SD-size step takes ~10 s on a CPU: few repeats, one warm-up pair (the first call pays for allocations).
for _which, _label, _repeats, _warmup in (("toy", "toy UNet 16x16", 30, 3),
                                          ("sd14", "SD v1.4-sized UNet, 64x64, CPU", 5, 1)):
    for _num in (1, 5, 20):
        register(f"spm: CFG step with {_num} SPMs, 1 prompt's FT gammas (merged on entry) / no SPM ({_label})",
                 target=1.05, kind="overhead", repeats=_repeats, warmup=_warmup)(
            lambda w=_which, n=_num: step_case(w, n))
    register(f"spm: CFG step with 20 SPMs, 1 prompt's FT gammas through the hooks / no SPM ({_label})", target=1.05,
             kind="overhead", repeats=_repeats, warmup=_warmup)(lambda w=_which: step_case(w, 20, merge=False))
register("spm: CFG step with 20 SPMs, 4 prompts with different FT gammas / no SPM (toy UNet 16x16)", target=1.05,
         kind="overhead", repeats=30)(lambda: step_case("toy", 20, prompts=4))
for _num in (1, 20):
    register(f"spm: CFG step with {_num} SPMs, 1 prompt's FT gammas (merged on entry) / no SPM ({SDXL_SMALL})",
             target=1.05, kind="overhead", repeats=5, warmup=1)(lambda n=_num: step_case("sdxl_small", n))
register(f"spm: CFG step with 20 SPMs, 1 prompt's FT gammas through the hooks / no SPM ({SDXL_SMALL})", target=1.05,
         kind="overhead", repeats=5, warmup=1)(lambda: step_case("sdxl_small", 20, merge=False))


def official_gammas_loop(text_encoder, tokenizer, prompts: list[str], concept_embeds: torch.Tensor,
                         concept_ids: torch.Tensor) -> torch.Tensor:
    """The official ``calculate_matching_score`` one prompt at a time (concept embeddings encoded once, at load)."""
    special = set(tokenizer.all_special_ids)
    rows = []
    for prompt in prompts:
        ids = tokenize(tokenizer, [prompt])
        embeds = text_encoder(ids)[0]
        clipcos = torch.cosine_similarity(embeds.flatten(1, 2), concept_embeds.flatten(1, 2), dim=-1)
        prompt_set = set(ids[0].tolist()) - special
        uni = []
        for c in concept_ids:
            c_set = set(c.tolist()) - special
            uni.append(len(prompt_set & c_set) / len(c_set))
        rows.append(torch.stack([clipcos, torch.tensor(uni)]).amax(0))
    return torch.stack(rows)


@register("spm: FT gammas, 16 prompts x 20 SPMs, batched vs official per-prompt loop (toy text encoder)",
          target=2.0, kind="speedup", repeats=15, warmup=3)
def _gamma_row() -> BenchCase:
    text_encoder, tokenizer, concepts = _toy_text()
    shapes, colors = ["circle", "star", "ring", "cross"] * 4, ["red", "blue", "white", "green"] * 2 + ["yellow"] * 8
    prompts = [toy_caption(s, c) for s, c in zip(shapes, colors, strict=True)]
    flat = [s for c in concepts for s in c]
    concept_ids = tokenize(tokenizer, flat)
    concept_embeds = encode(text_encoder, concept_ids)
    ours = facilitated_gammas(text_encoder, tokenizer, prompts, concepts)
    ref = official_gammas_loop(text_encoder, tokenizer, prompts, concept_embeds, concept_ids)
    if not torch.allclose(ours, ref, atol=1e-5):
        raise AssertionError(f"batched FT gammas differ from the per-prompt loop by {(ours - ref).abs().max():.2e}")
    return BenchCase(method=lambda: facilitated_gammas(text_encoder, tokenizer, prompts, concepts),
                     baseline=lambda: official_gammas_loop(text_encoder, tokenizer, prompts, concept_embeds,
                                                           concept_ids),
                     details={"prompts": len(prompts), "spms": len(concepts), "strings": len(flat),
                              "note": "ours re-encodes the 20 concept strings on every call; the loop encodes them "
                                      "once (at load) and each prompt separately"})


# ----------------------------------------------------------------------------------------------------------
# make bench-gpu: an SD v1.4-shaped training iteration and CFG steps with 20 SPMs + FT (SDXL-shaped last)
# ----------------------------------------------------------------------------------------------------------
def gpu_iteration(device: str, tiny: bool) -> tuple[BenchCase, int, int]:
    case = (iteration_case(device=device, max_denoising_steps=4) if tiny
            else iteration_case(SD14_UNET_CONFIG, 64, device, rtol=1e-3))
    return case, 1, 1


def gpu_generation(prompts: int, dtype: torch.dtype = torch.float32, unet: str = "sd14"):
    def build(device: str, tiny: bool) -> tuple[BenchCase, int, int]:
        case = step_case("toy" if tiny else unet, 2 if tiny else 20, prompts, device=device, dtype=dtype)
        return case, prompts, prompts
    return build


register_gpu_row(GpuRow(
    "spm: training iteration, ours / official-style loop",
    "configs/object.yaml: SD v1.4-shaped UNet (64x64 latents = 512 px), batch 1, k ~ U{1..29} DDIM steps of 30 "
    "(CFG 3) then the losses, 4 anchors (official), AdamW", gpu_iteration, unit="it", repeats=6, warmup=2))
register_gpu_row(GpuRow(
    "spm: CFG step, 20 SPMs + FT (1 prompt, merged) / no SPM",
    "SD v1.4-shaped UNet, 64x64 latents, UNet batch 2 ([uncond; cond]), 20 SPMs with the prompt's FT gammas",
    gpu_generation(1), unit="img-step", grad=False, build_bf16=gpu_generation(1, torch.bfloat16)))
register_gpu_row(GpuRow(
    "spm: CFG step, 20 SPMs + FT (4 prompts, per-sample) / no SPM",
    "SD v1.4-shaped UNet, 64x64 latents, UNet batch 8, 20 SPMs, per-prompt FT gammas through the hooks",
    gpu_generation(4), unit="img-step", grad=False, build_bf16=gpu_generation(4, torch.bfloat16)))
# Last: one SDXL-sized UNet (2.6B parameters, random) built once; its bf16 pass is the fp32 case under autocast.
register_gpu_row(GpuRow(
    "spm: CFG step, 20 SPMs + FT on SDXL (1 prompt, merged) / no SPM",
    "SDXL base 1.0-shaped UNet, 128x128 latents (1024 px), UNet batch 2, pooled + time-id conditioning, 20 SPMs "
    "(722 sites each) with the prompt's FT gammas", gpu_generation(1, unet="sdxl"), unit="img-step", grad=False,
    repeats=6, warmup=2))
