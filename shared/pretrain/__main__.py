"""Pretrain the toy world's ViT: ``python -m shared.pretrain [--threads 2] [--steps N] [--patch-size 4]``.

Renders the corpus once (``data/pretrain/``), trains in ``--work`` (resumable: run the same command again),
then writes ``<out>.safetensors`` (the timm ViT without head, loadable with ``--model.pretrained``) and
``<out>.json`` (the card: recipe, corpus, steps, held-out accuracy, how to regenerate).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from pathlib import Path

from safetensors.torch import save_file

from shared.pretrain.train import Recipe, train

DEFAULT_OUT = Path(__file__).parent / "toy_vit"


def main(argv: list[str] | None = None) -> None:
    defaults = Recipe()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patch-size", type=int, default=defaults.patch_size,
                   help="ViT patch in pixels: 8 is the 8x8-grid toy ViT, 4 the 16x16-grid one (same 64 px images)")
    p.add_argument("--work", type=Path, default=None, help="checkpoints and history (default logs/pretrain/<out name>)")
    p.add_argument("--data", type=Path, default=Path("data/pretrain"), help="corpus cache")
    p.add_argument("--out", type=Path, default=None,
                   help="weights + card prefix (.safetensors / .json); default shared/pretrain/toy_vit for patch 8, "
                        "toy_vit_p<patch> otherwise")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                   help="torch threads (results are reproducible for a given count)")
    for name in ("steps", "batch_size", "n_train", "n_val", "seed", "warmup_steps"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--eval-every", type=int, default=1000)
    args = p.parse_args(argv)
    if args.out is None:
        args.out = DEFAULT_OUT if args.patch_size == 8 else DEFAULT_OUT.with_name(f"toy_vit_p{args.patch_size}")
    if args.work is None:
        args.work = Path("logs/pretrain") / args.out.name
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    recipe = Recipe(steps=args.steps, batch_size=args.batch_size, n_train=args.n_train, n_val=args.n_val,
                    seed=args.seed, warmup_steps=args.warmup_steps, lr=args.lr, patch_size=args.patch_size)
    net, card = train(recipe, args.work, args.data, args.threads, eval_every=args.eval_every)

    weights = args.out.with_suffix(".safetensors")
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in net.backbone.model.state_dict().items()}
    save_file(state, str(weights), metadata={"format": "pt", "recipe": json.dumps(card["recipe"])})
    card.update(file=weights.name, sha256=hashlib.sha256(weights.read_bytes()).hexdigest(),
                params=sum(v.numel() for v in state.values()),
                regenerate="python -m shared.pretrain " + " ".join(sys.argv[1:] if argv is None else argv))
    args.out.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n")
    print(f"wrote {weights} and {args.out.with_suffix('.json')}: held-out {card['held_out']}")


if __name__ == "__main__":
    main()
