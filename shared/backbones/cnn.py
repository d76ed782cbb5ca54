"""timm CNNs as pooled-feature extractors (DRDF's image routers and experts), with the usual weights rule."""

from __future__ import annotations

import timm
from timm.models._manipulate import adapt_input_conv
from torch import nn

from shared.backbones.factory import create_timm_model
from shared.backbones.weights import Pretrained, load_into, read_state_dict, resolve_pretrained


def build_cnn(name: str, pretrained: Pretrained = False, num_classes: int = 0, in_chans: int = 3,
              cifar_stem: bool = False, **kwargs) -> nn.Module:
    """A timm CNN; with ``num_classes=0`` it returns pooled features [B, ``model.num_features``].

    ``cifar_stem=True`` adapts the stem to 32-px inputs (CIFAR practice, e.g. kuangliu/pytorch-cifar):

    * ResNet family: ``conv1`` becomes a 3x3 stride-1 conv (a deep stem keeps its convs, first stride -> 1)
      and the max-pool is removed, so a 32-px image reaches the last stage at 4x4 instead of 1x1;
    * EfficientNet / MobileNet family: the stride-2 ``conv_stem`` becomes stride 1 (32 px -> 2x2 at the end).

    Pretrained weights are loaded first; a replaced 3x3 ``conv1`` starts from random init.
    Other architectures raise ``NotImplementedError``.
    """
    what = f"build_cnn({name})"
    model = create_timm_model(name, "build_cnn", pretrained=False, num_classes=num_classes, in_chans=in_chans,
                              **kwargs)
    path = resolve_pretrained(pretrained, what, timm_name=name)
    if path is not None:
        if path.suffix == ".npz":
            raise ValueError(f"{what}: .npz checkpoints are only supported for ViTs; got {path}")
        state = read_state_dict(path)
        first = f"{model.pretrained_cfg.get('first_conv', '')}.weight"
        if first in state and state[first].shape[1] != in_chans:  # e.g. grey-scale inputs: timm's conv adaptation
            state[first] = adapt_input_conv(in_chans, state[first])
        load_into(model, state, what, classifier=model.pretrained_cfg.get("classifier"), source=path)
    if cifar_stem:
        _apply_cifar_stem(model, name)
    return model


def _apply_cifar_stem(model: nn.Module, name: str) -> None:
    if isinstance(model, timm.models.resnet.ResNet):
        if isinstance(model.conv1, nn.Conv2d):
            conv = model.conv1
            model.conv1 = nn.Conv2d(conv.in_channels, conv.out_channels, kernel_size=3, stride=1, padding=1,
                                    bias=False)
        else:  # deep stem ("resnet*d"): three 3x3 convs, the first one strided
            first = next(m for m in model.conv1.modules() if isinstance(m, nn.Conv2d))
            first.stride = (1, 1)
        model.maxpool = nn.Identity()
    elif isinstance(model, timm.models.efficientnet.EfficientNet):
        model.conv_stem.stride = (1, 1)
    else:
        raise NotImplementedError(
            f"build_cnn: cifar_stem=True is implemented for timm ResNet and EfficientNet/MobileNet models only; "
            f"{name!r} is a {type(model).__name__} (use cifar_stem=False and resize inputs, e.g. to 224)")
