"""Bad weights files end with one line naming the file (and key) and what was expected, never a traceback's worth
of advice, and never the advice to unpickle with ``weights_only=False``."""

import argparse
import logging
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from shared.backbones.weights import load_into, read_state_dict


class Custom:
    """A class a pickle may name; ``weights_only=True`` refuses it."""


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and "weights_only=False" not in message
    return message


@pytest.mark.parametrize(("name", "obj", "refused"), [
    ("run.pth", {"state_dict": {"w": torch.zeros(2)}, "args": argparse.Namespace(lr=0.1)}, "argparse.Namespace"),
    ("model.bin", {"w": torch.zeros(2), "meta": Custom()}, "Custom"),
])
def test_a_pickled_object_is_refused_naming_the_file_and_the_global(tmp_path, name, obj, refused):
    torch.save(obj, tmp_path / name)
    with pytest.raises(ValueError, match=rf"{name}: holds a pickled \S*{refused} object.*convert it to "
                                         r"\.safetensors in an environment where you trust the file") as err:
        read_state_dict(tmp_path / name)
    one_line(err)


def test_a_truncated_pth_names_the_file(tmp_path):
    torch.save({"w": torch.zeros(100)}, tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=r"cut.pth: not a readable PyTorch file \(RuntimeError: .*zip archive") as err:
        read_state_dict(tmp_path / "cut.pth")
    one_line(err)


@pytest.mark.parametrize("kind", ["truncated", "random bytes", "text"])
def test_a_bad_safetensors_names_the_file(tmp_path, kind):
    path = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(100)}, str(path))
    data = {"truncated": path.read_bytes()[:-40], "random bytes": os.urandom(300), "text": b"a,b\n1,2\n"}[kind]
    path.write_bytes(data)
    with pytest.raises(ValueError, match=r"w.safetensors: not a readable .safetensors file \(Error while "
                                         r"deserializing header: .*\); expected a complete safetensors file") as err:
        read_state_dict(path)
    one_line(err)


def test_a_wrong_shape_outside_the_classifier_lists_the_keys_with_both_shapes():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 3))
    state = {"0.weight": torch.ones(5, 4), "0.bias": torch.ones(5), "1.weight": torch.ones(3, 4),
             "1.bias": torch.ones(3)}
    with pytest.raises(ValueError, match=r"toy: 2 tensors in w.pth have another shape than the model's \(file vs "
                                         r"model: 0.weight \(5, 4\) vs \(4, 4\), 0.bias \(5,\) vs \(4,\)\)") as err:
        load_into(model, state, "toy", classifier="1", source="w.pth")
    one_line(err)


def test_missing_keys_are_an_error_unless_strict_false(caplog):
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 3))
    state = {"0.weight": torch.ones(4, 4)}  # no 0.bias; the classifier (1.*) may be absent
    with pytest.raises(ValueError, match=r"toy: 1 of the model's tensors are missing in w.pth \(first: "
                                         r"\['0.bias'\]\)") as err:
        load_into(model, state, "toy", classifier="1", source="w.pth")
    one_line(err)
    with caplog.at_level(logging.WARNING):
        load_into(model, state, "toy", classifier="1", source="w.pth", strict=False)
    assert torch.equal(model[0].weight, torch.ones(4, 4))
    assert len(caplog.records) == 1 and "missing keys ['0.bias', '1.weight', '1.bias']" in caplog.records[0].message


def test_a_headless_checkpoint_still_loads_into_a_model_with_a_classifier():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 3))
    load_into(model, {"0.weight": torch.ones(4, 4), "0.bias": torch.ones(4)}, "toy", classifier="1")
    assert torch.equal(model[0].bias, torch.ones(4))


@pytest.mark.parametrize(("kind", "reason"), [("object arrays", "Object arrays cannot be loaded"),
                                              ("text", "This file contains pickled \\(object\\) data")])
def test_a_bad_npz_names_the_file(tmp_path, kind, reason):
    from shared.backbones.vit import ViTBackbone

    path = tmp_path / "ViT-Ti_16.npz"
    if kind == "text":
        path.write_text("not an archive\n")
    else:
        np.savez(path, **{"embedding/kernel": np.zeros((8, 8, 3, 192), np.float32),
                          "Transformer/posembed_input/pos_embedding": np.array([1, "a"], dtype=object)})
    with pytest.raises(ValueError, match=rf"ViT-Ti_16.npz: not a Google ViT .npz checkpoint of this architecture "
                                         rf"\(ValueError: {reason}") as err:
        ViTBackbone("vit_tiny_patch16_224", pretrained=path, img_size=32, patch_size=8, depth=1)
    assert "unsafely" not in one_line(err)  # numpy's advice to unpickle is not passed on


def test_an_unknown_architecture_name_is_one_line_with_the_closest_names() -> None:
    """``--model.backbone vit_base_patch16_22`` was timm's bare "RuntimeError: Unknown model"."""
    from shared.backbones import ViTBackbone, build_cnn

    with pytest.raises(ValueError, match=r"^ViTBackbone: 'vit_base_patch16_22' is not a timm architecture; did you "
                                         r"mean vit_base_patch16_224, "):
        ViTBackbone("vit_base_patch16_22")
    with pytest.raises(ValueError, match=r"^build_cnn: 'resnet_18' is not a timm architecture; did you mean "
                                         r"resnet18, "):
        build_cnn("resnet_18")
