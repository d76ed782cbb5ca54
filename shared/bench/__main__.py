"""``python -m shared.bench [FILTER]``: run every registered row (or those whose name contains FILTER), then the
input-pipeline rows (``shared/bench/pipeline.py``; ``FILTER=pipeline``: only those)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from shared.bench import pipeline
from shared.bench.registry import discover, pipeline_rows, registered_rows, time_pair

REPO = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("filter", nargs="?", default="", help="run only rows whose name contains this")
    parser.add_argument("--out", default=str(REPO / "logs" / "bench.json"))
    args = parser.parse_args(argv)

    discover()
    rows = [r for r in registered_rows() if args.filter in r.name]
    pipes = pipeline.matching(args.filter)
    if not rows and not pipes:
        known = [r.name for r in registered_rows()] + [r.name for r in pipeline_rows()]
        print(f"no bench row matches {args.filter!r}; known: {known}")
        return 2
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {device}")
    results = []
    for row in rows:
        case = row.setup()
        timing = time_pair(case.method, case.baseline, row.repeats, row.warmup, row.grad)
        r = timing["method_over_baseline"]
        ratio = 1.0 / r if row.kind == "speedup" else r
        ok = ratio >= row.target if row.kind == "speedup" else ratio <= row.target
        details = {**case.details, **timing, "kind": row.kind, "device": device, "pass": ok}
        results.append({"name": row.name, "ratio": round(ratio, 4), "target": row.target, "details": details})
        sign = ">=" if row.kind == "speedup" else "<="
        print(f"{row.name:<48} {row.kind:>8} {ratio:8.3f}x  target {sign} {row.target:<5}  "
              f"{'ok' if ok else 'MISS'}   method {timing['method_s'] * 1e3:9.2f} ms  "
              f"baseline {timing['baseline_s'] * 1e3:9.2f} ms", flush=True)
    if pipes:
        results += pipeline.run(pipes)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
