"""The losses of one SPM iteration (docs/papers/spm.md §2.1, paper Eqs. 4-8), given x_t: the erasing loss and the
anchoring loss, from two UNet calls (the official loop makes five, §2.2 step 6). Called by ``SPMModule`` and by the
bench."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from projects.spm.anchoring import anchor_batch
from projects.spm.diffusion.conditioning import Conditioning, as_conditioning
from projects.spm.diffusion.model import DiffusionModel
from projects.spm.network import SPMNetwork


def erasing_target(eps_target: torch.Tensor, eps_surrogate: torch.Tensor, eta: float) -> torch.Tensor:
    """Paper Eq. 5: eps(c_sur) - eta * (eps(c_tar) - eps(c_sur)) (ESD/LECO negative guidance)."""
    return eps_surrogate - eta * (eps_target - eps_surrogate)


def spm_losses(diffusion: DiffusionModel, network: SPMNetwork, x: torch.Tensor, t: int,
               target: Conditioning | torch.Tensor, surrogate: Conditioning | torch.Tensor,
               anchors: Conditioning | torch.Tensor | None, eta: float, strength: float,
               official_pairing: bool = False) -> dict[str, torch.Tensor]:
    """``loss_erase`` (Eqs. 4-6), ``loss_anchor`` (Eq. 7, when there are ``anchors``) and ``loss`` = loss_erase +
    ``strength`` (lambda) * loss_anchor (Eq. 8), at latents ``x`` [B, ...] and timestep ``t``.

    Two UNet calls: the frozen model (membrane off, no grad) on [target, surrogate, anchors] and the membrane on
    [target, anchors]. ``target`` / ``surrogate``: batch-1 conditionings. Every anchor is predicted at every one of
    the B latents (``official_pairing``: anchor j at latent j mod B, :func:`~projects.spm.anchoring.anchor_batch`).

    The losses are on the UNet's raw output, as the official code (and LECO) computes them for every family:
    eps, or v for a v-prediction model (SD 2.x 768). At a fixed x_t, v = eps / sqrt(a_t) - sqrt((1 - a_t) / a_t)
    x_t is an affine function of eps with the same offset for every condition, so the Eq. 5 target (an affine
    combination of predictions with weights summing to 1) maps to the same target in v, and each squared error
    is the eps-space one scaled by 1 / a_t.
    """
    target = as_conditioning(target)
    b = x.shape[0]
    per_x = [target.expand(b)]
    if anchors is not None:
        x_anchor, anchor_c = anchor_batch(x, as_conditioning(anchors), official_pairing)
        per_x.append(anchor_c)
    frozen_x = torch.cat([x, x] + ([x_anchor] if anchors is not None else []))
    frozen_c = Conditioning.cat([per_x[0], as_conditioning(surrogate).expand(b)] + per_x[1:])
    with torch.no_grad(), network.applied(0.0):
        frozen = diffusion.predict(frozen_x, t, frozen_c).float()
    spm_x = torch.cat([x] + ([x_anchor] if anchors is not None else []))
    with network.applied(1.0):
        spm = diffusion.predict(spm_x, t, Conditioning.cat(per_x)).float()
    loss_erase = F.mse_loss(spm[:b], erasing_target(frozen[:b], frozen[b:2 * b], eta))
    out = {"loss_erase": loss_erase}
    if anchors is not None:
        out["loss_anchor"] = F.mse_loss(spm[b:], frozen[2 * b:])
        out["loss"] = loss_erase + strength * out["loss_anchor"]
    else:
        out["loss"] = loss_erase
    return out
