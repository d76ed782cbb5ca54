"""The bench registry and its alternating timer (no timing assertions: ratios only on clearly unequal work)."""

import json
import time

import pytest
import torch

from shared.bench import BenchCase, register, registered_rows, time_pair
from shared.bench.__main__ import main as bench_main


def test_time_pair_reports_medians_and_the_ratio() -> None:
    fast, slow = (lambda: time.sleep(0.001)), (lambda: time.sleep(0.02))
    result = time_pair(fast, slow, repeats=5, warmup=1)
    assert set(result) == {"method_s", "baseline_s", "method_over_baseline"}
    assert result["method_s"] < result["baseline_s"]
    assert result["method_over_baseline"] < 0.5


def test_register_rejects_duplicates_and_bad_kinds() -> None:
    @register("test/registry-dup", target=1.0, kind="speedup")
    def _row() -> BenchCase:
        return BenchCase(method=lambda: None, baseline=lambda: None)

    assert any(r.name == "test/registry-dup" for r in registered_rows())
    with pytest.raises(ValueError, match="registered twice"):
        register("test/registry-dup", target=1.0, kind="speedup")(_row)
    with pytest.raises(ValueError, match="kind must be"):
        register("test/registry-kind", target=1.0, kind="faster")


def test_runner_writes_the_json_rows(tmp_path) -> None:
    @register("test/registry-runner sleep", target=2.0, kind="speedup", repeats=3, warmup=1)
    def _row() -> BenchCase:
        return BenchCase(method=lambda: time.sleep(0.001), baseline=lambda: time.sleep(0.01), details={"n": 1})

    out = tmp_path / "bench.json"
    assert bench_main(["registry-runner", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["name"] for r in rows] == ["test/registry-runner sleep"]
    assert rows[0]["ratio"] > 2.0 and rows[0]["target"] == 2.0 and rows[0]["details"]["pass"] is True
    assert bench_main(["no-such-row", "--out", str(out)]) == 2


def test_time_pair_grad_flag_switches_autograd() -> None:
    seen = []
    record = lambda: seen.append((torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
    time_pair(record, record, repeats=1, warmup=0)
    time_pair(record, record, repeats=1, warmup=0, grad=True)
    assert seen[:2] == [(False, True)] * 2 and seen[2:] == [(True, False)] * 2


def test_shared_names_no_project_the_projects_register_their_rows() -> None:
    """The bench entry points find every project's rows through the ``cv_papers.bench`` entry points."""
    from shared.bench import discover
    from shared.bench.registry import gpu_rows, pipeline_rows

    discover()
    projects = {r.name.split(":")[0] for r in registered_rows()}
    assert {"rams_trans", "did", "drdf", "spm", "shared/vit"} <= projects
    assert {r.name.split(":")[0] for r in gpu_rows()} == {"rams_trans", "did", "drdf", "spm"}
    assert {r.gpu_row for r in pipeline_rows()} <= {r.name for r in gpu_rows()}


def test_rows_come_project_by_project_whatever_imported_first() -> None:
    """Another test (or tool) importing ``projects.spm.bench`` before ``discover()`` must not reorder the table."""
    import projects.rams_trans.bench  # noqa: F401  (imported out of order on purpose)
    import projects.spm.bench  # noqa: F401
    from shared.bench import discover
    from shared.bench.registry import gpu_rows, pipeline_rows

    discover()
    projects = [r.name.split(":")[0] for r in gpu_rows()]
    assert projects == sorted(projects) and projects[0] == "did"
    shared_first = [r.name.startswith("shared/") for r in registered_rows()]
    assert shared_first == sorted(shared_first, reverse=True) and shared_first[0]
    assert [r.name for r in pipeline_rows()] == sorted(r.name for r in pipeline_rows())
