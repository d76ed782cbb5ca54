"""The toy world's validation: generate with the membrane off and on, judge the images with the toy classifier.

``configs/toy.yaml`` enables it as a callback (``trainer.callbacks``). Logged, with the membrane off (``*_before``)
and on: ``val/target_rate`` (share of the target prompts' images judged as the erased shape or colour: lower =
erased; the monitored, headline metric), one ``val/target_rate/<prompt>`` per target prompt,
``val/nontarget_acc`` (shape and colour both right on the other prompts), ``val/nontarget_shape_acc``,
``val/nontarget_color_acc``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from tqdm.auto import tqdm

from projects.spm.toy.classifier import ToyClassifier, load_classifier
from projects.spm.toy.scenes import TOY_COLORS, TOY_SHAPES, toy_labels
from shared.panels import log_images

REPO = Path(__file__).resolve().parents[3]


def toy_prompt_labels(prompt: str) -> tuple[int, int]:
    """``"a red circle"`` -> (shape index, colour index) in TOY_SHAPES / TOY_COLORS."""
    shape, color = toy_labels(prompt)
    if shape is None or color is None:
        raise ValueError(f"evaluation prompt {prompt!r} must name one toy shape {TOY_SHAPES} and one colour "
                         f"{TOY_COLORS}")
    return shape, color


class ToyJudge(Callback):
    """At each validation batch, ``images_per_prompt`` images of every ``target_prompts`` and ``other_prompts``
    prompt (DDIM, ``steps`` steps, CFG ``guidance``), with the membrane off and on, judged by the toy
    ``classifier``. The erased concept (the module's first target) must be a toy shape or a toy colour; the other
    prompts must each name one shape and one colour ("a red square").

    Batch i's noise comes from ``seed + i`` (the batch's own number), so the numbers do not depend on the number of
    processes; the means are over every batch of every process (sums and counts reduced once).
    """

    def __init__(self, target_prompts: list[str], other_prompts: list[str],
                 classifier: str = "projects/spm/toy_model/classifier.safetensors", images_per_prompt: int = 50,
                 steps: int = 20, guidance: float = 5.0, seed: int = 1234) -> None:
        if not target_prompts or not other_prompts:
            raise ValueError("ToyJudge needs target_prompts and other_prompts (one prompt or more each)")
        self.target_prompts, self.other_prompts = list(target_prompts), list(other_prompts)
        self.classifier_path = Path(classifier) if Path(classifier).is_absolute() else REPO / classifier
        self.images_per_prompt, self.steps, self.guidance, self.seed = images_per_prompt, steps, guidance, seed
        self.classifier: ToyClassifier | None = None
        self._sums: dict[str, torch.Tensor] = {}
        self._batches = 0

    def _load(self, module: LightningModule) -> None:
        if self.classifier is None:
            self.classifier = load_classifier(self.classifier_path).requires_grad_(False).to(module.device)

    # Loaded at fit start, after the module's setup has built the membrane: the classifier's construction draws
    # from the global random stream, so training starts from the same stream whichever callbacks the config names.
    def on_fit_start(self, trainer: Trainer, module: LightningModule) -> None:
        self._load(module)

    def on_validation_start(self, trainer: Trainer, module: LightningModule) -> None:
        self._load(module)

    def on_validation_epoch_start(self, trainer: Trainer, module: LightningModule) -> None:
        self._sums, self._batches = {}, 0

    def on_validation_batch_end(self, trainer: Trainer, module: LightningModule, outputs, batch, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        index = int(batch[0])    # the val batch's own number: the same seed whichever process scores it
        if index < 0:            # padding of a process with fewer val batches (shared.data.loaders.ShardSampler)
            return
        n, targets, others = self.images_per_prompt, self.target_prompts, self.other_prompts
        labels = torch.tensor([toy_prompt_labels(p) for p in others for _ in range(n)], device=module.device)
        n_target = n * len(targets)
        # The erased concept is a toy shape or a toy colour: judge the target rate on that attribute.
        shape, color = toy_labels(module.targets[0])
        if shape is None and color is None:
            raise ValueError(f"model.target {module.targets[0]!r}: the toy judge needs a toy shape {TOY_SHAPES} or "
                             f"colour {TOY_COLORS}")
        attr, value = (0, shape) if shape is not None else (1, color)
        prompts = [p for p in targets + others for _ in range(n)]
        # the judge generates for a minute or more on a CPU: a bar over its DDIM steps, base model then SPM
        bar = tqdm(total=2 * self.steps * -(-len(prompts) // 512), desc=f"toy judge ({len(prompts)} images x 2)",
                   leave=False, disable=not trainer.is_global_zero or os.environ.get("PROGRESS_REFRESH") == "0")
        firsts = []                          # each prompt's first image, base model then SPM: the grid logged
        for gamma, suffix in ((0.0, "_before"), (1.0, "")):
            images = module.generate(prompts, gamma, self.seed + index, self.steps, self.guidance,
                                     on_step=bar.update).to(module.device)
            firsts += [images[i * n] for i in range(len(targets + others))]
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
            for key, mean in metrics.items():
                self._sums[key] = self._sums.get(key, 0.0) + mean.detach().double()
        bar.close()
        if trainer.is_global_zero and index == 0 and not getattr(trainer, "sanity_checking", False):
            names = targets + others      # 16 px images: 4x, nearest, so a shape reads without zooming
            grid = torch.nn.functional.interpolate(torch.stack(firsts).float().cpu(), scale_factor=4, mode="nearest")
            log_images(module, "val/judge_samples", list(grid),
                       [f"{p} | {which}" for which in ("original", "SPM") for p in names])
        self._batches += 1

    def on_validation_epoch_end(self, trainer: Trainer, module: LightningModule) -> None:
        """Means over every val batch of every process: sums and counts reduced once, by every process (one that
        scored no batch too), so the numbers are the 1-process numbers whatever the number of processes."""
        keys = [f"val/{m}{s}" for s in ("_before", "") for m in ("target_rate", "nontarget_acc",
                                                               "nontarget_shape_acc", "nontarget_color_acc")]
        keys += [f"val/target_rate{s}/{p}" for s in ("_before", "") for p in self.target_prompts]
        zero = torch.zeros((), dtype=torch.float64, device=module.device)
        totals = torch.stack([self._sums.get(k, zero) for k in keys] + [zero + self._batches])
        totals = trainer.strategy.reduce(totals, reduce_op="sum")
        if totals[-1] > 0:
            module.log_dict({k: float(v) for k, v in zip(keys, totals[:-1] / totals[-1], strict=True)})
