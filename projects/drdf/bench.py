"""Bench rows for DRDF: the cost of the routers + MWF-Layer on top of the K experts (``make bench BENCH=drdf``).

Each row times one training step (forward, loss, backward, AdamW step) of DRDF divided by one step of the same
K experts run without routers (uniform weights, the static ensemble). Both steps use the *same* expert modules
and one AdamW (parameters without a gradient are skipped by it), so the ratio is the routers' and the
MWF-Layer's share and nothing else. Target: at most 1.10 with the default routers.
"""

from __future__ import annotations

import torch

from shared.bench import BenchCase, register


def _train_step(model, batch: dict, optimizer: torch.optim.Optimizer, routed: bool):
    from projects.drdf.model import expert_cross_entropy, fuse

    def step() -> None:
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

    return step


def train_step_case(model_kwargs: dict, batch_size: int, image_size: int, seq_len: int, vocab: int, details: dict,
                    device: str | None = None) -> BenchCase:
    """DRDF step vs its K experts' step without routers; ``device`` None: CUDA when there is one."""
    from projects.drdf.model import DRDF

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    drdf = DRDF(routing="drdf", **model_kwargs).to(device).train()
    optimizer = torch.optim.AdamW(drdf.parameters(), lr=1e-5, foreach=True)
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(batch_size, 3, image_size, image_size, generator=g),
             "input_ids": torch.randint(5, vocab, (batch_size, seq_len), generator=g),
             "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
             "label": torch.randint(0, 2, (batch_size,), generator=g)}
    batch = {k: v.to(device) for k, v in batch.items()}
    count = lambda ps: round(sum(p.numel() for p in ps) / 1e6, 3)  # noqa: E731
    return BenchCase(
        method=_train_step(drdf, batch, optimizer, routed=True),
        baseline=_train_step(drdf, batch, optimizer, routed=False),
        details={**details, "batch": batch_size, "image": image_size, "tokens": seq_len, "experts": drdf.expert_names,
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
