"""The toy text-to-image base model: a 16x16 pixel-space UNet with a pretrained, frozen toy text encoder.

``python -m projects.spm.toy.toy_base [--out projects/spm/toy_model] [--steps 1600] [--seed 0]`` trains the judge
(``classifier.py``), then the model on captioned toy-world scenes ("a red circle", ``scenes.py``), and writes a
diffusers folder (unet/, text_encoder/, tokenizer/, scheduler/; no vae/, the UNet works in pixel space) plus
``classifier.safetensors`` and ``toy_base.json``. The result is committed in ``projects/spm/toy_model/``;
:func:`ensure_toy_base` retrains only when a folder lacks ``toy_base.json``. Deterministic for a given seed and
thread count. ``--judge`` scores an existing folder.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, UNet2DConditionModel
from torch import nn
from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

from projects.spm.diffusion.model import DiffusionModel
from projects.spm.diffusion.sampling import sample
from projects.spm.toy.classifier import load_classifier, train_classifier
from projects.spm.toy.scenes import TOY_COLORS, TOY_SHAPES, TOY_SIZE, grammar_vocabulary, render_toy_scenes, toy_caption
from projects.spm.toy.toy_text import phrase_cosines, pretrain_text_encoder
from shared.backbones.text import build_clip_tokenizer

logger = logging.getLogger(__name__)
# The committed toy model (about 8 MB, tracked in git); the script rewrites it (or another --out) when rerun.
DEFAULT_DIR = Path(__file__).resolve().parents[1] / "toy_model"
DEFAULT_STEPS = 1600
DEFAULT_BATCH = 64
# The toy base model's UNet: pixel space, 16x16, attention only at 8x8 and 4x4 (cheap on CPU),
# 7 Transformer2DModels (2 down, 1 mid, 4 up).
TOY_UNET_CONFIG: dict = dict(
    sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, cross_attention_dim=64,
    attention_head_dim=16, norm_num_groups=8, block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
)
# 4 blocks, 4 heads (the first toy encoder had 2 and 2 and trained jointly with the UNet; see toy_text.py).
TEXT_CONFIG = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256,
                   max_position_embeddings=16, projection_dim=64)
SCHEDULER = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                 clip_sample=True, set_alpha_to_one=False, steps_offset=0, prediction_type="epsilon")


def save_toy_scheduler(scheduler, folder: Path) -> None:
    """``scheduler.save_pretrained(folder)`` plus ``"_use_clipped_model_output": true``: the toy world's DDIM
    re-derives eps from the clipped x0 (every committed toy number was measured so; ``DiffusionModel.from_folder``
    reads the key, diffusers ignores keys starting with "_")."""
    scheduler.save_pretrained(folder)
    path = Path(folder) / "scheduler_config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({"_use_clipped_model_output": True, **config}, indent=2, sort_keys=True) + "\n")


def build_tokenizer(out_dir: Path | None):
    captions = grammar_vocabulary() + ["an object", "a shape"]
    tok = build_clip_tokenizer(captions * 4, None, vocab_size=400)
    tok.model_max_length = TEXT_CONFIG["max_position_embeddings"]
    if out_dir is not None:
        tok.save_pretrained(out_dir)
    return tok


def hue_rotation(degrees: float) -> torch.Tensor:
    """3x3 RGB matrix that rotates hues by ``degrees`` about the grey axis (greys, e.g. the background, stay put)."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    k = torch.full((3, 3), 1 / 3)
    cross = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) / math.sqrt(3)
    return c * torch.eye(3) + (1 - c) * k + s * cross


def train_base(out_dir: Path, steps: int = DEFAULT_STEPS, batch_size: int = DEFAULT_BATCH, lr: float = 2e-3,
               seed: int = 0, cfg_dropout: float = 0.1, ema_decay: float = 0.995, snapshot_every: int = 250,
               partial_captions: float = 0.3, init_from: Path | None = None, hue_shift: float = 0.0,
               text_steps: int = 1500) -> dict:
    """Train the tiny pixel-space text-to-image model and save it (an EMA of its weights) in the diffusers folder
    layout; every ``snapshot_every`` steps the EMA so far is written too, so a run can be judged while it trains.

    From scratch, the text encoder is pretrained first on the caption grammar (``text_steps``, toy_text.py) and
    stays frozen while the UNet learns, as SD v1's CLIP did; the images' captions come from the same grammar.
    ``init_from`` fine-tunes an existing toy model folder instead of starting from random weights, and ``hue_shift``
    rotates the training images' hues (degrees): together they make the "derived" model of the transfer experiment
    (like a community checkpoint fine-tuned from SD v1.4, UNet and text encoder both change)."""
    torch.manual_seed(seed)
    text_info = None
    if init_from is not None:
        tokenizer = AutoTokenizer.from_pretrained(init_from / "tokenizer", local_files_only=True)
        tokenizer.save_pretrained(out_dir / "tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(init_from / "text_encoder", local_files_only=True)
        unet = UNet2DConditionModel.from_pretrained(init_from / "unet", local_files_only=True)
    else:
        tokenizer = build_tokenizer(out_dir / "tokenizer")
        text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                                    bos_token_id=tokenizer.bos_token_id,
                                                    eos_token_id=tokenizer.eos_token_id, **TEXT_CONFIG))
        text_info = pretrain_text_encoder(text_encoder, tokenizer, steps=text_steps, seed=seed,
                                          log=logger.warning)
        text_info["cosine_with_bare_circle"] = phrase_cosines(text_encoder, tokenizer)
        text_encoder.requires_grad_(False).eval()
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**TOY_UNET_CONFIG)
    joint = init_from is not None  # fine-tuning a derived model moves both; from scratch the encoder is frozen
    scheduler = DDIMScheduler(**SCHEDULER)
    data = render_toy_scenes(20000, seed=seed, partial_captions=partial_captions, grammar=True)
    images = data["images"].float() / 127.5 - 1
    if hue_shift:
        images = torch.einsum("ij,njhw->nihw", hue_rotation(hue_shift), images).clamp(-1, 1)
    ids = tokenizer(data["captions"] + [""], padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    empty_ids, ids = ids[-1], ids[:-1]
    acp = scheduler.alphas_cumprod
    params = list(unet.parameters()) + (list(text_encoder.parameters()) if joint else [])
    opt = torch.optim.AdamW(params, lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.05)
    ema = copy.deepcopy(nn.ModuleDict({"unet": unet, "text_encoder": text_encoder})).requires_grad_(False)
    live = list(unet.parameters()) + (list(text_encoder.parameters()) if joint else [])
    ema_live = list(ema["unet"].parameters()) + (list(ema["text_encoder"].parameters()) if joint else [])

    def save(models: nn.ModuleDict) -> None:
        models["unet"].save_pretrained(out_dir / "unet")
        models["text_encoder"].save_pretrained(out_dir / "text_encoder")
        save_toy_scheduler(scheduler, out_dir / "scheduler")

    start, losses = time.perf_counter(), []
    for step in range(steps):
        idx = torch.randint(len(images), (batch_size,))
        x0 = images[idx]
        tok = ids[idx].clone()
        drop = torch.rand(batch_size) < cfg_dropout
        tok[drop] = empty_ids
        with torch.set_grad_enabled(joint):
            cond = text_encoder(tok)[0]
        t = torch.randint(0, 1000, (batch_size,))
        noise = torch.randn_like(x0)
        a = acp[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = F.mse_loss(unet(xt, t, encoder_hidden_states=cond).sample, noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema_live, live, 1 - ema_decay)
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            logger.warning("toy base step %d/%d loss %.4f (%.0fs)", step, steps,
                           sum(losses[-50:]) / len(losses[-50:]), time.perf_counter() - start)
        if snapshot_every and (step + 1) % snapshot_every == 0:
            save(ema)
    save(ema)
    return {"steps": steps, "batch_size": batch_size, "lr": lr, "ema_decay": ema_decay, "hue_shift": hue_shift,
            "init_from": None if init_from is None else str(init_from), "text_encoder": text_info,
            "captions": f"scenes.grammar_caption, partial share {partial_captions:g}",
            "final_loss": sum(losses[-50:]) / len(losses[-50:]), "train_s": round(time.perf_counter() - start, 1),
            "threads": torch.get_num_threads()}


def judge_base(folder: str | Path, images_per_prompt: int = 20, seed: int = 1234, steps: int = 20,
               guidance: float = 5.0) -> dict:
    """Generate ``images_per_prompt`` images (fixed seed) for each of the 36 "a <colour> <shape>" prompts and judge
    them with the folder's toy classifier: shape, colour and both-right accuracy over all generations."""
    folder = Path(folder)
    model = DiffusionModel.from_folder(folder)
    judge = load_classifier(folder / "classifier.safetensors")
    pairs = [(si, ci) for si in range(len(TOY_SHAPES)) for ci in range(len(TOY_COLORS))]
    prompts = [toy_caption(TOY_SHAPES[si], TOY_COLORS[ci]) for si, ci in pairs for _ in range(images_per_prompt)]
    labels = torch.tensor([p for p in pairs for _ in range(images_per_prompt)])
    images = sample(model, prompts, seed=seed, steps=steps, guidance=guidance)
    with torch.no_grad():
        s, c = judge(images)
    shape_ok, color_ok = s.argmax(1) == labels[:, 0], c.argmax(1) == labels[:, 1]
    return {"images": len(prompts), "shape_acc": round(shape_ok.float().mean().item(), 4),
            "color_acc": round(color_ok.float().mean().item(), 4),
            "both_acc": round((shape_ok & color_ok).float().mean().item(), 4)}


def write_random_base(out_dir: str | Path, unet_config: dict | None = None, seed: int = 0) -> Path:
    """An untrained tiny model in the same diffusers layout (for fast tests and the bench)."""
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(out_dir / "tokenizer")
    cfg = {**TEXT_CONFIG, **({} if unet_config is None else {"hidden_size": unet_config["cross_attention_dim"]})}
    CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                 bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                 **cfg)).save_pretrained(out_dir / "text_encoder")
    UNet2DConditionModel(**(unet_config or TOY_UNET_CONFIG)).save_pretrained(out_dir / "unet")
    save_toy_scheduler(DDIMScheduler(**SCHEDULER), out_dir / "scheduler")
    return out_dir


def build_toy_base(out_dir: str | Path = DEFAULT_DIR, steps: int = DEFAULT_STEPS, seed: int = 0,
                   batch_size: int = DEFAULT_BATCH, classifier: str | Path | None = None) -> Path:
    """Train the judge (or copy ``classifier``, an existing judge, so numbers stay comparable), then the model."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if classifier is None:
        classifier_acc = train_classifier(out_dir / "classifier.safetensors")  # first: snapshots can be judged
    else:
        if Path(classifier).resolve() != (out_dir / "classifier.safetensors").resolve():
            shutil.copy(classifier, out_dir / "classifier.safetensors")
        classifier_acc = f"copied from {classifier}"
    info = train_base(out_dir, steps=steps, seed=seed, batch_size=batch_size)
    info["classifier_acc"] = classifier_acc
    info["generated"] = judge_base(out_dir)
    info.update(shapes=TOY_SHAPES, colors=TOY_COLORS, size=TOY_SIZE, seed=seed,
                command=f"python -m projects.spm.toy.toy_base --out {out_dir} --steps {steps} --seed {seed} "
                        f"--batch-size {batch_size}" + (f" --classifier {classifier}" if classifier else ""))
    (out_dir / "toy_base.json").write_text(json.dumps(info, indent=2))
    logger.warning("toy base model written to %s: %s", out_dir, info)
    return out_dir


def derive_toy_model(source: str | Path, out_dir: str | Path, steps: int = 200, hue_shift: float = 30.0,
                     lr: float = 5e-4, seed: int = 1) -> Path:
    """The transfer experiment's "derived" model: ``source`` fine-tuned briefly on hue-shifted renders (same layout,
    different UNet and text-encoder weights), with the source's classifier copied alongside."""
    source, out_dir = Path(source), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(source / "classifier.safetensors", out_dir / "classifier.safetensors")
    info = train_base(out_dir, steps=steps, lr=lr, seed=seed, init_from=source, hue_shift=hue_shift,
                      snapshot_every=0)
    info["generated"] = judge_base(out_dir)
    info["command"] = (f"python -m projects.spm.toy.toy_base --derive-from {source} --out {out_dir} --steps {steps} "
                       f"--hue-shift {hue_shift} --seed {seed}")
    (out_dir / "toy_base.json").write_text(json.dumps(info, indent=2))
    return out_dir


def ensure_toy_base(folder: str | Path = DEFAULT_DIR) -> Path:
    """Return the cached toy base model folder, training it first (a few minutes on 2 CPU cores) if absent."""
    folder = Path(folder)
    if folder.is_file():  # a single-file checkpoint (or not a model at all): nothing to build, loading decides
        return folder
    if not (folder / "toy_base.json").is_file():
        logger.warning("toy base model not found in %s: training it now (cached for later runs)", folder)
        build_toy_base(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(DEFAULT_DIR))
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    parser.add_argument("--judge", action="store_true", help="only judge an existing --out folder's generations")
    parser.add_argument("--classifier", help="copy this existing toy judge instead of training a new one")
    parser.add_argument("--derive-from", help="fine-tune this toy model folder on hue-shifted renders instead")
    parser.add_argument("--hue-shift", type=float, default=30.0, help="degrees, with --derive-from")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    if args.judge:
        print(json.dumps(judge_base(args.out)))
    elif args.derive_from:
        derive_toy_model(args.derive_from, args.out, args.steps, args.hue_shift, seed=args.seed)
    else:
        build_toy_base(args.out, args.steps, args.seed, args.batch_size, args.classifier)


if __name__ == "__main__":
    main()
