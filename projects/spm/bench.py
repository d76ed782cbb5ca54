"""Bench: one SPM training iteration, ours vs a straightforward re-implementation of the official loop.

The official loop (``train_spm.py`` + ``train_util.predict_noise``) on the same tiny UNet: the DDIM roll-out with
the membrane hooks on, then five separate UNet calls that each run an [uncond; cond] batch (eps_pos, eps_neu and
eps_M(target): batch 2 each; anchors with and without the membrane: batch 8 each), predictions moved to the CPU
for the loss. Both sides draw the same k, x_T and anchors from the same seed.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from projects.spm.module import SPMModule, erasing_target
from shared.bench import BenchCase, register


def official_predict(module: SPMModule, x: torch.Tensor, t: int, uncond: torch.Tensor,
                     cond: torch.Tensor) -> torch.Tensor:
    """``predict_noise`` with guidance 1: one [uncond; cond] UNet call, returns uncond + 1 * (cond - uncond)."""
    eps = module.diffusion.predict(torch.cat([x] * 2 * cond.shape[0]), t, torch.cat([uncond.expand_as(cond), cond]))
    e_u, e_c = eps.chunk(2)
    return e_u + 1.0 * (e_c - e_u)


def official_losses_at(module: SPMModule, x: torch.Tensor, t: int, target: torch.Tensor,
                       anchors: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The official loss computation for the same inputs as :meth:`SPMModule.losses_at`."""
    cache, net, hp = module._embeddings(), module.network, module.hparams
    u = cache["uncond"]
    with torch.no_grad(), net.applied(0.0):
        pos = official_predict(module, x, t, u, target)
        neu = official_predict(module, x, t, u, cache["surrogate"])
    with net.applied(1.0):
        tgt = official_predict(module, x, t, u, target)
    loss_erase = F.mse_loss(tgt.float().cpu(), erasing_target(pos.float().cpu(), neu.float().cpu(), hp.eta))
    out = {"loss_erase": loss_erase, "loss": loss_erase}
    if anchors is not None:
        with net.applied(1.0):
            anc_spm = official_predict(module, x, t, u.expand_as(anchors), anchors)
        with torch.no_grad(), net.applied(0.0):
            anc = official_predict(module, x, t, u.expand_as(anchors), anchors)
        out["loss_anchor"] = F.mse_loss(anc_spm.float().cpu(), anc.float().cpu())
        out["loss"] = loss_erase + hp.anchor_strength * out["loss_anchor"]
    return out


def official_iteration(module: SPMModule) -> dict[str, torch.Tensor]:
    """x_t by the roll-out with hooks (not merged weights), then :func:`official_losses_at`."""
    cache = module._embeddings()
    merged = module.hparams.merged_rollout
    module.hparams.merged_rollout = False
    try:
        x, t, _ = module.make_xt(cache["targets"][:1])
    finally:
        module.hparams.merged_rollout = merged
    return official_losses_at(module, x, t, cache["targets"][:1], module.sample_anchors(0))


def build_module(base: Path, anchoring: str = "official", **kw) -> SPMModule:
    module = SPMModule(base_model=str(base), anchoring=anchoring, resolution=16, dynamic_resolution=False,
                       lr_warmup_steps=1, iterations=10, **kw)
    module.setup("fit")
    return module


def _train_step(module: SPMModule, opt: torch.optim.Optimizer, losses_fn, seed: int) -> float:
    random.seed(seed)
    torch.manual_seed(seed)
    loss = losses_fn(module)["loss"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss)


@register("spm: training iteration, ours vs official-style loop (tiny UNet)", target=0.6, kind="overhead",
          repeats=20, warmup=2, grad=True)
def _iteration_row() -> BenchCase:
    from projects.spm.model import TOY_UNET_CONFIG
    from projects.spm.toy_base import write_random_base

    base = write_random_base(Path(tempfile.mkdtemp(prefix="spm_bench_")), TOY_UNET_CONFIG)
    module = build_module(base, "official")
    module._embeddings()
    opt = torch.optim.AdamW(module.network.parameters(), 1e-4)
    counters = {"ours": 0, "official": 0}  # the n-th call of each uses seed n: same k, x_T and anchors

    def ours() -> None:
        counters["ours"] += 1
        _train_step(module, opt, SPMModule.spm_losses, counters["ours"])

    def official() -> None:
        counters["official"] += 1
        _train_step(module, opt, official_iteration, counters["official"])

    return BenchCase(method=ours, baseline=official,
                     details={"unet": "toy 16x16 (32, 64, 64), 7 Transformer2DModels", "anchoring": "official",
                              "anchors": 4, "max_denoising_steps": 30})


@register("spm: predictions + loss given x_t, ours vs official-style (tiny UNet)", target=0.6, kind="overhead",
          repeats=20, warmup=2, grad=True)
def _loss_row() -> BenchCase:
    """The part of the iteration the two loops do differently (the shared DDIM roll-out left out)."""
    from projects.spm.model import TOY_UNET_CONFIG
    from projects.spm.toy_base import write_random_base

    base = write_random_base(Path(tempfile.mkdtemp(prefix="spm_bench_")), TOY_UNET_CONFIG)
    module = build_module(base, "official")
    cache = module._embeddings()
    x = torch.randn(1, 3, 16, 16)
    anchors = module.sample_anchors(0)
    opt = torch.optim.AdamW(module.network.parameters(), 1e-4)
    target = cache["targets"][:1]

    def ours() -> None:
        _train_step(module, opt, lambda m: m.losses_at(x, 500, target, anchors), 0)

    def official() -> None:
        _train_step(module, opt, lambda m: official_losses_at(m, x, 500, target, anchors), 0)

    return BenchCase(method=ours, baseline=official, details={"unet": "toy 16x16", "anchoring": "official"})
