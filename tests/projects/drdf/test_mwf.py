"""MWF-Layer, fusion unit, router temperature and loss invariants (docs/papers/drdf.md §3, §5, §6)."""

from __future__ import annotations

import pytest
import torch

from projects.drdf.losses import drdf_loss, expert_cross_entropy, load_balance_loss
from projects.drdf.model import MWFLayer, fuse
from projects.drdf.module import Temperature

B, K, DT, DV = 6, 3, 5, 7


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, DT, generator=g), torch.randn(B, K, generator=g) * 3,
            torch.randn(B, DV, generator=g), torch.randn(B, K, generator=g) * 3)


@pytest.mark.parametrize("gate", ["softmax", "sigmoid", "fixed", "concat", "text", "image"])
@pytest.mark.parametrize("mix", ["prob", "logit"])
@pytest.mark.parametrize("top_k", [None, 1, 2])
def test_weights_are_a_distribution_for_every_variant(gate: str, mix: str, top_k: int | None) -> None:
    mwf = MWFLayer(DT, DV, K, gate=gate, mix=mix, top_k=top_k, hidden=8 if gate == "softmax" else 0)
    w, a = mwf(*_inputs(), temperature=2.0)
    assert w.shape == (B, K) and a.shape == (B, 2)
    assert (w >= 0).all() and (a >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(B))
    torch.testing.assert_close(a.sum(-1), torch.ones(B))
    if top_k is not None:
        assert ((w > 0).sum(-1) <= top_k).all()


def test_default_is_the_convex_mix_of_the_two_router_distributions() -> None:
    h_t, r_t, h_v, r_v = _inputs(1)
    mwf = MWFLayer(DT, DV, K)
    w, a = mwf(h_t, r_t, h_v, r_v)
    expected = a[:, :1] * r_t.softmax(-1) + a[:, 1:] * r_v.softmax(-1)
    torch.testing.assert_close(w, expected)
    assert a.std(0).sum() > 0  # per-sample modality importance, not one value for the dataset


def test_fixed_text_image_gates_and_logit_mix() -> None:
    h_t, r_t, h_v, r_v = _inputs(2)
    w, a = MWFLayer(DT, DV, K, gate="fixed")(h_t, r_t, h_v, r_v)
    torch.testing.assert_close(a, torch.full((B, 2), 0.5))
    torch.testing.assert_close(w, 0.5 * r_t.softmax(-1) + 0.5 * r_v.softmax(-1))
    w, _ = MWFLayer(DT, DV, K, gate="text")(h_t, r_t, h_v, r_v)
    torch.testing.assert_close(w, r_t.softmax(-1))
    w, _ = MWFLayer(DT, DV, K, gate="image", mix="logit")(h_t, r_t, h_v, r_v, temperature=3.0)
    torch.testing.assert_close(w, (r_v / 3.0).softmax(-1))


def test_temperature_flattens_the_weights_and_the_schedule_anneals() -> None:
    mwf = MWFLayer(DT, DV, K)
    w1, _ = mwf(*_inputs(3), temperature=1.0)
    w30, _ = mwf(*_inputs(3), temperature=30.0)
    assert (w30.max(-1).values < w1.max(-1).values).all()
    schedule = Temperature(schedule=True)
    assert schedule.annealed(0, 1000) == 30.0 and schedule.annealed(100, 1000) == 1.0
    assert 1.0 < schedule.annealed(50, 1000) < 30.0


def test_bad_flags_are_refused_with_the_value() -> None:
    with pytest.raises(ValueError, match="'median'"):
        MWFLayer(DT, DV, K, gate="median")
    with pytest.raises(ValueError, match="top_k"):
        MWFLayer(DT, DV, K, top_k=4)


def test_fusion_variants() -> None:
    g = torch.Generator().manual_seed(4)
    z = torch.randn(K, B, 4, generator=g)
    w = torch.rand(B, K, generator=g).softmax(-1)
    y = fuse(z, w, "logits")
    torch.testing.assert_close(y, torch.einsum("bk,kbc->bc", w, z))
    logp = fuse(z, w, "probs")
    torch.testing.assert_close(logp.exp(), torch.einsum("bk,kbc->bc", w, z.softmax(-1)))
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(B))  # CE on log p is the mixture NLL
    feats = torch.randn(K, B, 8, generator=g)
    head = torch.nn.Linear(8, 4)
    torch.testing.assert_close(fuse(z, w, "features", feats, head), head(torch.einsum("bk,kbf->bf", w, feats)))
    one_hot = torch.zeros(B, K)
    one_hot[:, 1] = 1
    torch.testing.assert_close(fuse(z, one_hot, "logits"), z[1])


def test_losses() -> None:
    uniform = torch.full((8, K), 1 / K)
    assert float(load_balance_loss(uniform)) == pytest.approx(0.0, abs=1e-7)
    collapsed = torch.zeros(8, K)
    collapsed[:, 0] = 1
    assert float(load_balance_loss(collapsed)) > 1.0
    z = torch.randn(K, 5, 3)
    y = torch.randint(0, 3, (5,))
    expected = torch.stack([torch.nn.functional.cross_entropy(z[k], y) for k in range(K)]).mean()
    torch.testing.assert_close(expert_cross_entropy(z, y), expected)
    out = {"logits": torch.randn(5, 3), "expert_logits": z, "weights": collapsed[:5]}
    ce = torch.nn.functional.cross_entropy(out["logits"], y)
    loss, parts = drdf_loss(out, y, lambda_aux=0.5, lambda_bal=0.01)
    torch.testing.assert_close(loss, ce + 0.5 * expected + 0.01 * load_balance_loss(collapsed[:5]))
    assert set(parts) == {"ce", "aux_ce", "balance"}
    loss, parts = drdf_loss({**out, "expert_logits": z[:1]}, y, lambda_aux=0.5)  # K = 1: no per-expert term
    assert set(parts) == {"ce"} and torch.equal(loss, ce)
