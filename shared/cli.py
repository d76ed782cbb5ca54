"""One Lightning CLI launcher for every project.

``python -m projects.<name> fit|validate|test|predict --config projects/<name>/configs/<x>.yaml [--config
shared/configs/<preset>.yaml] [--dotted.overrides ...]``

What it adds to :class:`lightning.pytorch.cli.LightningCLI`:

* omegaconf+ parser mode, so configs interpolate (``${data.num_classes}``, ``${oc.env:VAR,default}``) and the
  interpolations resolve after the command-line overrides: ``--data.num_classes 5`` reaches
  ``model.num_classes: ${data.num_classes}`` too (plain omegaconf mode resolves each file as it loads it);
* one run folder ``logs/<project>/<run_name>/`` (``run_name`` defaults to the first config file's stem),
  holding the checkpoints, the logger files, ``config.yaml`` and ``summary.json`` (``shared.run_folder``); a
  second ``fit`` of a name gets ``<name>-2`` unless ``--ckpt_path last`` continues it or ``--overwrite true``
  replaces it;
* the default logger (``shared.console``): wandb, offline unless the user has logged in or set ``WANDB_MODE``
  (``--logger csv`` switches to the CSV logger, ``--logger none`` disables logging); the run's whole config is
  saved to the logger; the library lines every run printed are filtered;
* the default callbacks: ``RunCheckpoint`` (``last``, the run's end state, plus the best on the module's
  ``monitor`` metric), LearningRateMonitor, a progress bar, ``RunSummary``, ``shared.predict.PredictionWriter``
  (``predict`` writes ``predictions.jsonl`` / ``.csv`` in the run folder; ``--write_overlays true`` draws the
  boxes), ``shared.resume.RandomStates`` (the random states in every checkpoint, so a resume is exact),
  ``shared.nonfinite.NonFiniteGuard`` (a non-finite loss or gradient stops the run, ``--on_nonfinite skip``
  skips such steps instead), ``shared.interrupt.GracefulStop`` (SIGTERM / SIGINT / SIGUSR1 stop after the
  current step with a checkpoint), ``shared.batching.EffectiveBatch`` and, with ``--model.ema_decay``,
  ``shared.ema``'s EMA of the weights;
* errors (``shared.errors``): a bad input is one line and exit code 2; the exit code and ``summary.json``'s
  ``outcome`` tell ``finished``, ``interrupted`` (75) and ``diverged`` (3) apart (``shared.interrupt``).

A LightningModule tells the launcher what to monitor with two class attributes::

    monitor = "val/top1"      # metric for the best checkpoint and the headline number
    monitor_mode = "max"      # or "min"
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from jsonargparse import ArgumentError, set_parsing_settings
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from shared.backbones.weights import torch_load
from shared.batching import EffectiveBatch
from shared.console import build_logger, quiet_known_warnings
from shared.ema import ema_callback
from shared.errors import finish_wandb, one_line, run_with_clear_errors
from shared.hparams import HPARAMS_FORMAT, HPARAMS_FORMAT_KEY, HparamsFormat
from shared.interrupt import GracefulStop
from shared.nonfinite import NonFiniteGuard
from shared.predict import PredictionWriter
from shared.resume import RandomStates
from shared.run_folder import RunCheckpoint, RunSummary, find_callback, holds_a_run

REPO_ROOT = Path(__file__).resolve().parents[1]


def logs_dir() -> Path:
    """Where runs live: ``$CV_PAPERS_LOGS``, else ``<repo>/logs`` (read at each call, so a test or a notebook can
    point runs elsewhere without a new process)."""
    return Path(os.environ.get("CV_PAPERS_LOGS", REPO_ROOT / "logs"))


# ``${data.x}`` written in a config means the run's ``data.x``, wherever the subcommand nests the config.
set_parsing_settings(omegaconf_absolute_to_relative_paths=True)


class LoggedConfigCallback(SaveConfigCallback):
    """Saves ``config.yaml`` in the log dir (as Lightning does) and the whole config to the logger."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if trainer.logger is None:
            return
        config = self.parser.dump(self.config, skip_none=False, format="yaml")
        config_dict = yaml.safe_load(config)
        if isinstance(trainer.logger, WandbLogger):
            trainer.logger.experiment.config.update(config_dict, allow_val_change=True)
        else:
            trainer.logger.log_hyperparams({"config": config_dict})


class ProjectCLI(LightningCLI):
    """The shared LightningCLI: one ``project`` name, one module class and one data module class."""

    def __init__(self, model_class: type[LightningModule], datamodule_class: type[LightningDataModule] | None,
                 project: str, args: list[str] | None = None, run: bool = True) -> None:
        self.project = project
        super().__init__(
            model_class,
            datamodule_class,
            save_config_callback=LoggedConfigCallback,
            save_config_kwargs={"overwrite": True},
            # no abbreviations: `--trainer.max_step 5` is a typo to name, not `max_steps` to guess
            parser_kwargs={"parser_mode": "omegaconf+", "exit_on_error": False, "allow_abbrev": False},
            seed_everything_default=42,
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--run_name", type=str | None, default=None,
                            help="Run folder under logs/<project>/ (default: the first config file's stem).")
        parser.add_argument("--logger", type=Literal["wandb", "csv", "none"], default="wandb",
                            help="Default logger when trainer.logger is not set: wandb (offline unless logged "
                                 "in or WANDB_MODE is set), csv, or none.")
        parser.add_argument("--write_overlays", type=bool, default=False,
                            help="predict: also draw each image's boxes into <run folder>/overlays/.")
        parser.add_argument("--write_attention", type=bool, default=False,
                            help="predict: also draw the attention rollout (DiD: and each discovered class map) "
                                 "over each image, beside its boxes, into <run folder>/attention/.")
        parser.add_argument("--overwrite", type=bool, default=False,
                            help="fit: replace the checkpoints and summaries of an earlier run of this name (by "
                                 "default a new fit goes to <name>-2, -3, ... instead).")
        parser.add_argument("--on_nonfinite", type=Literal["stop", "skip"], default="stop",
                            help="fit: a non-finite loss or gradient norm stops the run (exit code 3), or skips "
                                 "the step (at most --max_nonfinite_skips times).")
        parser.add_argument("--max_nonfinite_skips", type=int, default=10,
                            help="fit, --on_nonfinite skip: the run stops at the next non-finite step after these.")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse; a bad key or value ends the run with one line naming it (no usage dump)."""
        self._args = sys.argv[1:] if args is None else args
        self._config_files = config_files(self._args)
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            message = " ".join(line.strip() for line in str(err).strip().splitlines())
            sys.stderr.write(f"error: {message}{self._suggest(parser, message)}\n"
                             f"(see `python -m projects.{self.project} {self._requested_subcommand()} --help`)\n")
            sys.exit(2)
        self._check_ckpt_path()

    def _suggest(self, parser: LightningArgumentParser, message: str) -> str:
        """``; did you mean --model.optim.lr?`` for each unrecognised ``--key`` close to a known one."""
        unknown = re.findall(r"(--[\w.]+)", message.split("unrecognized arguments:", 1)[-1]) \
            if "unrecognized arguments:" in message else []
        sub = parser._subcommands_action._name_parser_map.get(self._requested_subcommand()) \
            if getattr(parser, "_subcommands_action", None) else None
        known = [k for k in (sub or parser)._option_string_actions if k.startswith("--")]
        hints = [f"{key} -> {' / '.join(close)}" for key in unknown
                 if (close := difflib.get_close_matches(key, known, n=3, cutoff=0.75))]
        return f"; did you mean: {'; '.join(hints)}" if hints else ""

    def _parse_ckpt_path(self) -> None:
        """Lightning replaces the model's settings with the ``--ckpt_path`` checkpoint's hyper-parameters (so the
        weights fit). Say which values of the config / command line that replaces, in one warning line; a
        checkpoint whose hyper-parameters this model does not take (another project's) is one error line."""
        subcommand = self.config.get("subcommand")
        before = _flat(self.config[subcommand].get("model")) if subcommand else {}
        try:
            super()._parse_ckpt_path()
        except (ArgumentError, SystemExit) as err:
            ckpt = self.config[subcommand].get("ckpt_path")
            raise ValueError(f"--ckpt_path {ckpt}: its hyper-parameters do not fit this model ({one_line(err)}); "
                             f"expected a checkpoint written by `python -m projects.{self.project} fit`") from None
        after = _flat(self.config[subcommand].get("model")) if subcommand else {}
        replaced = [f"model.{k}: {before[k]!r} -> {after[k]!r}" for k in before if k in after and before[k] != after[k]]
        if replaced:
            sys.stderr.write(f"warning: --ckpt_path: the checkpoint's hyper-parameters replace {len(replaced)} "
                             f"model value(s) of the config / command line: {'; '.join(replaced)}\n")

    def _requested_subcommand(self) -> str:
        args = self._args if isinstance(self._args, list | tuple) else []
        return next((a for a in args if a in LightningCLI.subcommands()), "fit")

    def _check_ckpt_path(self) -> None:
        """A ``--ckpt_path`` file Lightning could not load (a refused pickle, truncated, not a Lightning checkpoint,
        written by an earlier version's flat module arguments) ends the run with one line naming it, before
        Lightning reads it (its hyper-parameters, then the states) and fails with a traceback."""
        subcommand = self.config.get("subcommand")
        ckpt = self.config[subcommand].get("ckpt_path") if subcommand else None
        if str(ckpt) == "last":   # this run folder's last.ckpt, when it has one (a resume)
            last = logs_dir() / self.project / self._run_name() / "checkpoints" / "last.ckpt"
            ckpt = last if last.is_file() else None
        if ckpt is None or str(ckpt) in ("best", "hpc") or str(ckpt).startswith("registry") or "://" in str(ckpt):
            return
        path = Path(ckpt).expanduser()
        if path.is_dir():
            return  # a sharded checkpoint folder (FSDP / DeepSpeed): the strategy reads it
        if not path.is_file():
            raise FileNotFoundError(f"--ckpt_path {path}: checkpoint file not found (expected a .ckpt written by "
                                    "this CLI, or `last` / `best`)")
        state = torch_load(path, mmap=True, advice="re-save the checkpoint without it (plain values in the "
                           "hyper-parameters) in an environment where you trust the file")
        keys = state if isinstance(state, dict) else {}
        missing = [k for k in ("pytorch-lightning_version", "state_dict") if k not in keys]
        if subcommand == "fit" and keys and "optimizer_states" not in keys:
            missing.append("optimizer_states (saved with save_weights_only?)")
        if missing:
            found = list(keys)[:5] if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"--ckpt_path {path}: not a Lightning checkpoint to {subcommand} from (no "
                             f"{', '.join(missing)}; found {found}); expected a .ckpt written by `fit`")
        hparams = keys.get("hyper_parameters") or {}
        accepted = inspect.signature(self.model_class).parameters
        unknown = sorted(k for k in hparams if k not in accepted and not k.startswith("_"))
        if unknown and HPARAMS_FORMAT_KEY not in keys:
            raise ValueError(f"--ckpt_path {path}: written by an earlier version of this repository (module "
                             f"hyper-parameters format 1: flat arguments such as {unknown[:3]}); this version "
                             f"(format {HPARAMS_FORMAT}) groups them (see `--print_config`). Train again, or use the "
                             f"checkpoint from a checkout before shared/hparams.py was added (`git log "
                             f"--diff-filter=A -- shared/hparams.py`)")

    # ---------------------------------------------------------------- run folder and defaults
    def _run_name(self) -> str:
        subcommand = self.config.get("subcommand")
        name = (self.config[subcommand] if subcommand else self.config).get("run_name")
        if name:
            return name
        # omegaconf+ drops the parsed ``config`` list when it resolves, so the names come from the arguments
        return Path(self._config_files[0]).stem if self._config_files else "default"

    def _fit_run_name(self) -> str:
        """The run folder of this command. A ``fit`` without ``--ckpt_path`` never writes into a folder that holds
        an earlier run (its ``summary.json`` or ``last.ckpt``): it takes ``<name>-2``, ``-3``, ... and says so, or,
        with ``--overwrite true``, clears that run's checkpoints and summaries first. A folder with a SLURM
        ``hpc_ckpt_<n>.ckpt`` is a requeued job's: it stays (Lightning resumes from that checkpoint). Every process
        of a DDP run picks the same folder (the new one holds neither file until the first checkpoint)."""
        name = self._run_name()
        subcommand = self.config.get("subcommand")
        if subcommand != "fit" or self.config[subcommand].get("ckpt_path") is not None:
            return name
        base = logs_dir() / self.project
        if any((base / name).glob("hpc_ckpt_*.ckpt")):
            return name     # a job SLURM requeued: Lightning resumes it from its hpc checkpoint, in this folder
        if self._get(self.config, "overwrite"):
            if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0))) == 0:
                shutil.rmtree(base / name / "checkpoints", ignore_errors=True)
                for old in (base / name).glob("*summary.json"):
                    old.unlink()
            return name
        chosen, k = name, 1
        while holds_a_run(base / chosen):
            k += 1
            chosen = f"{name}-{k}"
        if chosen != name and int(os.environ.get("LOCAL_RANK", 0)) == 0:
            sys.stderr.write(f"note: {base / name} holds an earlier run; this one is {base / chosen} "
                             f"(--ckpt_path last continues the earlier one, --overwrite true replaces it)\n")
        return chosen

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        run_name = self._fit_run_name()
        run_dir = logs_dir() / self.project / run_name
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        if trainer_cfg.get("logger") in (None, True):
            kwargs["logger"] = build_logger(self._get(self.config, "logger"), self.project, run_name, run_dir)
        has_logger = kwargs.get("logger", trainer_cfg.get("logger")) not in (False, None)
        if trainer_cfg.get("default_root_dir") is None:
            kwargs["default_root_dir"] = str(run_dir)

        monitor = getattr(self.model, "monitor", None)
        callbacks: list[Callback] = [
            RunCheckpoint(dirpath=str(run_dir / "checkpoints"), filename="best-epoch{epoch}-step{step}",
                          auto_insert_metric_name=False, monitor=monitor,
                          mode=getattr(self.model, "monitor_mode", "max"), save_top_k=1 if monitor else 0,
                          save_last=True),
            TQDMProgressBar(refresh_rate=int(os.environ.get("PROGRESS_REFRESH", 10))),
            RunSummary(self.project, run_name, run_dir, getattr(self.model, "headline_metric", monitor)),
            PredictionWriter(run_dir, bool(self._get(self.config, "write_overlays")),
                             bool(self._get(self.config, "write_attention"))),
            RandomStates(),
            HparamsFormat(),
            NonFiniteGuard(self._get(self.config, "on_nonfinite"), self._get(self.config, "max_nonfinite_skips")),
            GracefulStop(),
            EffectiveBatch(),
        ]
        if has_logger:
            callbacks.append(LearningRateMonitor(logging_interval="step"))
        ema = ema_callback(self.model) if self.config.get("subcommand") in ("fit", None) else None
        if ema is not None:        # --model.ema_decay: the other commands read the EMA weights from the checkpoint
            callbacks.append(ema)
        user_callbacks = trainer_cfg.get("callbacks") or []
        kwargs["callbacks"] = [*callbacks, *(user_callbacks if isinstance(user_callbacks, list) else [user_callbacks])]
        return super().instantiate_trainer(**kwargs)


def _flat(namespace: Any, prefix: str = "") -> dict[str, Any]:
    """A (nested) jsonargparse Namespace or dict as {"a.b": value}."""
    if namespace is None:
        return {}
    items = namespace.as_dict() if hasattr(namespace, "as_dict") else namespace
    out: dict[str, Any] = {}
    for key, value in items.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_files(args: Any) -> list[str]:
    """The ``--config`` files named in command-line ``args`` (a list of strings), in order."""
    if not isinstance(args, list | tuple):
        return []
    found = []
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            found.append(str(args[i + 1]))
        elif isinstance(arg, str) and arg.startswith("--config="):
            found.append(arg.split("=", 1)[1])
    return found


def main(model_class: type[LightningModule], datamodule_class: type[LightningDataModule] | None, project: str,
         args: list[str] | None = None) -> ProjectCLI:
    """Entry point used by every ``projects/<name>/__main__.py``.

    A missing file or folder, or an unreadable input (``FileNotFoundError``, ``ValueError``), ends the run
    with its one-line message; ``CV_PAPERS_DEBUG=1`` shows the traceback instead.
    """
    torch.set_float32_matmul_precision("high")
    quiet_known_warnings()
    cli = run_with_clear_errors(ProjectCLI, model_class, datamodule_class, project, args=args)
    summary = find_callback(getattr(cli, "trainer", None), RunSummary)
    if summary is not None and summary.result_line:
        finish_wandb(0)                       # its closing lines first: the result is the last line
        sys.stderr.write(summary.result_line + "\n")
    return cli


