"""SPM training (Latent Anchoring) as a LightningModule.

One iteration (spec 2.2, official ``train_spm.py``), with the paper's equations:
1. k ~ U{1..max_denoising_steps-1}; roll out k DDIM steps (of a 30-step schedule) from noise with the membrane
   on and CFG 3, conditioned on the target: x_t. No grad.
2. t = 999 - floor(k * 1000 / 30) (``timestep: official``, LECO's level) or the rolled-out level (``exact``).
3. Frozen model (membrane off), ONE no-grad batched UNet call: eps(x_t, c_tar), eps(x_t, c_sur), eps(x_t, anchors).
4. Membrane on, ONE UNet call with grad: eps_M(x_t, c_tar), eps_M(x_t, anchors).
5. Eq. 4-6: L_era = ||eps_M(c_tar) - [eps(c_sur) - eta (eps(c_tar) - eps(c_sur))]||^2;
   Eq. 7: L_anc = ||eps_M(c) - eps(c)||^2 over anchors; L = L_era + lambda L_anc. All on the device, fp32.
The official loop makes 5 UNet calls of batch 2/2/2/8/8 and moves predictions to the CPU for the loss.

All three families (SD v1.x, v2.x, SDXL; :mod:`projects.spm.model`): embeddings are
:class:`~projects.spm.model.Conditioning` (SDXL: + pooled), the losses are on the UNet's raw output (eps, or v for a
v-prediction model: official/LECO, see :meth:`SPMModule.losses_at`), and SDXL's roll-out uses CFG rescale 0.7
(``rollout_guidance_rescale``, official ``diffusion_xl``).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule

from projects.spm.anchoring import ConceptPool, official_anchors, vocabulary_words
from projects.spm.data import TOY_COLORS, TOY_SHAPES, read_prompt_list, toy_labels
from projects.spm.model import Conditioning, DiffusionModel, as_conditioning
from projects.spm.network import SPMNetwork
from shared.panels import log_images

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]


def erasing_target(eps_pos: torch.Tensor, eps_neu: torch.Tensor, eta: float) -> torch.Tensor:
    """Paper Eq. 5: eps(c_sur) - eta * (eps(c_tar) - eps(c_sur)) (ESD/LECO negative guidance)."""
    return eps_neu - eta * (eps_pos - eps_neu)


def resolution_bucket(resolution: int, dynamic: bool, multiple: int, step: int = 64) -> tuple[int, int]:
    """Official ``get_random_resolution_in_bucket``: H and W independently from the multiples of ``step`` (64) in
    [resolution / 2, resolution): ``randint(res/2 // 64, res // 64) * 64``, whose upper bound is excluded, so
    ``resolution`` itself is never drawn (512: 256..448; 768: 384..704; 1024: 512..960). Below 128 px the official
    range is empty (it draws 0): there (pixel-space toys) the step is resolution / 8, i.e. {4,5,6,7} * res / 8.
    The result is rounded down to ``multiple`` (what the UNet's down-sampling needs)."""
    if not dynamic:
        return resolution, resolution
    step = step if resolution >= 2 * step else resolution // 8
    low, high = resolution // 2 // step, resolution // step
    h, w = (int(torch.randint(low, high, (1,))) * step for _ in range(2))
    return h // multiple * multiple, w // multiple * multiple


def dynamic_crop(height: int, width: int) -> tuple[int, int, int, int]:
    """Official SDXL ``dynamic_crops`` (``get_add_time_ids``): an original size ``int(H * s), int(W * s)`` with
    ``s = 1 + 2 * rand()`` in [1, 3), and a crop top-left uniform over the positions where an H x W crop fits;
    returns (original H, original W, top, left) in pixels, one draw per training iteration."""
    scale = torch.rand(1).item() * 2 + 1
    original = int(height * scale), int(width * scale)
    top = int(torch.randint(0, original[0] - height + 1, (1,)))
    left = int(torch.randint(0, original[1] - width + 1, (1,)))
    return original[0], original[1], top, left


def anchor_batch(x: torch.Tensor, anchors: Conditioning, official_pairing: bool = False
                 ) -> tuple[torch.Tensor, Conditioning]:
    """The (latent, anchor) rows of the anchoring loss for B latents ``x`` [B, ...] and N ``anchors``.

    Ours (default): every anchor at every latent, N*B rows [x_1: a_1..a_N, x_2: a_1..a_N, ...].
    ``official_pairing``: N rows, anchor j at latent x_(j mod B), as the official loop's
    ``denoised_latents.repeat(N // B, ...)`` pairs them (spec 2.3; with the batch quirk's anchors [u, s3, u, s4] and
    B = 2: (x1, u), (x2, s3), (x1, u), (x2, s4)); N must be a multiple of B (the official code asserts it).
    """
    b, n = x.shape[0], anchors.batch
    if not official_pairing:
        return x.repeat_interleave(n, 0), anchors.repeat(b)
    if n % b:
        raise ValueError(f"model.official_anchor_pairing: {n} anchor rows are not a multiple of batch_size {b} (the "
                         f"official loop asserts sampling_batch_size % batch_size == 0)")
    return x.repeat(n // b, *([1] * (x.ndim - 1))), anchors


def _from_repo(path: str) -> Path:
    return Path(path) if Path(path).is_absolute() else REPO / path


def toy_prompt_labels(prompt: str) -> tuple[int, int]:
    """``"a red circle"`` -> (shape index, colour index) in TOY_SHAPES / TOY_COLORS."""
    shape, color = toy_labels(prompt)
    if shape is None or color is None:
        raise ValueError(f"evaluation prompt {prompt!r} must name one toy shape {TOY_SHAPES} and one colour "
                         f"{TOY_COLORS}")
    return shape, color


class SPMModule(LightningModule):
    """Trains one SPM (a rank-``rank`` membrane) that erases ``target`` from the frozen model in ``base_model``.

    ``anchoring``: ``paper`` (concept pool, P proportional to (1-|cos|)^alpha), ``official`` (random embeddings
    at the target's norm; ``official_batch_quirk`` keeps only [u, s3, u, s4]), ``none`` (plain erasing).
    ``anchor_uncond`` (ours, paper mode): add the unconditional "" to every step's anchors, which the official
    batch quirk does by accident; without it the membrane can move the CFG negative branch with the target.
    ``official_anchor_pairing``: with ``batch_size`` > 1, pair anchor j with latent j mod B as the official loop
    does (:func:`anchor_batch`); default: every anchor at every latent.
    ``rollout_guidance_rescale``: CFG rescale of the x_t roll-out; None: the official value of the family (SDXL
    0.7 as ``diffusion_xl`` / ``predict_noise_xl``; SD v1.x / v2.x 0, no rescale).
    Evaluation (validation) with a toy ``classifier``: target-shape rate and non-target accuracy with the
    membrane off (``*_before``) and on.
    """

    monitor = "val/target_rate"
    monitor_mode = "min"
    headline_metric = "val/target_rate"

    def __init__(
        self,
        base_model: str = "projects/spm/toy_model",
        base_config: str | None = None,  # a single-file base_model's diffusers folder (configs, tokenizers)
        build_toy_base: bool = False,
        target: str | list[str] = "circle",
        surrogate: str = "",
        eta: float = 1.0,
        anchoring: Literal["paper", "official", "none"] = "paper",
        anchor_strength: float = 1000.0,
        anchor_samples: int = 4,
        anchor_alpha: float = 1.0,
        concept_pool: str | None = None,
        anchor_uncond: bool = False,
        official_batch_quirk: bool = True,
        official_anchor_pairing: bool = False,
        rank: int = 1,
        alpha: float = 1.0,
        lr: float = 1e-4,
        optimizer: Literal["adamw", "adamw8bit"] = "adamw",
        lr_warmup_steps: int = 500,
        lr_cycles: int = 3,
        iterations: int = 3000,  # LR-schedule length without a Trainer; with one, the steps it will run
        batch_size: int = 1,
        max_denoising_steps: int = 30,
        rollout_guidance: float = 3.0,
        rollout_guidance_rescale: float | None = None,
        rollout_membrane: bool = True,
        timestep: Literal["official", "exact"] = "official",
        resolution: int = 512,
        dynamic_resolution: bool = True,
        dynamic_crops: bool = False,
        merged_rollout: bool = True,
        spm_name: str = "spm",
        save_every: int = 500,
        classifier: str | None = None,
        eval_target_prompts: list[str] | None = None,
        eval_other_prompts: list[str] | None = None,
        eval_images_per_prompt: int = 50,
        eval_steps: int = 20,
        eval_guidance: float = 5.0,
        eval_seed: int = 1234,
        log_prompts: list[str] | None = None,
        log_images_every_n_steps: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if anchoring not in ("paper", "official", "none"):
            raise ValueError(f"model.anchoring must be paper, official or none; got {anchoring!r}")
        if timestep not in ("official", "exact"):
            raise ValueError(f"model.timestep must be official or exact; got {timestep!r}")
        for name, low in (("rank", 1), ("anchor_samples", 1), ("max_denoising_steps", 2), ("batch_size", 1),
                          ("resolution", 8)):  # k is drawn from 1 .. max_denoising_steps - 1
            if int(self.hparams[name]) < low and not (name == "anchor_samples" and anchoring == "none"):
                raise ValueError(f"model.{name} must be >= {low}; got {self.hparams[name]}")
        self.targets = [target] if isinstance(target, str) else list(target)
        if not self.targets or not all(self.targets):
            raise ValueError(f"model.target must name at least one non-empty concept; got {target!r}")
        self.strict_loading = False  # checkpoints hold the membrane only
        self.diffusion: DiffusionModel | None = None
        self.network: SPMNetwork | None = None
        self._cache: dict | None = None

    # ------------------------------------------------------------------ building
    def _base_folder(self) -> Path:
        """``base_model`` (a diffusers folder or a single-file checkpoint), relative paths from the repo root."""
        return _from_repo(self.hparams.base_model)

    def prepare_data(self) -> None:
        if self.hparams.build_toy_base:
            from projects.spm.toy_base import ensure_toy_base

            ensure_toy_base(self._base_folder())

    def setup(self, stage: str) -> None:
        if self.diffusion is not None:
            return
        config = self.hparams.base_config
        self.diffusion = DiffusionModel.from_folder(self._base_folder(),
                                                    base_config=_from_repo(config) if config else None)
        if self.hparams.dynamic_crops and not self.diffusion.is_xl:
            raise ValueError(f"model.dynamic_crops is SDXL's size / crop conditioning (add_time_ids); the base "
                             f"model {self.hparams.base_model} is not SDXL: set model.dynamic_crops false")
        self.network = SPMNetwork(self.diffusion.unet, rank=self.hparams.rank, alpha=self.hparams.alpha)
        self.classifier = None
        if self.hparams.classifier:
            from projects.spm.toy_base import load_classifier

            path = Path(self.hparams.classifier)
            self.classifier = load_classifier(path if path.is_absolute() else REPO / path).requires_grad_(False)

    def _embeddings(self) -> dict:
        """Target / surrogate / "" conditionings and the anchor pool, computed once on the device."""
        if self._cache is None:
            d = self.diffusion
            cache = {"targets": d.encode(self.targets), "surrogate": d.encode([self.hparams.surrogate]),
                     "uncond": d.encode([""]), "pool": None}
            if self.hparams.anchoring == "paper":
                concepts = (read_prompt_list(self.hparams.concept_pool) if self.hparams.concept_pool
                            else vocabulary_words(d.tokenizer))
                cache["pool"] = ConceptPool(concepts, d.encode, cache["targets"], self.hparams.anchor_alpha)
            self._cache = cache
        return self._cache

    # ------------------------------------------------------------------ training
    def on_fit_start(self) -> None:
        if self.trainer.world_size > 1:  # seed_everything gives every rank the same stream: decorrelate k, x_T, anchors
            seed = torch.initial_seed() + 7919 * self.global_rank
            torch.manual_seed(seed)
            random.seed(seed)

    def rollout_rescale(self) -> float:
        """The roll-out's CFG rescale: ``rollout_guidance_rescale``, or the family's official value (SDXL 0.7)."""
        value = self.hparams.rollout_guidance_rescale
        return float(value) if value is not None else (0.7 if self.diffusion.is_xl else 0.0)

    def draw_size(self) -> tuple[int, int]:
        """This iteration's (H, W) in pixels: ``resolution``, or a bucket draw (``dynamic_resolution``)."""
        d = self.diffusion
        return resolution_bucket(self.hparams.resolution, self.hparams.dynamic_resolution,
                                 d.latent_scale * 2 ** (len(d.unet.config.block_out_channels) - 1))

    def make_xt(self, target_emb: Conditioning | torch.Tensor, size: tuple[int, int] | None = None
                ) -> tuple[torch.Tensor, int, int]:
        """Official x_t: k DDIM steps (30-step schedule, CFG ``rollout_guidance``) with the membrane on, at
        ``size`` (H, W) pixels (None: :meth:`draw_size`)."""
        hp, d = self.hparams, self.diffusion
        h, w = size or self.draw_size()
        k = random.randint(1, hp.max_denoising_steps - 1)  # official randint(1, max_denoising_steps)
        # init_noise_sigma = 1 for DDIM; ``batch_size`` x_T share k and the resolution (official prompt batch_size)
        x = torch.randn(d.latent_shape(hp.batch_size, h, w), device=self.device)
        target_emb = as_conditioning(target_emb).expand(hp.batch_size)
        steps = d.ddim_timesteps(hp.max_denoising_steps, len(d.alphas_cumprod))
        uncond, rescale = self._embeddings()["uncond"], self.rollout_rescale()
        # inference_mode, not the official no_grad: no version counters or view tracking on the roll-out's UNet calls
        with torch.inference_mode():
            if not hp.rollout_membrane:  # ours, a diagnostic: x_t on the frozen model's own trajectory
                with self.network.applied(0.0):
                    x = d.rollout(x, steps[:k], uncond, target_emb, hp.rollout_guidance, rescale=rescale)
            elif hp.merged_rollout:
                params = self.network.merged_weights(d.unet, 1.0)
                with self.network.applied(0.0):
                    x = d.rollout(x, steps[:k], uncond, target_emb, hp.rollout_guidance, params, rescale)
            else:
                with self.network.applied(1.0):
                    x = d.rollout(x, steps[:k], uncond, target_emb, hp.rollout_guidance, rescale=rescale)
        x = x.clone()  # an ordinary tensor again: autograd may save it in the membrane's forward
        n_train = len(d.alphas_cumprod)
        t = (n_train - 1 - int(k * n_train / hp.max_denoising_steps)) if hp.timestep == "official" else steps[k]
        return x, t, k

    def sample_anchors(self, ti: int) -> Conditioning | None:
        hp, cache = self.hparams, self._embeddings()
        if hp.anchoring == "none":
            return None
        if hp.anchoring == "official":
            return official_anchors(cache["targets"][ti:ti + 1], hp.anchor_samples, cache["uncond"],
                                    hp.official_batch_quirk)
        anchors = cache["pool"].sample(ti, hp.anchor_samples)
        if hp.anchor_uncond:  # ours, off by default: also pin the CFG unconditional "" (see the README)
            anchors = Conditioning.cat([anchors, cache["uncond"].to(anchors.dtype)])
        return anchors

    def spm_losses(self) -> dict[str, torch.Tensor]:
        """One iteration's losses: sample target, k, x_t and anchors, then :meth:`losses_at`."""
        cache = self._embeddings()
        ti = random.randrange(len(self.targets))
        target = cache["targets"][ti:ti + 1]
        size = self.draw_size()
        # dynamic_crops (SDXL): one size / crop conditioning for the roll-out and every loss call, as official;
        # drawn here, before k and x_T (the official code draws it after x_T: same law, another RNG order)
        crop = dynamic_crop(*size) if self.hparams.dynamic_crops else None
        with self.diffusion.cropped(crop):
            x, t, k = self.make_xt(target, size)
            out = self.losses_at(x, t, target, self.sample_anchors(ti))
        out.update(k=torch.tensor(float(k)), t=torch.tensor(float(t)))
        return out

    def losses_at(self, x: torch.Tensor, t: int, target: Conditioning | torch.Tensor,
                  anchors: Conditioning | torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Eqs. 4-8 with two UNet calls: frozen [tar, sur, anchors] (no grad) and membrane-on [tar, anchors].

        ``x`` [B, ...]: every anchor is predicted at every one of the B latents (``official_anchor_pairing``: anchor
        j at latent j mod B, :func:`anchor_batch`).

        The losses are on the UNet's raw output, as the official code (and LECO) computes them for every family:
        eps, or v for a v-prediction model (SD 2.x 768). At a fixed x_t, v = eps / sqrt(a_t) - sqrt((1 - a_t) / a_t)
        x_t is an affine function of eps with the same offset for every condition, so the Eq. 5 target (an affine
        combination of predictions with weights summing to 1) maps to the same target in v, and each squared error
        is the eps-space one scaled by 1 / a_t.
        """
        hp, d = self.hparams, self.diffusion
        target = as_conditioning(target)
        b = x.shape[0]
        per_x = [target.expand(b)]
        if anchors is not None:
            x_anchor, anchor_c = anchor_batch(x, as_conditioning(anchors), hp.official_anchor_pairing)
            per_x.append(anchor_c)
        frozen_x = torch.cat([x, x] + ([x_anchor] if anchors is not None else []))
        frozen_c = Conditioning.cat([per_x[0], self._embeddings()["surrogate"].expand(b)] + per_x[1:])
        with torch.no_grad(), self.network.applied(0.0):
            frozen = d.predict(frozen_x, t, frozen_c).float()
        spm_x = torch.cat([x] + ([x_anchor] if anchors is not None else []))
        with self.network.applied(1.0):
            spm = d.predict(spm_x, t, Conditioning.cat(per_x)).float()
        loss_erase = F.mse_loss(spm[:b], erasing_target(frozen[:b], frozen[b:2 * b], hp.eta))
        out = {"loss_erase": loss_erase}
        if anchors is not None:
            out["loss_anchor"] = F.mse_loss(spm[b:], frozen[2 * b:])
            out["loss"] = loss_erase + hp.anchor_strength * out["loss_anchor"]
        else:
            out["loss"] = loss_erase
        return out

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        out = self.spm_losses()
        self.log_dict({f"train/{k}": v for k, v in out.items()}, prog_bar=False, on_step=True, batch_size=1)
        self.log("train/loss_step", out["loss"], prog_bar=True, logger=False, batch_size=1)
        every = self.hparams.log_images_every_n_steps
        if every and self.global_step % every == 0 and self.global_rank == 0:
            self._log_image_grid(f"samples/step{self.global_step}")
        return out["loss"]

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

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        from diffusers.optimization import get_cosine_with_hard_restarts_schedule_with_warmup

        hp = self.hparams
        params = list(self.network.parameters())
        opt = None
        if hp.optimizer == "adamw8bit":
            try:
                import bitsandbytes as bnb

                opt = bnb.optim.AdamW8bit(params, lr=hp.lr)
            except ImportError:
                logger.warning("optimizer adamw8bit: bitsandbytes is not installed; using torch AdamW")
        opt = opt or torch.optim.AdamW(params, lr=hp.lr, fused=True)  # one fused kernel (the default: foreach)
        # The schedule spans the run the Trainer will make (data.iterations steps, or fewer with max_steps), so
        # overriding --data.iterations on the command line cannot leave it planned for another length.
        total = hp.iterations if self._trainer is None else int(self.trainer.estimated_stepping_batches)
        sched = get_cosine_with_hard_restarts_schedule_with_warmup(opt, hp.lr_warmup_steps, total,
                                                                   num_cycles=hp.lr_cycles)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("network.")}

    # ------------------------------------------------------------------ evaluation and images
    def _generate(self, prompts: list[str], gamma: float, seed: int) -> torch.Tensor:
        hp, d = self.hparams, self.diffusion
        params = self.network.merged_weights(d.unet, gamma) if gamma else None
        with torch.no_grad(), self.network.applied(0.0):
            return d.sample(prompts, seed=seed, steps=hp.eval_steps, guidance=hp.eval_guidance, unet_params=params)

    def validation_step(self, batch, batch_idx: int) -> None:
        hp = self.hparams
        if self.classifier is None or not (hp.eval_target_prompts and hp.eval_other_prompts):
            if self.global_rank == 0:
                self._log_image_grid("samples/val")
            return
        n = hp.eval_images_per_prompt
        targets, others = list(hp.eval_target_prompts), list(hp.eval_other_prompts)
        labels = torch.tensor([toy_prompt_labels(p) for p in others for _ in range(n)], device=self.device)
        n_target = n * len(targets)
        # The erased concept is a toy shape or a toy colour: judge the target rate on that attribute.
        shape, color = toy_labels(self.targets[0])
        if shape is None and color is None:
            raise ValueError(f"model.target {self.targets[0]!r}: the toy judge needs a toy shape {TOY_SHAPES} or "
                             f"colour {TOY_COLORS}")
        attr, value = (0, shape) if shape is not None else (1, color)
        index = int(batch[0])    # the val batch's own number: the same seed whichever process scores it
        if index < 0:            # padding of a process with fewer val batches (shared.data.loaders.ShardSampler)
            return
        for gamma, suffix in ((0.0, "_before"), (1.0, "")):
            images = self._generate([p for p in targets + others for _ in range(n)], gamma,
                                    hp.eval_seed + index).to(self.device)
            with torch.no_grad():
                shape_logits, color_logits = self.classifier(images)
            pred = torch.stack([shape_logits.argmax(1), color_logits.argmax(1)], 1)
            is_target = (pred[:n_target, attr] == value).float()
            other = (pred[n_target:] == labels).float()
            metrics = {f"val/target_rate{suffix}": is_target.mean(),
                       f"val/nontarget_acc{suffix}": other.prod(1).mean(),
                       f"val/nontarget_shape_acc{suffix}": other[:, 0].mean(),
                       f"val/nontarget_color_acc{suffix}": other[:, 1].mean()}
            metrics.update({f"val/target_rate{suffix}/{p}": is_target[i * n:(i + 1) * n].mean()
                            for i, p in enumerate(targets)})
            for key, value in metrics.items():
                self._val_sums[key] = self._val_sums.get(key, 0.0) + value.detach().double()
        self._val_batches += 1

    def on_validation_epoch_start(self) -> None:
        self._val_sums: dict[str, torch.Tensor] = {}
        self._val_batches = 0

    def on_validation_epoch_end(self) -> None:
        """Means over every val batch of every process: sums and counts reduced once, by every process (one that
        scored no batch too), so the numbers are the 1-process numbers whatever the number of processes."""
        hp = self.hparams
        if self.classifier is None or not (hp.eval_target_prompts and hp.eval_other_prompts):
            return
        keys = [f"val/{m}{s}" for s in ("_before", "") for m in ("target_rate", "nontarget_acc",
                                                               "nontarget_shape_acc", "nontarget_color_acc")]
        keys += [f"val/target_rate{s}/{p}" for s in ("_before", "") for p in hp.eval_target_prompts]
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        totals = torch.stack([self._val_sums.get(k, zero) for k in keys] + [zero + self._val_batches])
        totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        if totals[-1] > 0:
            self.log_dict({k: float(v) for k, v in zip(keys, totals[:-1] / totals[-1], strict=True)})

    def _log_image_grid(self, key: str) -> None:
        prompts = self.hparams.log_prompts or self.targets
        rows = [self._generate(prompts, g, self.hparams.eval_seed) for g in (0.0, 1.0)]
        images = list(torch.cat(rows))
        captions = [f"{p} | {'SPM' if g else 'original'}" for g in (0, 1) for p in prompts]
        log_images(self, key, images, captions)
