"""The weights rule: paths must exist, True = local cache only, False/None = random init; safe readers."""

import logging

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from shared.backbones.weights import load_into, read_state_dict, resolve_pretrained, weights_file_in


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Point the HF and torch.hub caches at empty folders, so the test never sees a real cache."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch_hub"))
    return tmp_path / "hf"


@pytest.mark.parametrize("value", [False, None])
def test_false_or_none_is_silent_random_init(value, caplog):
    with caplog.at_level(logging.DEBUG):
        assert resolve_pretrained(value, "thing", timm_name="resnet18") is None
    assert not caplog.records


def test_missing_path_raises_with_path(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="pretrained weights file not found") as err:
        resolve_pretrained(str(missing), "thing")
    assert str(missing) in str(err.value) and ".npz" in str(err.value)


def test_existing_path_is_returned(tmp_path):
    f = tmp_path / "w.pth"
    torch.save({"a": torch.zeros(1)}, f)
    assert resolve_pretrained(f, "thing") == f


def test_true_without_cache_warns_once(empty_caches, caplog):
    with caplog.at_level(logging.WARNING):
        assert resolve_pretrained(True, "thing", timm_name="resnet18") is None
    assert len(caplog.records) == 1
    msg = caplog.records[0].getMessage()
    assert "no local pretrained weights for resnet18" in msg and "random init" in msg


def test_true_finds_hf_cache_offline(empty_caches):
    # Fake an already-downloaded timm hub file in the (temporary) Hugging Face cache layout.
    repo = empty_caches / "models--timm--resnet18.a1_in1k"
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    save_file({"x": torch.zeros(1)}, str(snap / "model.safetensors"))
    assert resolve_pretrained(True, "thing", timm_name="resnet18") == snap / "model.safetensors"


def test_read_state_dict_unwraps_and_strips_prefixes(tmp_path):
    w = torch.randn(3, 2)
    torch.save({"state_dict": {"module.model.fc.weight": w}, "epoch": 3}, tmp_path / "a.pth")
    save_file({"model.fc.weight": w}, str(tmp_path / "b.safetensors"))
    for name in ("a.pth", "b.safetensors"):
        state = read_state_dict(tmp_path / name)
        assert list(state) == ["fc.weight"] and torch.equal(state["fc.weight"], w)


def test_folder_picks_hf_weights_file(tmp_path):
    save_file({"x": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text("{}")
    assert weights_file_in(tmp_path) == tmp_path / "model.safetensors"


def test_load_into_drops_mismatched_head_and_logs_one_line(caplog):
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 3))
    state = {"0.weight": torch.ones(4, 4), "1.weight": torch.ones(10, 4), "1.bias": torch.ones(10),
             "extra.weight": torch.ones(1)}
    with caplog.at_level(logging.INFO):
        load_into(model, state, "toy", classifier="1", strict=False)  # 0.bias is absent on purpose
    assert torch.equal(model[0].weight, torch.ones(4, 4))
    assert not torch.equal(model[1].weight, torch.ones(3, 4))
    assert len(caplog.records) == 1
    msg = caplog.records[0].getMessage()
    assert "dropped classifier keys" in msg and "0.bias" in msg and "extra.weight" in msg


def test_a_weights_file_that_matches_nothing_is_an_error_naming_it(tmp_path):
    """A file none of whose tensors fit used to log "loaded 0 tensors", train from random init and exit 0."""
    from shared.backbones.cnn import build_cnn
    from shared.backbones.vit import ViTBackbone

    path = tmp_path / "other_model.safetensors"
    save_file({"encoder.layer.0.weight": torch.zeros(3)}, str(path))
    with pytest.raises(ValueError, match=r"build_cnn\(resnet18\): none of the 1 tensors in .*other_model.safetensors "
                                         r"matches this model \(the file's keys begin \['encoder.layer.0.weight'\]"):
        build_cnn("resnet18", pretrained=str(path), num_classes=3)
    with pytest.raises(ValueError, match="none of the 1 tensors in .*other_model.safetensors matches this model"):
        ViTBackbone("vit_tiny_patch16_224", pretrained=str(path), img_size=32, patch_size=8, depth=1)
