"""Bench rows for DRDF: the cost of the routers + MWF-Layer on top of the K experts (``make bench BENCH=drdf``).

Each row times one training step (forward, loss, backward, AdamW step) of DRDF divided by one step of the same
K experts run without routers (uniform weights, the static ensemble). Both steps use the *same* expert modules
and one AdamW (parameters without a gradient are skipped by it), so the ratio is the routers' and the
MWF-Layer's share and nothing else. Target: at most 1.10 with the default routers.

``pipeline_loader`` (the Hateful Memes training DataLoader on files in its layout) serves ``shared/bench/pipeline.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from shared.bench import BenchCase, GpuRow, PipelineRow, register, register_gpu_row, register_pipeline_row, switches

CONFIGS = Path(__file__).parent / "configs"


def _train_step(model, batch: dict, optimizer: torch.optim.Optimizer, routed: bool):
    from projects.drdf.model import expert_cross_entropy, fuse

    def step() -> torch.Tensor:
        if routed:
            out = model(batch)
            logits, expert_logits = out["logits"], out["expert_logits"]
        else:  # the K experts alone: uniform weights, no router, no MWF
            expert_logits = torch.stack([e(batch)[0] for e in model.experts])
            weights = expert_logits.new_full((expert_logits.shape[1], len(model.experts)), 1 / len(model.experts))
            logits = fuse(expert_logits, weights, model.fusion)
        loss = torch.nn.functional.cross_entropy(logits, batch["label"])
        loss = loss + 0.5 * expert_cross_entropy(expert_logits, batch["label"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def train_step_case(model_kwargs: dict, batch_size: int, image_size: int, seq_len: int, vocab: int, details: dict,
                    device: str | None = None, switch: str | None = None) -> BenchCase:
    """DRDF step vs its K experts' step without routers; ``device`` None: CUDA when there is one.

    ``switch`` (``shared/bench/switches.py``: ``fused``, ``channels_last`` or ``compile``): instead the DRDF step
    with that switch vs the same step without it (twins with the same weights, no dropout; ``compile``: each
    expert's grid CNN). Each step returns its loss."""
    from projects.drdf.experts import GridEncoder
    from projects.drdf.model import DRDF

    switches.check(switch, ("fused", "channels_last", "compile"))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    drdf = DRDF(routing="drdf", **model_kwargs).to(device).train()
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(batch_size, 3, image_size, image_size, generator=g),
             "input_ids": torch.randint(5, vocab, (batch_size, seq_len), generator=g),
             "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
             "label": torch.randint(0, 2, (batch_size,), generator=g)}
    batch = {k: v.to(device) for k, v in batch.items()}
    if switch is None:
        optimizer = torch.optim.AdamW(drdf.parameters(), lr=1e-5, foreach=True)
        method = _train_step(drdf, batch, optimizer, routed=True)
        baseline = _train_step(drdf, batch, optimizer, routed=False)
    else:
        plain = switches.plain_twin(drdf)
        switched_batch = dict(batch)
        if switch == "channels_last":
            switched_batch["image"] = switches.channels_last(drdf, batch["image"])
        if switch == "compile":
            for m in drdf.experts.modules():
                if isinstance(m, GridEncoder):
                    switches.compile_method(m.cnn, "forward_features")
        kwargs = switches.optimizer_kwargs(switch) or {"foreach": True}
        method = _train_step(drdf, switched_batch, torch.optim.AdamW(drdf.parameters(), lr=1e-5, **kwargs), True)
        baseline = _train_step(plain, batch, torch.optim.AdamW(plain.parameters(), lr=1e-5, foreach=True), True)
    count = lambda ps: round(sum(p.numel() for p in ps) / 1e6, 3)  # noqa: E731
    return BenchCase(
        method=method, baseline=baseline,
        details={**details, "batch": batch_size, "image": image_size, "tokens": seq_len, "experts": drdf.expert_names,
                 **({"switch": switch} if switch else {}),
                 "params_experts_M": count(drdf.experts.parameters()),
                 "params_routers_trainable_M": count(drdf.router_parameters()),
                 "params_routers_frozen_M": count(p for m in (drdf.text_router, drdf.image_router, drdf.mwf)
                                                  if m is not None for p in m.parameters() if not p.requires_grad)})


def toy_model_kwargs() -> dict:
    """The DRDF of ``configs/toy.yaml`` (interpolations resolved for 32-px images)."""
    import yaml

    from projects.drdf import REPO_CONFIGS

    cfg = yaml.safe_load((REPO_CONFIGS / "toy.yaml").read_text())["model"]
    return dict(num_classes=2, expert=cfg.get("expert"), num_experts=cfg.get("num_experts"),
                experts=cfg.get("experts"), expert_kwargs={**cfg["expert_kwargs"], "image_size": 32},
                text_router=cfg["text_router"], image_router=cfg["image_router"], mwf=cfg["mwf"],
                fusion=cfg.get("fusion", "logits"))


HATEFUL_MEMES_KWARGS = dict(num_classes=2, expert="visual_bert", num_experts=3,
                            expert_kwargs={"size": "full", "image_size": 224, "grid": 3},
                            text_router={"kind": "bert", "size": "full", "freeze": True},
                            image_router={"backbone": "resnet18", "image_size": 224})
"""hateful_memes.yaml at full size (random init): 3 VisualBERT-base experts on ResNet-152 3x3 grids, a frozen
bert-base text router and a fine-tuned ResNet-18 image router, 224-px images (40 tokens in the rows: memes are short,
batches are padded to the longest)."""


@register("drdf: toy train step, DRDF / its 3 experts without routers", target=1.10, kind="overhead", grad=True)
def _toy_row() -> BenchCase:
    return train_step_case(toy_model_kwargs(), batch_size=32, image_size=32, seq_len=16, vocab=256,
                           details={"setting": "toy.yaml"})


@register("drdf: Hateful-Memes-size train step, DRDF / 3 VisualBERT experts without routers", target=1.10,
          kind="overhead", repeats=3, warmup=1, grad=True)
def _hm_row() -> BenchCase:
    return train_step_case(HATEFUL_MEMES_KWARGS, batch_size=8 if torch.cuda.is_available() else 2, image_size=224,
                           seq_len=40, vocab=30522, details={"setting": "hateful_memes.yaml (random init)"})


# ----------------------------------------------------------------------------------------------------------
# Input pipeline (shared/bench/pipeline.py): the training DataLoader of configs/hateful_memes.yaml
# ----------------------------------------------------------------------------------------------------------
MEME_WORDS = ("when", "you", "the", "finally", "realize", "that", "your", "friends", "are", "not", "like", "them",
              "look", "at", "this", "guy", "going", "to", "school", "on", "monday", "morning", "everyone", "be",
              "people", "who", "think", "they", "can", "just", "take", "my", "pizza", "back", "weekend", "cat")


def meme_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` meme-like captions of 6-24 words (Hateful Memes captions are short, overlaid text)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(MEME_WORDS, int(rng.integers(6, 25)))) for _ in range(n)]


def write_bench_memes(root, samples: int, files: int, size: tuple[int, int] = (600, 450), dev: int = 2):
    """A Hateful Memes folder (``train.jsonl`` / ``dev_seen.jsonl`` lines ``{id, img, text, label}``,
    ``img/<id>.png``): ``samples`` training memes cycling over ``files`` photo-like PNGs of ``size``, plus a
    WordPiece ``tokenizer/`` of the captions' words and letters (stands in for bert-base-uncased: the same
    ``BertTokenizerFast``, a smaller vocabulary)."""
    from string import ascii_lowercase

    from transformers import BertTokenizerFast

    from shared.backbones.text import BERT_SPECIALS
    from shared.bench.photos import write_photos

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
    from projects.drdf.data import DRDFDataModule
    from shared.bench.pipeline import epoch_batches, paper_data

    data = paper_data(CONFIGS / "hateful_memes.yaml")
    size = (600, 450)
    if tiny:
        data.update(image_size=32, batch_size=2)
        size = (64, 48)
    samples = data["batch_size"] * epoch_batches(data["batch_size"], workers, tiny)
    write_bench_memes(root, samples, min(files, samples), size)
    dm = DRDFDataModule(**{**data, "num_classes": 2, "data_dir": str(root), "tokenizer": str(root / "tokenizer"),
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
    if tiny:
        case = train_step_case(toy_model_kwargs(), batch or 2, 32, 8, 256, {"setting": "toy.yaml"}, device, switch)
    else:
        case = train_step_case(HATEFUL_MEMES_KWARGS, batch or 32, 224, 40, 30522,
                               {"setting": "hateful_memes.yaml (random init)"}, device, switch)
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
