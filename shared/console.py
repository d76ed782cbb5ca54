"""What a run prints and where it logs: the logger choice, and the library lines every run printed that say nothing.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger


def wandb_is_online() -> bool:
    """True when the user chose a wandb mode or has credentials; otherwise runs are logged offline."""
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


class QuietWandbLogger(WandbLogger):
    """Lightning's WandbLogger without its ``anonymous=None`` argument, which wandb answers on every run with
    "The anonymous setting has no effect and will be removed" (the setting is gone from wandb; nothing changes)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)


def quiet_known_warnings() -> None:
    """Silence the library lines every run printed that say nothing about the run (each one read and judged
    harmless here); every other warning still shows."""
    # Lightning 2.6's own pytree helper builds torch's LeafSpec, which torch 2.14 deprecates: Lightning's business
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
    # the frozen parts (SPM's text encoder and UNet, DRDF's experts, a pretrained backbone's dropout-free blocks)
    # are in eval mode on purpose: each module sets train / eval itself
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoTips())


class _NoTips(logging.Filter):
    """Drops Lightning's advertisement lines ("💡 Tip: For seamless cloud logging ... try installing litlogger")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


def build_logger(choice: str, project: str, run_name: str, run_dir: Path) -> Logger | bool:
    if choice == "none":
        return False
    if choice == "csv":
        return CSVLogger(save_dir=str(run_dir), name="csv")
    if choice == "wandb":
        run_dir.mkdir(parents=True, exist_ok=True)
        # WANDB_MODE, when set, wins inside wandb itself; offline=True only when nothing says otherwise.
        return QuietWandbLogger(project=f"cv-papers-{project}", name=run_name, save_dir=str(run_dir),
                                offline=not wandb_is_online(), log_model=False)
    raise ValueError(f"--logger must be one of wandb, csv, none; got {choice!r}")
