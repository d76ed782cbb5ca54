"""Bench rows for DRDF: the cost of the routers + MWF-Layer on top of the K experts (``make bench BENCH=drdf``).

Each row times one training step of DRDF divided by one step of the same K experts without routers
(``net.routing: uniform``, the static ensemble, w = 1/K) with the same expert weights. Both steps are
``DRDFModule.training_step`` of the module the config file describes (its loss, its optimizer builder with
``foreach=True``, its gradient clip; random weights), through ``shared.bench.steps``; so the ratio is the routers'
and the MWF-Layer's share of a trained step. Target: at most 1.10 with the default routers.

``pipeline_loader`` (the Hateful Memes training DataLoader on files in its layout) serves ``shared/bench/pipeline.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from string import ascii_lowercase

import numpy as np
import torch
from transformers import BertTokenizerFast

from projects.drdf.data import DRDFDataModule
from projects.drdf.experts import GridEncoder
from projects.drdf.model import DRDF
from projects.drdf.module import DRDFModule
from shared.backbones.text import BERT_SPECIALS
from shared.bench import BenchCase, GpuRow, PipelineRow, register, register_gpu_row, register_pipeline_row, switches
from shared.bench.photos import write_photos
from shared.bench.pipeline import epoch_batches, paper_data
from shared.bench.steps import paper_config, train_step

CONFIGS = Path(__file__).parent / "configs"
WEIGHT_PATHS = ("pretrained", "image_pretrained", "text_model", "visual_bert_model", "vilt_model")
PARTS = ("expert_kwargs", "text_router", "image_router", "text_slot_image_router")


def random_init(net_args: dict) -> dict:
    """DRDF's arguments with every weight path of its parts off: random init, nothing read from disk."""
    def off(kwargs: dict | None) -> dict | None:
        return {**kwargs, **{k: None for k in WEIGHT_PATHS if k in kwargs}} if kwargs else kwargs

    experts = net_args.get("experts")
    if experts:
        net_args = {**net_args, "experts": [off(e) if isinstance(e, dict) else e for e in experts]}
    return {**net_args, **{k: off(net_args[k]) for k in PARTS if k in net_args}}


def train_step_case(config: str | Path, batch_size: int, seq_len: int, vocab: int, device: str | None = None,
                    switch: str | None = None) -> BenchCase:
    """The training step of ``config``'s DRDF vs the step of its K experts with uniform weights (same expert
    weights), on ``batch_size`` random memes of ``seq_len`` tokens below ``vocab``; ``device`` None: CUDA when
    there is one.

    ``switch`` (``shared/bench/switches.py``: ``fused``, ``channels_last`` or ``compile``): instead the DRDF step
    with that switch vs the same step without it (twins with the same weights, no dropout; ``compile``: each
    expert's grid CNN). Each step returns its loss."""
    switches.check(switch, ("fused", "channels_last", "compile"))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = paper_config(config)
    m, clip, image_size = cfg["model"], cfg["trainer"].get("gradient_clip_val"), cfg["data"]["image_size"]
    net_args = random_init(m["net"]["init_args"])
    knobs = {k: v for k, v in m.items() if k != "net"}
    torch.manual_seed(0)
    drdf = DRDFModule(DRDF(**{**net_args, "routing": "drdf"}), **knobs)
    if switch is None:
        base = DRDFModule(DRDF(**{**net_args, "routing": "uniform"}), **knobs)
        base.load_state_dict({k: v for k, v in drdf.state_dict().items() if k in base.state_dict()})
    else:
        base = switches.plain_twin(drdf)
    drdf, base = drdf.to(device).train(), base.to(device).train()
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(batch_size, 3, image_size, image_size, generator=g),
             "input_ids": torch.randint(5, vocab, (batch_size, seq_len), generator=g),
             "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
             "label": torch.randint(0, drdf.net.num_classes, (batch_size,), generator=g)}
    batch = {k: v.to(device) for k, v in batch.items()}
    switched_batch = dict(batch)
    if switch == "channels_last":
        switched_batch["image"] = switches.channels_last(drdf, batch["image"])
    if switch == "compile":
        for mod in drdf.net.experts.modules():
            if isinstance(mod, GridEncoder):
                switches.compile_method(mod.cnn, "forward_features")
    method = train_step(drdf, switched_batch, drdf.optim.build(drdf.net, **(switches.optimizer_kwargs(switch)
                                                                               or {"foreach": True})), clip)
    baseline = train_step(base, batch, base.optim.build(base.net, foreach=True), clip)
    net = drdf.net
    count = lambda ps: round(sum(p.numel() for p in ps) / 1e6, 3)  # noqa: E731
    return BenchCase(
        method=method, baseline=baseline,
        details={"config": Path(config).name, "batch": batch_size, "image": image_size, "tokens": seq_len,
                 "experts": net.expert_names, "optimizer": drdf.optim.name, "gradient_clip": clip,
                 **({"switch": switch} if switch else {}),
                 "params_experts_M": count(net.experts.parameters()),
                 "params_routers_trainable_M": count(net.router_parameters()),
                 "params_routers_frozen_M": count(p for mod in (net.text_router, net.image_router, net.mwf)
                                                  if mod is not None for p in mod.parameters() if not p.requires_grad)})


@register("drdf: toy train step, DRDF / its 3 experts without routers", target=1.10, kind="overhead", grad=True)
def _toy_row() -> BenchCase:
    return train_step_case(CONFIGS / "toy.yaml", batch_size=32, seq_len=16, vocab=256)


@register("drdf: Hateful-Memes-size train step, DRDF / 3 VisualBERT experts without routers", target=1.10,
          kind="overhead", repeats=3, warmup=1, grad=True)
def _hm_row() -> BenchCase:
    """hateful_memes.yaml at full size (random init): 3 VisualBERT-base experts on ResNet-152 3x3 grids, a frozen
    bert-base text router and a fine-tuned ResNet-18 image router, 224-px images (40 tokens: memes are short,
    batches are padded to the longest)."""
    return train_step_case(CONFIGS / "hateful_memes.yaml", batch_size=8 if torch.cuda.is_available() else 2,
                           seq_len=40, vocab=30522)


# ----------------------------------------------------------------------------------------------------------
# Input pipeline (shared/bench/pipeline.py): the training DataLoader of configs/hateful_memes.yaml
# ----------------------------------------------------------------------------------------------------------
MEME_WORDS = ("when", "you", "the", "finally", "realize", "that", "your", "friends", "are", "not", "like", "them",
              "look", "at", "this", "guy", "going", "to", "school", "on", "monday", "morning", "everyone", "be",
              "people", "who", "think", "they", "can", "just", "take", "my", "pizza", "back", "weekend", "cat")


def meme_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` meme-like captions of 6-24 words (Hateful Memes captions are short, overlaid text)."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(MEME_WORDS, int(rng.integers(6, 25)))) for _ in range(n)]


def write_bench_memes(root, samples: int, files: int, size: tuple[int, int] = (600, 450), dev: int = 2):
    """A Hateful Memes folder (``train.jsonl`` / ``dev_seen.jsonl`` lines ``{id, img, text, label}``,
    ``img/<id>.png``): ``samples`` training memes cycling over ``files`` photo-like PNGs of ``size``, plus a
    WordPiece ``tokenizer/`` of the captions' words and letters (stands in for bert-base-uncased: the same
    ``BertTokenizerFast``, a smaller vocabulary)."""
    root = Path(root)
    names = [f"img/{k + 1:05d}.png" for k in range(files)]
    write_photos(root, names, size, noise=2.0, texture=0.3)
    texts = meme_texts(samples + dev)
    lines = [json.dumps({"id": i + 1, "img": names[i % files], "text": t, "label": i % 2})
             for i, t in enumerate(texts)]
    (root / "train.jsonl").write_text("\n".join(lines[:samples]) + "\n")
    (root / "dev_seen.jsonl").write_text("\n".join(lines[samples:]) + "\n")
    vocab = [*BERT_SPECIALS, *MEME_WORDS, *ascii_lowercase, *(f"##{c}" for c in ascii_lowercase)]
    BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True).save_pretrained(root / "tokenizer")
    return root


def pipeline_loader(root, workers: int, files: int, tiny: bool = False):
    """configs/hateful_memes.yaml's training DataLoader (PNG decode, resize 224, normalise; captions tokenised in
    the collate, max 128 tokens; batch 32) over a Hateful Memes folder of 600x450 PNGs written under ``root``;
    ``tiny``: 64x48 PNGs, 32 px, batch 2."""
    data = paper_data(CONFIGS / "hateful_memes.yaml")
    size = (600, 450)
    if tiny:
        data.update(image_size=32, batch_size=2)
        size = (64, 48)
    samples = data["batch_size"] * epoch_batches(data["batch_size"], workers, tiny)
    write_bench_memes(root, samples, min(files, samples), size)
    dm = DRDFDataModule(**{**data, "data_dir": str(root), "tokenizer": str(root / "tokenizer"),
                           "num_workers": workers})
    dm.setup("fit")
    return dm.train_dataloader(), {"layout": "Hateful Memes", "image_files": f"{size[0]}x{size[1]} PNG",
                                   "distinct_files": min(files, samples), "samples": samples,
                                   "transforms": f"resize {data['image_size']} + WordPiece tokenisation "
                                                 f"(max {data['max_length']})"}


# ----------------------------------------------------------------------------------------------------------
# make bench-gpu: the paper-size step, and its loader next to it
# ----------------------------------------------------------------------------------------------------------
def gpu_step(device: str, tiny: bool, batch: int | None = None, switch: str | None = None
             ) -> tuple[BenchCase, int, int]:
    case = (train_step_case(CONFIGS / "toy.yaml", batch or 2, 8, 256, device, switch) if tiny
            else train_step_case(CONFIGS / "hateful_memes.yaml", batch or 32, 40, 30522, device, switch))
    return case, case.details["batch"], case.details["batch"]


GPU_STEP = register_gpu_row(GpuRow(
    "drdf: train step / 3 experts without routers",
    "configs/hateful_memes.yaml: 3 VisualBERT-base experts on ResNet-152 3x3 grids, bert-base text router, "
    "ResNet-18 image router, batch 32, 224 px, 40 tokens, AdamW", gpu_step,
    switches=("fused", "channels_last", "compile")))
register_pipeline_row(PipelineRow(
    "pipeline/drdf: Hateful Memes loader vs train step",
    "configs/hateful_memes.yaml: jsonl + 600x450 PNG, resize 224, WordPiece tokenisation (max 128), batch 32",
    pipeline_loader, GPU_STEP.name))
