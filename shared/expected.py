"""What a project's toy default should print, from its committed study: the range over seeds, the baseline, a verdict.

Each project's study runs its toy default (``configs/toy.yaml`` as it is, one run per seed) beside its baseline and
commits the rows (``projects/<name>/results/*.json``). The study module's ``toy_expectation()`` reads them back as an
:class:`Expectation`; ``make train``'s table (``shared.summary``) puts a fresh run beside it. Nothing here is typed
in by hand, so a re-run study moves the range with it.

The range is mean ± 2 std over the study's seeds (3 seeds: a rough guide, not a confidence interval). On the same
seed and CPU thread count a run reproduces its study row exactly; another thread count changes the float sums in
the last bits, which training can grow into a different run of the same distribution.
"""

from __future__ import annotations

import importlib
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from shared.stats import cell

# the study module of each project, where it is not ``projects.<name>.study``
STUDY_MODULES = {"spm": "projects.spm.toy.study"}
# arguments of ``fit`` that leave the toy default as it is (run folder, logger, seed)
NEUTRAL_FLAGS = ("--overwrite", "--run_name", "--logger", "--seed_everything")


@dataclass(frozen=True)
class Expectation:
    """The toy default's metric as the README and CLAIMS.md quote it, with its committed seeds and baseline."""

    metric: str                                  # e.g. "local top-1"
    unit: str                                    # e.g. "%"
    higher_is_better: bool
    seeds: dict[int, float]                      # the toy default's value at each study seed, in ``unit``
    baseline: str                                # e.g. "ViT (1 scale)"
    baseline_values: Sequence[float]             # the baseline over the same seeds, in ``unit``
    source: str                                  # the result file and the command that regenerates it
    read: Callable[[dict], float]                # a run's summary metrics -> the value, in ``unit``
    cpu_threads: int | None = None               # the thread count of the study's runs, where it was fixed

    @property
    def range(self) -> tuple[float, float]:
        mean = statistics.mean(self.seeds.values())
        spread = 2 * statistics.stdev(self.seeds.values()) if len(self.seeds) > 1 else 0.0
        lo, hi = mean - spread, mean + spread
        return (max(lo, 0.0), min(hi, 100.0)) if self.unit == "%" else (lo, hi)

    def describe(self) -> str:
        """``61.8 ± 1.4 (seeds 0-2), range 59.0..64.6``."""
        lo, hi = self.range
        return f"{cell(list(self.seeds.values()))} (seeds {_seeds(self.seeds)}), range {lo:.1f}..{hi:.1f}"

    def verdict(self, value: float, seed: int | None) -> str:
        lo, hi = self.range
        side = "within range" if lo <= value <= hi else "below range" if value < lo else "above range"
        if side != "within range":
            side += " (better)" if (value > hi) == self.higher_is_better else " (worse)"
        if seed in self.seeds:
            same = abs(value - self.seeds[seed]) <= 1e-3 * max(1.0, abs(value))
            side += f"; seed {seed}: {self.seeds[seed]:.2f} " + ("reproduced" if same else "committed")
        return side


def _seeds(seeds: dict[int, float]) -> str:
    keys = sorted(seeds)
    return f"{keys[0]}-{keys[-1]}" if keys == list(range(keys[0], keys[-1] + 1)) and len(keys) > 1 else \
        ", ".join(map(str, keys))


def for_project(project: str) -> Expectation | None:
    """The project's committed expectation for its toy default, or None (no study module / no rows yet)."""
    try:
        module = importlib.import_module(STUDY_MODULES.get(project, f"projects.{project}.study"))
    except ModuleNotFoundError:
        return None
    read = getattr(module, "toy_expectation", None)
    return read() if read is not None else None


def settings_differ(project: str, command: Sequence[str]) -> str | None:
    """Why a run is not the toy default (another config, or an override that is not a neutral flag), or None."""
    args = list(command)
    if not args or args[0] != "fit":
        return "not a fit"
    config, i = None, 1
    while i < len(args):
        key = args[i].split("=", 1)[0]
        value = args[i].split("=", 1)[1] if "=" in args[i] else (args[i + 1] if i + 1 < len(args) else "")
        step = 1 if "=" in args[i] else 2
        if key == "--config":
            config = value
        elif key not in NEUTRAL_FLAGS:
            return f"{key} {value}".strip()
        i += step
    if config is None or config.replace("\\", "/").split("projects/", 1)[-1] != f"{project}/configs/toy.yaml":
        return f"--config {config}"
    return None
