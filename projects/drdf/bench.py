"""Bench rows for DRDF: the cost of the routers + MWF-Layer on top of the K experts (``make bench BENCH=drdf``).

Each row times one training step (forward, loss, backward, AdamW step) of DRDF divided by one step of the same
K experts run without routers (uniform weights). Target: at most 1.10 with the default routers.
"""

from __future__ import annotations

import torch

from shared.bench import BenchCase, register


def _train_step(model, batch: dict, optimizer: torch.optim.Optimizer):
    from projects.drdf.model import expert_cross_entropy

    def step() -> None:
        # The bench times inside inference_mode; a training step needs autograd back.
        with torch.inference_mode(False), torch.enable_grad():
            out = model(batch)
            loss = torch.nn.functional.cross_entropy(out["logits"], batch["label"])
            loss = loss + 0.5 * expert_cross_entropy(out["expert_logits"], batch["label"])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step


def _case(model_kwargs: dict, batch_size: int, image_size: int, seq_len: int, vocab: int, details: dict) -> BenchCase:
    from projects.drdf.model import DRDF

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    drdf = DRDF(routing="drdf", **model_kwargs).to(device)
    experts_only = DRDF(routing="uniform", **model_kwargs).to(device)
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(batch_size, 3, image_size, image_size, generator=g),
             "input_ids": torch.randint(5, vocab, (batch_size, seq_len), generator=g),
             "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
             "label": torch.randint(0, 2, (batch_size,), generator=g)}
    batch = {k: v.to(device) for k, v in batch.items()}
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return BenchCase(
        method=_train_step(drdf, batch, torch.optim.AdamW(drdf.parameters(), lr=1e-5)),
        baseline=_train_step(experts_only, batch, torch.optim.AdamW(experts_only.parameters(), lr=1e-5)),
        details={**details, "batch": batch_size, "image": image_size, "tokens": seq_len,
                 "params_drdf_M": round(params(drdf) / 1e6, 2),
                 "params_experts_M": round(params(experts_only) / 1e6, 2)})


@register("drdf: toy train step, DRDF / 3 experts without routers", target=1.10, kind="overhead")
def _toy_row() -> BenchCase:
    import yaml

    from projects.drdf import REPO_CONFIGS

    cfg = yaml.safe_load((REPO_CONFIGS / "toy.yaml").read_text())["model"]
    kw = dict(num_classes=2, expert=cfg["expert"], num_experts=cfg["num_experts"],
              expert_kwargs={**cfg["expert_kwargs"], "image_size": 32}, text_router=cfg["text_router"],
              image_router=cfg["image_router"], mwf=cfg["mwf"])
    return _case(kw, batch_size=32, image_size=32, seq_len=16, vocab=256, details={"setting": "toy.yaml"})


@register("drdf: Hateful-Memes-size train step, DRDF / 3 VisualBERT experts without routers", target=1.10,
          kind="overhead", repeats=3, warmup=1)
def _hm_row() -> BenchCase:
    """hateful_memes.yaml at full size (random init): bert-base frozen text router + ResNet-18 image router."""
    kw = dict(num_classes=2, expert="visual_bert", num_experts=3,
              expert_kwargs={"size": "full", "image_size": 224, "grid": 3},
              text_router={"kind": "bert", "size": "full", "freeze": True},
              image_router={"backbone": "resnet18", "image_size": 224})
    return _case(kw, batch_size=8 if torch.cuda.is_available() else 2, image_size=224, seq_len=40, vocab=30522,
                 details={"setting": "hateful_memes.yaml (random init)"})
