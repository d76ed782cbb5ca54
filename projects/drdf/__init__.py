"""DRDF: Dual-Router Dynamic Framework (arXiv 2107.09909), reconstructed; see README.md."""

from pathlib import Path

REPO_CONFIGS = Path(__file__).resolve().parent / "configs"
