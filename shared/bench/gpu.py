"""``make bench-gpu`` (``python -m shared.bench.gpu [FILTER]``): the projects' paper-size rows on one GPU.

Each row is a comparison a project registers (:class:`~shared.bench.registry.GpuRow`) at the paper's size, with random
weights, on the CUDA device. For the method and its baseline it prints the median time of one call, the images per
second and the peak GPU memory (``torch.cuda.max_memory_allocated`` over the first call, everything resident
included), next to the method/baseline ratio (the alternating, synchronised timer of ``make bench``, after
warm-up). ``--bf16`` times every row a second time in bf16: training rows under bf16 autocast, generation rows
with the UNet's weights in bf16 (as pipelines load it). Writes ``logs/bench_gpu.json``.

Then the input-pipeline rows (``shared/bench/pipeline.py``): the RAMS-Trans, DiD and DRDF training loaders at
their paper settings with one worker per core, next to the images/s of the steps measured above (``"pipeline"``
in the json).

``--switches``: then, per training row, the GPU speed switches it has (``shared/bench/switches.py``: fused
optimizer step, channels-last CNNs, ``torch.compile`` of the backbone) at the last precision asked (bf16 with
``--bf16``): the step with the switch against its twin without it (same weights and inputs, no dropout), the
alternating timer's ratio, images/s, peak memory and the first call's seconds (compile time), and whether the
losses of their first two steps agree; ``helps`` = ratio < 0.97 with the same losses (``"switches"`` in the json).
The cheap switches go first, then ``compile`` while at least ``COMPILE_RESERVE_S`` of the budget remain. The json
is rewritten after every row, so a run stopped from outside keeps what it measured.

``--dry-run``: the same rows with tiny shapes (tiny ViT, tiny UNet, 2 SPMs; tiny loaders with 0 workers) on the CPU
in seconds; the tests run it (the ``compile`` switch only with ``--compile-dry``: inductor on the CPU takes tens of
seconds).
With no CUDA device (and no ``--dry-run``) it says so in one line and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from shared.bench import pipeline, switches
from shared.bench.registry import BenchCase, GpuRow, discover, gpu_rows, pipeline_rows, time_pair

REPO = Path(__file__).resolve().parents[2]
HELPS = 0.97                    # a switch helps when its step takes under 97% of the plain step's time ...
LOSS_RTOL = {"fp32": 1e-3, "bf16": 2e-2}   # ... and the twins' first two losses agree to this (relative)
COMPILE_RESERVE_S = 90.0        # a compile variant starts only while this much of the budget remains
TINY_VIT = dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)   # the dry run's ViT (--dry-run)
NO_CUDA = "bench-gpu: no CUDA device on this machine (torch.cuda.is_available() is False); nothing measured"


# ----------------------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def strict_fp32():
    """No TF32 while a row is built: the SPM row checks that ours and the official loop give the same loss."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def autocast(fn: Callable[[], object], device: str, bf16: bool) -> Callable[[], object]:
    if not bf16:
        return fn

    def run() -> object:
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            return fn()
    return run


def measure(case: BenchCase, images: tuple[int, int], device: str, bf16: bool, grad: bool, repeats: int,
            warmup: int) -> dict:
    """Times (ms), images/s and peak memory (GiB) of method and baseline, and the median per-pair ratio.
    ``bf16``: under bf16 autocast."""
    cuda = device == "cuda"
    method, baseline = (autocast(f, device, bf16) for f in (case.method, case.baseline))
    peaks = {}
    for name, fn in (("method", method), ("baseline", baseline)):   # the first call: a warm-up and the peak
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode(not grad), torch.set_grad_enabled(grad):
            fn()
        if cuda:
            torch.cuda.synchronize()
        peaks[name] = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    timing = time_pair(method, baseline, repeats, max(warmup - 1, 0), grad)
    out = {"ratio": timing["method_over_baseline"]}
    for i, name in enumerate(("method", "baseline")):
        s = timing[f"{name}_s"]
        out.update({f"{name}_ms": s * 1e3, f"{name}_per_s": images[i] / s, f"{name}_images": images[i],
                    f"{name}_peak_gib": peaks[name]})
    return out


def run_row(row: GpuRow, precisions: list[str], device: str, tiny: bool) -> list[dict]:
    """Build the row (again in bf16 where it has ``build_bf16``), measure it in each precision and print it."""
    results, case = [], None
    repeats, warmup = (1, 1) if tiny else (row.repeats, row.warmup)
    for precision in precisions:
        bf16 = precision == "bf16"
        if case is None or (bf16 and row.build_bf16 is not None):
            case = None                      # let the fp32 case go first
            with strict_fp32():
                case, *images = (row.build_bf16 if bf16 else row.build)(device, tiny)
        r = measure(case, tuple(images), device, bf16 and row.build_bf16 is None, row.grad, repeats, warmup)
        print_row(row.name, precision, r, row.unit)
        results.append({"name": row.name, "paper": row.paper, "unit": row.unit, "precision": precision, **r,
                        "details": case.details})
    return results


def _gib(x: float | None) -> str:
    return f"{x:7.2f}" if x is not None else "      -"


def print_row(name: str, precision: str, r: dict, unit: str) -> None:
    print(f"{name:<62} {precision:>4}  {r['method_ms']:10.2f} {r['baseline_ms']:10.2f}  {r['ratio']:6.3f}x  "
          f"{r['method_per_s']:9.2f} {r['baseline_per_s']:9.2f} {unit + '/s':<10} "
          f"{_gib(r['method_peak_gib'])} {_gib(r['baseline_peak_gib'])}", flush=True)


def measure_switch(case: BenchCase, images: int, device: str, precision: str, repeats: int, warmup: int) -> dict:
    """A switch's twins (``case.method``: the step with it, ``case.baseline``: without it), each step returning its
    loss: two first calls each (the first one timed: compile time; peak memory over both; their losses compared),
    then the alternating timer. ``helps``: ratio < ``HELPS`` with losses agreeing to ``LOSS_RTOL[precision]``."""
    cuda = device == "cuda"
    fns = {name: autocast(fn, device, precision == "bf16") for name, fn in (("switched", case.method),
                                                                           ("plain", case.baseline))}
    out: dict = {}
    for name, fn in fns.items():
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        losses = [float(fn())]                        # float(): waits for the step
        out[f"{name}_first_call_s"] = time.perf_counter() - start
        losses.append(float(fn()))
        out[f"{name}_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        out[f"{name}_losses"] = losses
    pairs = zip(out["switched_losses"], out["plain_losses"], strict=True)
    diff = max(abs(a - b) / max(abs(b), 1e-12) for a, b in pairs)
    timing = time_pair(fns["switched"], fns["plain"], repeats, max(warmup - 2, 0), grad=True)
    out.update(ratio=timing["method_over_baseline"], loss_rel_diff=diff, same_loss=diff <= LOSS_RTOL[precision])
    for name, key in (("switched", "method_s"), ("plain", "baseline_s")):
        out.update({f"{name}_ms": timing[key] * 1e3, f"{name}_per_s": images / timing[key]})
    out["helps"] = out["same_loss"] and out["ratio"] < HELPS
    return out


def print_switch(label: str, precision: str, r: dict, unit: str) -> None:
    """One switch's line in the columns of the rows above (method = with the switch, base = without) + verdict."""
    verdict = ("helps" if r["helps"] else "no gain" if r["same_loss"] else "LOSSES DIFFER")
    print(f"{label:<62} {precision:>4}  {r['switched_ms']:10.2f} {r['plain_ms']:10.2f}  {r['ratio']:6.3f}x  "
          f"{r['switched_per_s']:9.2f} {r['plain_per_s']:9.2f} {unit + '/s':<10} "
          f"{_gib(r['switched_peak_gib'])} {_gib(r['plain_peak_gib'])}  {verdict:<13} "
          f"(loss diff {r['loss_rel_diff']:.1e}, first call {r['switched_first_call_s']:.1f} s)", flush=True)


def run_switches(rows: list[GpuRow], precision: str, device: str, tiny: bool, compile_dry: bool, start: float,
                 budget_s: float, records: list[dict], save: Callable[[], None]) -> bool:
    """Every switch of the selected rows, the cheap ones first (``compile`` last, while ``COMPILE_RESERVE_S`` of
    the budget remain), each in a fresh pair of twins; prints each, appends its record to ``records`` and saves.
    Returns whether one failed."""
    failed = False
    print(f"speed switches ({precision}): method = the step with the switch, base = its twin without it (no dropout); "
          f"helps = ratio < {HELPS} with the same losses (rtol {LOSS_RTOL[precision]:.0e})")
    for switch in switches.SWITCHES:
        for row in (r for r in rows if switch in r.switches):
            label = f"{row.name.split(':')[0]}: train step, {switch} on / off"
            record = {"name": label, "row": row.name, "switch": switch, "precision": precision, "unit": row.unit}
            left = budget_s - (time.perf_counter() - start)
            skip = ("compile in a dry run (--compile-dry times it)" if switch == "compile" and tiny and not compile_dry
                    else "time budget" if left < (COMPILE_RESERVE_S if switch == "compile" else 0.0) else None)
            if skip:
                print(f"{label:<62} skipped: {skip}", flush=True)
                records.append({**record, "skipped": skip})
                continue
            try:
                with strict_fp32():
                    case, images, _ = row.build(device, tiny, switch=switch)
                r = measure_switch(case, images, device, precision, *((1, 1) if tiny else (row.repeats, row.warmup)))
                print_switch(label, precision, r, row.unit)
                records.append({**record, **r, "details": case.details})
            except Exception as err:  # noqa: BLE001 -- as for the rows: one failing switch must not lose the others
                failed = True
                print(f"{label:<62} ERROR {type(err).__name__}: {(str(err).splitlines() or [''])[0]}", flush=True)
                records.append({**record, "error": f"{type(err).__name__}: {err}"})
            case = None
            if switch == "compile":
                torch._dynamo.reset()
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
            save()
    return failed


def run_pipeline(filter_: str, results: list[dict], device: str, tiny: bool, start: float, budget_s: float
                 ) -> tuple[list[dict], bool]:
    """The input-pipeline rows (``shared/bench/pipeline.py``) of the projects whose step ran above, or that match
    the filter: each project's training loader, one worker per core, against that step's images/s (fp32 and bf16;
    the fastest decides the bottleneck). Returns their records and whether one failed; ``main`` prints them."""
    rates: dict[str, dict[str, float]] = {}
    for r in results:
        if "method_per_s" in r:
            rates.setdefault(r["name"], {})[r["precision"]] = r["method_per_s"]
    workers = 0 if tiny else pipeline.cores()
    records, failed = [], False
    for row in (p for p in pipeline_rows() if filter_ in p.name or p.gpu_row in rates):
        if time.perf_counter() - start > budget_s:
            print(f"{row.name:<62} skipped: past the {budget_s:.0f} s budget", flush=True)
            records.append({"name": row.name, "skipped": "time budget"})
            continue
        try:
            records.append(pipeline.measure_row(row, tiny, workers, device, rates.get(row.gpu_row)))
        except Exception as err:  # noqa: BLE001 -- as for the rows above
            failed = True
            print(f"{row.name:<62} ERROR {type(err).__name__}: {(str(err).splitlines() or [''])[0]}", flush=True)
            records.append({"name": row.name, "error": f"{type(err).__name__}: {err}"})
    return records, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("filter", nargs="?", default="", help="run only rows whose name contains this")
    parser.add_argument("--bf16", action="store_true",
                        help="also time every row in bf16 (autocast; the generation rows: bf16 weights)")
    parser.add_argument("--switches", action="store_true",
                        help="then time the training rows' speed switches (fused optimizer, channels-last, compile) "
                             "at the last precision asked")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (seconds; for the tests)")
    parser.add_argument("--compile-dry", action="store_true",
                        help="with --dry-run and --switches: time the compile switch too (inductor on the CPU)")
    parser.add_argument("--budget-s", type=float, default=400.0,
                        help="start no row after this many seconds (keeps `make bench-gpu` under 8 minutes)")
    parser.add_argument("--out", default=str(REPO / "logs" / "bench_gpu.json"))
    args = parser.parse_args(argv)

    if not args.dry_run and not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    device = "cpu" if args.dry_run else "cuda"
    discover()
    steps_of_pipes = {p.gpu_row for p in pipeline.matching(args.filter)}      # a pipeline row needs its step
    rows = [r for r in gpu_rows() if args.filter in r.name or r.name in steps_of_pipes]
    if not rows:
        known = [r.name for r in gpu_rows() + pipeline_rows()]
        print(f"no bench-gpu row matches {args.filter!r}; known: {known}")
        return 2
    precisions = ["fp32", "bf16"] if args.bf16 else ["fp32"]
    name = (f"cpu ({torch.get_num_threads()} threads), tiny shapes (dry run)" if args.dry_run
            else torch.cuda.get_device_name())
    print(f"device: {name}; torch {torch.__version__}; random weights"
          + ("" if args.dry_run else "; fp32 = torch's defaults (TF32 convolutions, fp32 matmuls)"))
    print(f"{'row':<62} {'prec':>4}  {'method ms':>10} {'base ms':>10}  {'ratio':>7}  {'method/s':>9} "
          f"{'base/s':>9} {'unit':<10} {'peak GiB':>7} {'(base)':>7}")
    start, results, failed, pipes, switched = time.perf_counter(), [], False, [], []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        """(Re)write the json with everything measured so far."""
        out.write_text(json.dumps({"device": name, "torch": torch.__version__, "dry_run": args.dry_run,
                                   "precisions": precisions, "total_s": round(time.perf_counter() - start, 1),
                                   "rows": results, "pipeline": pipes, "switches": switched},
                                  indent=2, default=str))
    # The loaders run right after the last training row they compare with (before the long SPM rows and the budget).
    last_step = max((i for i, r in enumerate(rows) if r.name in {p.gpu_row for p in pipeline_rows()}), default=-1)
    for i, row in enumerate(rows):
        record = {"name": row.name, "paper": row.paper, "unit": row.unit}
        if time.perf_counter() - start > args.budget_s:
            print(f"{row.name:<62} skipped: past the {args.budget_s:.0f} s budget", flush=True)
            results.append({**record, "skipped": "time budget"})
            continue
        try:
            results += run_row(row, precisions, device, args.dry_run)
        except Exception as err:  # noqa: BLE001 -- one failing row (e.g. out of memory) must not lose the others
            failed = True
            first_line = (str(err).splitlines() or [""])[0]
            print(f"{row.name:<62} ERROR {type(err).__name__}: {first_line}", flush=True)
            results.append({**record, "error": f"{type(err).__name__}: {err}"})
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        if i == last_step:
            pipes, pipes_failed = run_pipeline(args.filter, results, device, args.dry_run, start, args.budget_s)
            failed = failed or pipes_failed
        save()
    if any("details" in r for r in pipes):
        pipeline.print_table([r for r in pipes if "details" in r], 0 if args.dry_run else pipeline.cores(), device,
                             args.dry_run)
    if args.switches and any(r.switches for r in rows):
        failed = run_switches(rows, precisions[-1], device, args.dry_run, args.compile_dry, start, args.budget_s,
                              switched, save) or failed
    save()
    print(f"total {time.perf_counter() - start:.1f} s; wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
