"""SPM training (Latent Anchoring) as a LightningModule: roll-out, losses, optimisation, saving.

One iteration (docs/papers/spm.md §2.2, official ``train_spm.py``), with the paper's equations:
1. k ~ U{1..max_denoising_steps-1}; roll out k DDIM steps (of a 30-step schedule) from noise with the membrane
   on and CFG 3, conditioned on the target: x_t. No grad (``rollout.py``).
2. t = 999 - floor(k * 1000 / 30) (``timestep: official``, LECO's level) or the rolled-out level (``exact``).
3. Frozen model (membrane off), ONE no-grad batched UNet call: eps(x_t, c_tar), eps(x_t, c_sur), eps(x_t, anchors).
4. Membrane on, ONE UNet call with grad: eps_M(x_t, c_tar), eps_M(x_t, anchors).
5. Eq. 4-6: L_era = ||eps_M(c_tar) - [eps(c_sur) - eta (eps(c_tar) - eps(c_sur))]||^2;
   Eq. 7: L_anc = ||eps_M(c) - eps(c)||^2 over anchors; L = L_era + lambda L_anc (``losses.py``). All on the
   device, fp32. The official loop makes 5 UNet calls of batch 2/2/2/8/8 and moves predictions to the CPU.

All three families (SD v1.x, v2.x, SDXL; :mod:`projects.spm.diffusion`) run the same code: embeddings are
:class:`~projects.spm.diffusion.conditioning.Conditioning` (SDXL: + pooled), the losses are on the UNet's raw
output (eps, or v for a v-prediction model, as official / LECO), and SDXL's roll-out uses CFG rescale 0.7.

Evaluation is not the module's: validation runs the callbacks the config names (``toy.judge.ToyJudge`` scores the
toy world, ``samples.SampleGrid`` logs images), which generate through :meth:`SPMModule.generate`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers.optimization import get_cosine_with_hard_restarts_schedule_with_warmup
from lightning.pytorch import LightningModule

from projects.spm.anchoring import Anchoring, ConceptPool
from projects.spm.diffusion.conditioning import Conditioning, as_conditioning
from projects.spm.diffusion.ddim import ddim_timesteps
from projects.spm.diffusion.model import DiffusionModel
from projects.spm.diffusion.sampling import sample
from projects.spm.losses import spm_losses
from projects.spm.network import Membrane, SPMNetwork
from projects.spm.rollout import Rollout, dynamic_crop, resolution_bucket, roll_out
from projects.spm.toy.toy_base import ensure_toy_base
from shared.hparams import group, pin_cpu_threads, save_hparams

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class BaseModel:
    """The frozen text-to-image model: ``path``, a diffusers folder or a single-file SD 1.x / 2.x / XL checkpoint
    (relative paths from the repository root); ``config``, a single file's diffusers folder of the same family (its
    configs and tokenizers); ``build_toy``: train the toy base model into ``path`` first if it is not there."""

    path: str = "projects/spm/toy_model"
    config: str | None = None
    build_toy: bool = False

    def folder(self) -> Path:
        return _from_repo(self.path)


@dataclass(frozen=True)
class Optimization:
    """The official recipe (§2.4): AdamW8bit (``adamw8bit``; torch's fused AdamW when bitsandbytes is missing, and
    ``adamw``), lr 1e-4, cosine with hard restarts (``warmup_steps`` 500, ``cycles`` 3). The schedule spans the
    steps the Trainer will run; ``iterations`` only without a Trainer (the bench, tests)."""

    name: Literal["adamw", "adamw8bit"] = "adamw"
    lr: float = 1e-4
    warmup_steps: int = 500
    cycles: int = 3
    iterations: int = 3000

    def __post_init__(self) -> None:
        if self.name not in ("adamw", "adamw8bit"):
            raise ValueError(f"model.optim.name must be adamw or adamw8bit; got {self.name!r}")

    def build(self, params, **kwargs) -> torch.optim.Optimizer:
        """The optimizer over ``params``; ``kwargs`` go to torch's AdamW (default: one fused kernel)."""
        if self.name == "adamw8bit":
            try:
                import bitsandbytes as bnb  # optional (CUDA only); not installed here

                return bnb.optim.AdamW8bit(params, lr=self.lr)
            except ImportError:
                logger.warning("optimizer adamw8bit: bitsandbytes is not installed; using torch AdamW")
        return torch.optim.AdamW(params, lr=self.lr, **{"fused": True, **kwargs})


@dataclass(frozen=True)
class Embeddings:
    """The conditionings an iteration needs, encoded once: the targets [T], the surrogate and "" [1], and the paper
    mode's concept pool."""

    targets: Conditioning
    surrogate: Conditioning
    uncond: Conditioning
    pool: ConceptPool | None


def _from_repo(path: str) -> Path:
    return Path(path) if Path(path).is_absolute() else REPO / path


class SPMModule(LightningModule):
    """Trains one SPM (a rank-``membrane.rank`` membrane) that erases ``target`` from the frozen ``base`` model.

    ``target``: one concept string or several (one drawn per iteration); ``surrogate``: c_sur of Eq. 5 (""; the
    concept "reconsolidation" of §2.4 sets another); ``eta``: Eq. 5's eta. ``anchoring`` / ``rollout`` /
    ``optim``: the groups above. Writes ``<spm_name>_<N>steps.safetensors`` every ``save_every`` steps (0: never)
    and ``<spm_name>_last.safetensors`` in the run folder; checkpoints hold the membrane only. ``cpu_threads``: torch's
    intra-op threads on a CPU run (None: torch's default; not a paper knob).
    """

    monitor = "val/target_rate"
    monitor_mode = "min"
    headline_metric = "val/target_rate"

    # The groups' defaults are frozen dataclasses, immutable (ruff's B008 only knows those defined in this file).
    def __init__(self, base: BaseModel = BaseModel(), target: str | list[str] = "circle", surrogate: str = "",
                 eta: float = 1.0, membrane: Membrane = Membrane(), anchoring: Anchoring = Anchoring(),  # noqa: B008
                 rollout: Rollout = Rollout(), optim: Optimization = Optimization(), spm_name: str = "spm",  # noqa: B008
                 save_every: int = 500, cpu_threads: int | None = None) -> None:
        super().__init__()
        save_hparams(self, injected=())
        self.base, self.membrane = group(BaseModel, base), group(Membrane, membrane)
        self.anchoring, self.rollout = group(Anchoring, anchoring), group(Rollout, rollout)
        self.optim = group(Optimization, optim)
        self.targets = [target] if isinstance(target, str) else list(target)
        if not self.targets or not all(self.targets):
            raise ValueError(f"model.target must name at least one non-empty concept; got {target!r}")
        self.strict_loading = False  # checkpoints hold the membrane only
        self.diffusion: DiffusionModel | None = None
        self.network: SPMNetwork | None = None
        self._embeddings: Embeddings | None = None

    # ------------------------------------------------------------------ building
    def prepare_data(self) -> None:
        if self.base.build_toy:
            ensure_toy_base(self.base.folder())

    def setup(self, stage: str) -> None:
        pin_cpu_threads(self, self.hparams.cpu_threads)      # the toy config pins 1 (shared.hparams)
        if self.diffusion is not None:
            return
        config = self.base.config
        self.diffusion = DiffusionModel.from_folder(self.base.folder(),
                                                    base_config=_from_repo(config) if config else None)
        if self.rollout.dynamic_crops and not self.diffusion.is_xl:
            raise ValueError(f"model.rollout.dynamic_crops is SDXL's size / crop conditioning (add_time_ids); the "
                             f"base model {self.base.path} is not SDXL: set model.rollout.dynamic_crops false")
        self.network = SPMNetwork(self.diffusion.unet, rank=self.membrane.rank, alpha=self.membrane.alpha)

    def embeddings(self) -> Embeddings:
        """Target / surrogate / "" conditionings and the anchor pool, computed once on the device."""
        if self._embeddings is None:
            d = self.diffusion
            targets = d.encode(self.targets)
            surrogate, uncond = d.encode([self.hparams.surrogate]), d.encode([""])
            self._embeddings = Embeddings(targets, surrogate, uncond, self.anchoring.pool(d.tokenizer, d.encode,
                                                                                          targets))
        return self._embeddings

    # ------------------------------------------------------------------ one iteration
    def on_fit_start(self) -> None:
        if self.trainer.world_size > 1:  # seed_everything gives every rank the same stream: decorrelate k, x_T, anchors
            seed = torch.initial_seed() + 7919 * self.global_rank
            torch.manual_seed(seed)
            random.seed(seed)

    def draw_size(self) -> tuple[int, int]:
        """This iteration's (H, W) in pixels: ``rollout.resolution``, or a bucket draw (``dynamic_resolution``)."""
        d = self.diffusion
        return resolution_bucket(self.rollout.resolution, self.rollout.dynamic_resolution,
                                 d.latent_scale * 2 ** (len(d.unet.config.block_out_channels) - 1))

    def make_xt(self, target: Conditioning | torch.Tensor, size: tuple[int, int] | None = None
                ) -> tuple[torch.Tensor, int, int]:
        """(x_t [B, ...], t, k): k DDIM steps (30-step schedule) from fresh noise at ``size`` (H, W) pixels (None:
        :meth:`draw_size`); ``rollout.batch_size`` x_T share k and the resolution (official prompt batch_size)."""
        r, d = self.rollout, self.diffusion
        h, w = size or self.draw_size()
        k = random.randint(1, r.max_denoising_steps - 1)  # official randint(1, max_denoising_steps)
        x = torch.randn(d.latent_shape(r.batch_size, h, w), device=self.device)  # init_noise_sigma = 1 for DDIM
        target = as_conditioning(target).expand(r.batch_size)
        steps = ddim_timesteps(r.max_denoising_steps, d.ddim.num_train_timesteps)
        x = roll_out(d, self.network, x, steps[:k], self.embeddings().uncond, target, r,
                     r.rescale_for(d.is_xl))
        return x, r.timestep_at(k, steps, d.ddim.num_train_timesteps), k

    def sample_anchors(self, target_index: int) -> Conditioning | None:
        e = self.embeddings()
        return self.anchoring.draw(target_index, e.targets, e.uncond, e.pool)

    def losses_at(self, x: torch.Tensor, t: int, target: Conditioning | torch.Tensor,
                  anchors: Conditioning | torch.Tensor | None) -> dict[str, torch.Tensor]:
        """:func:`~projects.spm.losses.spm_losses` with this module's model, membrane and knobs."""
        return spm_losses(self.diffusion, self.network, x, t, target, self.embeddings().surrogate, anchors,
                          self.hparams.eta, self.anchoring.strength, self.anchoring.official_pairing)

    def spm_losses(self) -> dict[str, torch.Tensor]:
        """One iteration's losses: sample target, k, x_t and anchors, then :meth:`losses_at`."""
        e = self.embeddings()
        ti = random.randrange(len(self.targets))
        target = e.targets[ti:ti + 1]
        size = self.draw_size()
        # dynamic_crops (SDXL): one size / crop conditioning for the roll-out and every loss call, as official;
        # drawn here, before k and x_T (the official code draws it after x_T: same law, another RNG order)
        crop = dynamic_crop(*size) if self.rollout.dynamic_crops else None
        with self.diffusion.cropped(crop):
            x, t, k = self.make_xt(target, size)
            out = self.losses_at(x, t, target, self.sample_anchors(ti))
        out.update(k=torch.tensor(float(k)), t=torch.tensor(float(t)))
        return out

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        out = self.spm_losses()
        self.log_dict({f"train/{k}": v for k, v in out.items()}, prog_bar=False, on_step=True, batch_size=1)
        self.log("train/loss_step", out["loss"], prog_bar=True, logger=False, batch_size=1)
        return out["loss"]

    def validation_step(self, batch, batch_idx: int) -> None:
        """Nothing: the config's callbacks (the toy judge, image grids) evaluate at each validation batch."""

    # ------------------------------------------------------------------ optimisation and saving
    def configure_optimizers(self):
        opt = self.optim.build(list(self.network.parameters()))
        # The schedule spans the run the Trainer will make (data.iterations steps, or fewer with max_steps), so
        # overriding --data.iterations on the command line cannot leave it planned for another length.
        total = self.optim.iterations if self._trainer is None else int(self.trainer.estimated_stepping_batches)
        sched = get_cosine_with_hard_restarts_schedule_with_warmup(opt, self.optim.warmup_steps, total,
                                                                   num_cycles=self.optim.cycles)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        every = self.hparams.save_every
        if every and self.global_step % every == 0 and self.trainer.is_global_zero:
            self.save_spm(f"{self.hparams.spm_name}_{self.global_step}steps.safetensors")

    def on_train_end(self) -> None:
        if self.trainer.is_global_zero:
            path = self.save_spm(f"{self.hparams.spm_name}_last.safetensors")
            logger.warning("SPM saved to %s", path)

    def save_spm(self, filename: str) -> Path:
        return self.network.save(Path(self.trainer.default_root_dir) / filename, self.targets)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("network.")}

    # ------------------------------------------------------------------ images for the callbacks
    @torch.no_grad()
    def generate(self, prompts: list[str], gamma: float, seed: int, steps: int, guidance: float,
                 on_step: Callable[[], Any] | None = None) -> torch.Tensor:
        """One image per prompt, [N, 3, H, W] in [0, 1]: DDIM + CFG with the membrane at ``gamma`` (0: the frozen
        model), merged into the weights; sample i's noise depends only on (seed, i). ``on_step``: called after each
        DDIM step (a progress bar)."""
        d = self.diffusion
        params = self.network.merged_weights(d.unet, gamma) if gamma else None
        with self.network.applied(0.0):
            return sample(d, prompts, seed=seed, steps=steps, guidance=guidance, unet_params=params, on_step=on_step)
