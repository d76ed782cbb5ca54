"""build_cnn: pooled features, CIFAR stems, local weights."""

import pytest
import timm
import torch

from shared.backbones.cnn import build_cnn


def test_resnet18_cifar_stem_on_32px():
    model = build_cnn("resnet18", cifar_stem=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model.forward_features(x).shape == (2, 512, 4, 4)  # stride 8 instead of 32
        assert model(x).shape == (2, model.num_features) == (2, 512)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)


@pytest.mark.parametrize(("name", "grid"), [("resnet18d", 4), ("mobilenetv2_100", 2)])
def test_other_cifar_stems(name, grid):
    model = build_cnn(name, cifar_stem=True).eval()
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 32, 32)).shape[-2:] == (grid, grid)


@pytest.mark.parametrize("name", ["convnext_atto", "efficientnet_b0"])
def test_other_names_build_with_pooled_features(name):
    model = build_cnn(name, num_classes=0).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, model.num_features)


def test_unsupported_cifar_stem_names_the_model():
    with pytest.raises(NotImplementedError, match="convnext_atto"):
        build_cnn("convnext_atto", cifar_stem=True)


def test_local_weights_with_new_head_and_grey_input(tmp_path):
    src = timm.create_model("resnet18", num_classes=1000)
    torch.save(src.state_dict(), tmp_path / "resnet18.pth")
    model = build_cnn("resnet18", pretrained=tmp_path / "resnet18.pth", num_classes=10, in_chans=1)
    torch.testing.assert_close(model.layer3[0].conv1.weight, src.layer3[0].conv1.weight)
    torch.testing.assert_close(model.conv1.weight, src.conv1.weight.sum(1, keepdim=True))  # timm adaptation
    assert model.fc.out_features == 10


def test_missing_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "r18.pth")):
        build_cnn("resnet18", pretrained=tmp_path / "r18.pth")
