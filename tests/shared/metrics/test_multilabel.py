"""Tests for shared.metrics.multilabel: hand-computed examples, numpy references, chunking and real DDP."""

import math
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torchmetrics.functional.classification import multilabel_average_precision as tm_multilabel_ap

from shared.metrics import (
    MultiLabelAveragePrecision,
    MultiLabelThresholdMetrics,
    binary_metrics,
    multilabel_average_precision,
    multilabel_metrics,
    topk_accuracy,
)

KEYS = [
    "mAP",
    "CP",
    "CR",
    "CF1",
    "OP",
    "OR",
    "OF1",
    "CP_top3",
    "CR_top3",
    "CF1_top3",
    "OP_top3",
    "OR_top3",
    "OF1_top3",
]

# ---------------------------------------------------------------------------------------------------------
# Hand-computed AP example: 5 samples (rows s0..s4), 4 classes.
# class 0: scores .9 .8 .7 .6 .5, targets 1 0 1 -1 1. s3 is difficult -> removed from the ranking:
#          s0(+) s1(-) s2(+) s4(+) at ranks 1..4 -> AP = (1/1 + 2/3 + 3/4) / 3 = 0.805556
#          (counting s3 as a negative would give (1 + 2/3 + 3/5) / 3 = 0.755556)
# class 1: scores .2 .9 .9 .1 .5, targets 0 1 0 1 0. s1(+) and s2(-) tie at .9 -> tie-aware: both get the
#          precision at the end of the tie block = 1/2; then s4(-) s0(-) s3(+) -> 2/5.
#          AP = (1/2 + 2/5) / 2 = 0.45   (sample-order tie-break would give (1 + 2/5)/2 = 0.7)
# class 2: scores .3 .8 .6 .1 .7, targets 0 1 1 0 0 -> ranking s1(+) s4(-) s2(+) s0 s3
#          AP = (1/1 + 2/3) / 2 = 0.833333
# class 3: no positive (targets 0 0 -1 0 0) -> AP NaN, excluded from the mean.
# mAP = (0.805556 + 0.45 + 0.833333) / 3 * 100 = 69.6296
# ---------------------------------------------------------------------------------------------------------
AP_SCORES = torch.tensor(
    [
        [0.9, 0.2, 0.3, 0.0],
        [0.8, 0.9, 0.8, 0.0],
        [0.7, 0.9, 0.6, 0.0],
        [0.6, 0.1, 0.1, 0.0],
        [0.5, 0.5, 0.7, 0.0],
    ]
)
AP_TARGETS = torch.tensor(
    [
        [1, 0, 0, 0],
        [0, 1, 1, 0],
        [1, 0, 1, -1],
        [-1, 1, 0, 0],
        [1, 0, 0, 0],
    ]
)
AP_EXPECTED = [(1 + 2 / 3 + 3 / 4) / 3, (1 / 2 + 2 / 5) / 2, (1 + 2 / 3) / 2]


def test_ap_hand_computed():
    ap = multilabel_average_precision(AP_SCORES, AP_TARGETS)
    np.testing.assert_allclose(ap[:3].numpy(), AP_EXPECTED, atol=1e-9)
    assert math.isnan(ap[3].item())
    metric = MultiLabelAveragePrecision(4)
    metric.update(AP_SCORES, AP_TARGETS)
    assert metric.compute().item() == pytest.approx(100 * sum(AP_EXPECTED) / 3, abs=1e-4)
    assert metric.compute().item() == pytest.approx(69.6296, abs=1e-4)
    per_class = metric.compute_per_class()
    np.testing.assert_allclose(per_class[:3].numpy(), [80.5556, 45.0, 83.3333], atol=1e-4)
    per_class_avg_none = MultiLabelAveragePrecision(4, average=None)
    per_class_avg_none.update(AP_SCORES, AP_TARGETS)
    torch.testing.assert_close(per_class_avg_none.compute(), per_class, equal_nan=True)


def test_ap_tie_aware_is_order_invariant():
    perm = torch.tensor([4, 2, 0, 3, 1])
    a = multilabel_average_precision(AP_SCORES, AP_TARGETS)
    b = multilabel_average_precision(AP_SCORES[perm], AP_TARGETS[perm])
    torch.testing.assert_close(a, b, equal_nan=True)


def _random_data(n=97, c=7, seed=0, ties=False):
    g = np.random.default_rng(seed)
    scores = g.normal(size=(n, c)).astype(np.float32)
    if ties:
        scores = np.round(scores, 1)  # many ties
    targets = (g.random((n, c)) < 0.3).astype(np.int64)
    targets[g.random((n, c)) < 0.1] = -1  # difficult
    targets[:, -1] = np.where(targets[:, -1] == 1, 0, targets[:, -1])  # a class without positives
    return torch.from_numpy(scores), torch.from_numpy(targets)


def _np_ap_tie_aware(scores, targets):
    """Direct definition: mean over positives p of precision among non-difficult samples with score >= s_p."""
    out = []
    for c in range(scores.shape[1]):
        s, t = scores[:, c].astype(np.float64), targets[:, c]
        keep = t != -1
        s, t = s[keep], t[keep]
        pos = np.flatnonzero(t == 1)
        if len(pos) == 0:
            out.append(np.nan)
            continue
        out.append(np.mean([np.sum((s >= s[i]) & (t == 1)) / np.sum(s >= s[i]) for i in pos]))
    return np.array(out)


def _np_ap_mlgcn_loop(scores, targets):
    """ML-GCN AveragePrecisionMeter loop (difficult skipped), valid when there are no ties."""
    out = []
    for c in range(scores.shape[1]):
        order = np.argsort(-scores[:, c], kind="stable")
        pos_count = total = prec = 0.0
        for i in order:
            label = targets[i, c]
            if label == -1:
                continue
            total += 1
            if label == 1:
                pos_count += 1
                prec += pos_count / total
        out.append(prec / pos_count if pos_count else np.nan)
    return np.array(out)


@pytest.mark.filterwarnings("ignore:No positive samples found in target")
@pytest.mark.parametrize("ties", [False, True])
def test_ap_random_vs_references(ties):
    scores, targets = _random_data(ties=ties)
    ap = multilabel_average_precision(scores, targets).numpy()
    np.testing.assert_allclose(ap, _np_ap_tie_aware(scores.numpy(), targets.numpy()), atol=1e-9)
    if not ties:
        np.testing.assert_allclose(ap, _np_ap_mlgcn_loop(scores.numpy(), targets.numpy()), atol=1e-9)
    # independent implementation: torchmetrics (sklearn-style AP, -1 ignored), classes with positives only
    tm = tm_multilabel_ap(scores, targets, num_labels=scores.shape[1], average="none", ignore_index=-1)
    np.testing.assert_allclose(ap[:-1], tm[:-1].double().numpy(), atol=1e-5)
    metric = MultiLabelAveragePrecision(scores.shape[1])
    metric.update(scores, targets)
    assert metric.compute().item() == pytest.approx(100 * np.nanmean(ap), abs=1e-4)


# ---------------------------------------------------------------------------------------------------------
# Hand-computed threshold example: 4 samples, 4 classes, logits, threshold 0 (score >= 0 is positive).
#   s0: [ 2.0, -1.0,  0.5, -1.0]  targets [1, 0,  1, 0]   pred>=0 {0,2}     top2 {0,2}
#   s1: [ 1.0,  3.0, -2.0, -1.0]  targets [0, 1, -1, 0]   pred>=0 {0,1}     top2 {1,0}   (-1 -> negative)
#   s2: [-0.5,  0.0,  1.5, -1.0]  targets [0, 1,  1, 0]   pred>=0 {1,2}     top2 {2,1}   (0.0 counts)
#   s3: [ 0.2,  0.1,  0.3, -1.0]  targets [1, 0,  0, 1]   pred>=0 {0,1,2}   top2 {2,0}
# threshold:  class0 Nc/Np/Ng = 2/3/2, class1 2/3/2, class2 2/3/2, class3 0/0/1 (never predicted -> 0)
#   CP = (2/3 + 2/3 + 2/3 + 0)/4 = 0.5, CR = (1 + 1 + 1 + 0)/4 = 0.75, CF1 = 2*.5*.75/1.25 = 0.6
#   OP = 6/9, OR = 6/7, OF1 = 2*(2/3)*(6/7)/(2/3 + 6/7) = 0.75
# top-2:      class0 2/3/2, class1 2/2/2, class2 2/3/2, class3 0/0/1
#   CP = (2/3 + 1 + 2/3 + 0)/4 = 7/12, CR = 0.75, CF1 = 2*(7/12)*(3/4)/(7/12 + 3/4) = 0.65625
#   OP = 6/8, OR = 6/7, OF1 = 2*.75*(6/7)/(.75 + 6/7) = 0.8
# ---------------------------------------------------------------------------------------------------------
TH_SCORES = torch.tensor(
    [
        [2.0, -1.0, 0.5, -1.0],
        [1.0, 3.0, -2.0, -1.0],
        [-0.5, 0.0, 1.5, -1.0],
        [0.2, 0.1, 0.3, -1.0],
    ]
)
TH_TARGETS = torch.tensor([[1, 0, 1, 0], [0, 1, -1, 0], [0, 1, 1, 0], [1, 0, 0, 1]])
TH_EXPECTED = {"CP": 0.5, "CR": 0.75, "CF1": 0.6, "OP": 6 / 9, "OR": 6 / 7, "OF1": 0.75}
TH_EXPECTED_TOP2 = {"CP": 7 / 12, "CR": 0.75, "CF1": 0.65625, "OP": 0.75, "OR": 6 / 7, "OF1": 0.8}


def _assert_dict_close(got, expected_fraction, suffix=""):
    for k, v in expected_fraction.items():
        assert got[k + suffix].item() == pytest.approx(100 * v, abs=1e-4), k + suffix


def test_threshold_hand_computed():
    metric = MultiLabelThresholdMetrics(4)
    metric.update(TH_SCORES, TH_TARGETS)
    _assert_dict_close(metric.compute(), TH_EXPECTED)
    top2 = MultiLabelThresholdMetrics(4, top_k=2)
    top2.update(TH_SCORES, TH_TARGETS)
    _assert_dict_close(top2.compute(), TH_EXPECTED_TOP2)
    combined = multilabel_metrics(4, top_k=2)
    combined.update(TH_SCORES, TH_TARGETS)
    out = combined.compute()
    _assert_dict_close(out, TH_EXPECTED)
    _assert_dict_close(out, TH_EXPECTED_TOP2, suffix="_top2")


def test_threshold_zero_division_and_topk_ties():
    # nothing predicted, nothing present: every term is 0 (not NaN)
    metric = MultiLabelThresholdMetrics(3)
    metric.update(-torch.ones(2, 3), torch.zeros(2, 3, dtype=torch.long))
    assert all(v.item() == 0.0 for v in metric.compute().values())
    # equal scores at the top-1 boundary go to the lower class index
    top1 = MultiLabelThresholdMetrics(3, top_k=1)
    top1.update(torch.tensor([[1.0, 1.0, 1.0]]), torch.tensor([[1, 1, 1]]))
    assert top1.n_pred.tolist() == [1, 0, 0]


def _np_threshold(scores, targets, threshold=0.0, top_k=None):
    n, c = scores.shape
    t = targets.copy()
    t[t == -1] = 0
    pred = np.zeros((n, c), dtype=bool)
    for i in range(n):
        cand = range(c) if top_k is None else np.argsort(-scores[i], kind="stable")[:top_k]
        for j in cand:
            pred[i, j] = scores[i, j] >= threshold
    nc = np.array([np.sum(pred[:, j] & (t[:, j] == 1)) for j in range(c)], dtype=float)
    np_ = pred.sum(0).astype(float)
    ng = (t == 1).sum(0).astype(float)
    div = lambda a, b: a / b if b > 0 else 0.0
    cp = np.mean([div(nc[j], np_[j]) for j in range(c)])
    cr = np.mean([div(nc[j], ng[j]) for j in range(c)])
    op, or_ = div(nc.sum(), np_.sum()), div(nc.sum(), ng.sum())
    return {
        "CP": cp,
        "CR": cr,
        "CF1": div(2 * cp * cr, cp + cr),
        "OP": op,
        "OR": or_,
        "OF1": div(2 * op * or_, op + or_),
    }


@pytest.mark.parametrize("threshold", [0.0, 0.7])
def test_threshold_random_vs_numpy(threshold):
    scores, targets = _random_data(n=83, c=9, seed=1)
    for top_k in (None, 3):
        metric = MultiLabelThresholdMetrics(9, threshold=threshold, top_k=top_k)
        metric.update(scores, targets)
        _assert_dict_close(metric.compute(), _np_threshold(scores.numpy(), targets.numpy(), threshold, top_k))


def test_chunked_updates_equal_single_update_and_reset():
    scores, targets = _random_data(n=101, c=6, seed=2, ties=True)
    whole = multilabel_metrics(6)
    whole.update(scores, targets)
    expected = whole.compute()
    assert list(expected) == KEYS
    assert all(v.ndim == 0 for v in expected.values())
    chunked = multilabel_metrics(6)
    for idx in torch.tensor_split(torch.arange(101), [7, 40, 41, 90]):
        chunked.update(scores[idx], targets[idx])
    for k, v in chunked.compute().items():
        torch.testing.assert_close(v, expected[k])
    chunked.reset()
    chunked.update(AP_SCORES[:, :3].repeat(1, 2), AP_TARGETS[:, :3].repeat(1, 2))
    assert chunked.compute()["mAP"].item() == pytest.approx(69.6296, abs=1e-4)
    prefixed = multilabel_metrics(6, prefix="val/")
    prefixed.update(scores, targets)
    assert list(prefixed.compute()) == [f"val/{k}" for k in KEYS]


# ---------------------------------------------------------------------------------------------------------
# Real 2-process DDP (gloo, CPU): each rank updates its uneven share; each gets the 1-process result.
# ---------------------------------------------------------------------------------------------------------
def _ddp_data():
    scores, targets = _random_data(n=63, c=5, seed=3, ties=True)
    g = torch.Generator().manual_seed(4)
    cls_logits = torch.randn(63, 7, generator=g)
    cls_labels = torch.randint(0, 7, (63,), generator=g)
    bin_target = (torch.rand(63, generator=g) < 0.5).long()
    bin_logits = torch.randn(63, generator=g) + bin_target
    return scores, targets, cls_logits, cls_labels, bin_logits, bin_target


def _all_metrics(rows):
    scores, targets, cls_logits, cls_labels, bin_logits, bin_target = (x[rows] for x in _ddp_data())
    ml = multilabel_metrics(5)
    ap = MultiLabelAveragePrecision(5)
    th = MultiLabelThresholdMetrics(5, top_k=3)
    topk = topk_accuracy(7)
    binary = binary_metrics()
    for i in range(0, len(rows), 10):  # several batches per rank
        sl = slice(i, i + 10)
        for m in (ml, ap, th):
            m.update(scores[sl], targets[sl])
        topk.update(cls_logits[sl], cls_labels[sl])
        binary.update(bin_logits[sl], bin_target[sl])
    out = dict(ml.compute())
    out["ap_metric"] = ap.compute()
    out["ap_per_class"] = ml.compute_per_class()
    out.update({f"th_{k}": v for k, v in th.compute().items()})
    out.update(topk.compute())
    out.update(binary.compute())
    return out


def _ddp_worker(rank, world_size, init_method, out_dir):
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size)
    try:
        rows = torch.arange(0, 37) if rank == 0 else torch.arange(37, 63)  # uneven shares
        torch.save(_all_metrics(rows), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_single_process(tmp_path):
    expected = _all_metrics(torch.arange(63))
    init_method = f"tcp://127.0.0.1:{_free_port()}"
    # Two plain subprocesses: forking a process whose OpenMP pool is already warm can deadlock the children.
    worker = Path(__file__).with_name("ddp_metrics_worker.py")
    procs = [subprocess.Popen([sys.executable, str(worker), str(rank), "2", init_method, str(tmp_path)])
             for rank in range(2)]
    try:
        codes = [p.wait(timeout=240) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert codes == [0, 0], f"DDP metric workers exited with {codes}"
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert set(got) == set(expected)
        for k, v in expected.items():
            torch.testing.assert_close(got[k], v, equal_nan=True, msg=f"rank {rank} {k}")
