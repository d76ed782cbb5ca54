"""Input-pipeline rows of ``make bench`` (``python -m shared.bench.pipeline [FILTER]``): can the loader keep up?

For RAMS-Trans (CUB-200-2011), DiD (COCO 2014) and DRDF (Hateful Memes), each row writes a small dataset in the
real on-disk layout (photo-size JPEG / PNG files, the real index files; ``shared/bench/photos.py``) into a
temporary folder, builds the project's own training DataLoader through its DataModule at the paper config's
settings (batch size, decode, augmentations, tokenisation; the loader of the project's registered
:class:`~shared.bench.registry.PipelineRow`) with one worker per core, and measures

* loader images/s: one epoch in which each worker builds the same number of batches (at least 3 and 64 images),
  timed after a first, warm-up epoch that starts the (persistent) workers; nothing else runs meanwhile;
* step images/s: the paper-size training step of the project (``make bench-gpu``'s row builders, random weights)
  on this machine, batch / median step time: the paper's batch on a GPU, batch 2 on a CPU.

``ratio`` = loader / step images/s; at >= 1 the loader keeps up, below it the loader is the bottleneck.
``make bench`` runs these rows after the registered ones (``BENCH=pipeline``: only these) into ``logs/bench.json``;
``make bench-gpu`` runs them too, next to the fp32 and bf16 steps it measured. This entry point writes
``logs/bench_pipeline.json``; ``--tiny``: a few 64x48 images, small sizes, tiny models, 0 workers (the tests).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from shared.bench.registry import PipelineRow, discover, gpu_rows, pipeline_rows, time_one

REPO = Path(__file__).resolve().parents[2]
MAX_FILES = 64      # distinct image files per row; more samples cycle over them (decode cost is per sample)
IMAGES_PER_WORKER = 64
TARGET = 1.0        # loader images/s over step images/s: at least 1, or the GPU waits on the loader


def matching(text: str) -> list[PipelineRow]:
    discover()
    return [r for r in pipeline_rows() if text in r.name]


def cores() -> int:
    """The cores this process may run on (the container's share, not the host's count where they differ)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def epoch_batches(batch: int, workers: int, tiny: bool = False) -> int:
    """Batches in a timed epoch: the same number for each worker (workers take batches in turn), at least 3 and
    ``IMAGES_PER_WORKER`` images each; 3 when ``tiny``."""
    return 3 if tiny else max(workers, 1) * max(3, -(-IMAGES_PER_WORKER // batch))


def paper_data(*configs: str | Path) -> dict:
    """The ``data:`` sections of the config files ``configs`` merged in order (later ones win), as written:
    ``${...}`` interpolations stay strings for the caller to override (roots, num_classes)."""
    data: dict = {}
    for path in configs:
        data.update(yaml.safe_load(Path(path).read_text()).get("data") or {})
    return data


# ----------------------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------------------
def _images_in(batch: object) -> int:
    return int((batch["image"] if isinstance(batch, dict) else batch[0]).shape[0])


def measure_loader(loader: torch.utils.data.DataLoader) -> dict:
    """Images/s of one full epoch of ``loader``, timed after a first (warm-up) epoch that starts its workers."""
    start = time.perf_counter()
    it = iter(loader)
    _images_in(next(it))
    first_batch_s = time.perf_counter() - start
    for _ in it:
        pass
    images = batches = 0
    start = time.perf_counter()
    for batch in loader:
        images += _images_in(batch)
        batches += 1
    epoch_s = time.perf_counter() - start
    return {"loader_images_per_s": images / epoch_s, "epoch_s": epoch_s, "batches_timed": batches,
            "images_timed": images, "first_batch_s": first_batch_s}


def measure_step(row: PipelineRow, device: str, tiny: bool) -> dict:
    """Images/s of the project's paper-size training step (method of its ``make bench-gpu`` row): the paper's
    batch on CUDA, batch 2 on a CPU (per-image rate); median of 10 steps after one (on a CPU or tiny: one step
    after one: minutes at ViT-B/16 448, and the loader is hundreds of times faster there)."""
    gpu_row = next(r for r in gpu_rows() if r.name == row.gpu_row)
    case, images, _ = gpu_row.build(device, tiny, None if device == "cuda" or tiny else 2)
    repeats = 10 if device == "cuda" and not tiny else 1
    seconds = time_one(case.method, repeats=repeats, warmup=1, grad=True)
    del case
    return {"steps": {"fp32": images / seconds}, "step_batch": images, "step_ms": seconds * 1e3,
            "step_device": device}


def measure_row(row: PipelineRow, tiny: bool, workers: int, device: str, steps: dict[str, float] | None = None
                ) -> dict:
    """One row's ``bench.json`` record: its loader on files written to a temporary folder, then its step (unless
    ``steps``, images/s by precision, were measured already)."""
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as root:
        loader, details = row.loader(Path(root), workers=workers, files=MAX_FILES, tiny=tiny)
        loading = {"workers": workers, "batch": loader.batch_size, "pin_memory": loader.pin_memory,
                   "persistent_workers": loader.persistent_workers, **measure_loader(loader)}
        loading["images_per_s_per_worker"] = loading["loader_images_per_s"] / max(workers, 1)
        del loader                          # stops its persistent workers
    stepping = {"steps": steps, "step_device": device} if steps else measure_step(row, device, tiny)
    fastest = max(stepping["steps"].values())
    ratio = loading["loader_images_per_s"] / fastest
    return {"name": row.name, "ratio": round(ratio, 4), "target": TARGET,
            "details": {"kind": "throughput", "paper": row.paper, **details, **loading, **stepping,
                        "step_images_per_s": fastest, "bottleneck": "loader" if ratio < TARGET else "step",
                        "pass": ratio >= TARGET, "tiny": tiny}}


def run(rows: list[PipelineRow], tiny: bool = False, workers: int | None = None, device: str | None = None
        ) -> list[dict]:
    """Measure ``rows`` (loader workers: one per core, 0 when ``tiny``; the step on CUDA when there is one),
    print the table, return one ``bench.json`` record per row."""
    workers = (0 if tiny else cores()) if workers is None else workers
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    results = []
    for row in rows:
        print(f"measuring {row.name} ({workers} workers, step on {device})", flush=True)
        results.append(measure_row(row, tiny, workers, device))
    print_table(results, workers, device, tiny)
    return results


def print_table(results: list[dict], workers: int, device: str, tiny: bool) -> None:
    """The rows as one table (printed at the end: model builds may print in between)."""
    print(f"input pipeline: {workers} workers on {cores()} cores, pin_memory={torch.cuda.is_available()}, "
          f"step on {device}" + (" (tiny)" if tiny else ""))
    print(f"{'row':<50} {'workers':>7} {'batch':>5} {'loader img/s':>12} {'step img/s':>22} {'loader/step':>11}  "
          "bottleneck")
    for record in results:
        d = record["details"]
        steps = ", ".join(f"{p} {v:.2f}" for p, v in d["steps"].items())
        print(f"{record['name']:<50} {d['workers']:>7} {d['batch']:>5} {d['loader_images_per_s']:12.1f} "
              f"{steps:>22} {record['ratio']:11.3f}  {d['bottleneck']}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("filter", nargs="?", default="", help="run only rows whose name contains this")
    parser.add_argument("--tiny", action="store_true", help="a few small images, tiny models, 0 workers (tests)")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: one per core)")
    parser.add_argument("--out", default=str(REPO / "logs" / "bench_pipeline.json"))
    args = parser.parse_args(argv)
    rows = matching(args.filter)
    if not rows:
        print(f"no pipeline row matches {args.filter!r}; known: {[r.name for r in pipeline_rows()]}")
        return 2
    results = run(rows, tiny=args.tiny, workers=args.workers)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
