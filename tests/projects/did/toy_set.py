"""The toy set the DiD tests share (``conftest.py`` writes it once per session) and the CLI arguments that read it."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
TOY_CONFIG = REPO / "projects" / "did" / "configs" / "toy.yaml"
TOY = dict(n_train=32, n_val=72, size=64, seed=0)
"""Val scene 63 is empty (every 64th) and dropped, leaving 71 validation images (odd: 36 + 35 on two processes)."""


def toy_args(root: Path) -> list[str]:
    """The toy config with its data section pointed at the shared set (the same sizes, so it is not rewritten)."""
    return ["--config", str(TOY_CONFIG), "--data.root", str(root), "--data.toy_train", str(TOY["n_train"]),
            "--data.toy_val", str(TOY["n_val"]), "--data.batch_size", "8"]
