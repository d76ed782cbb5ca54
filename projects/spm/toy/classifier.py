"""The toy world's judge: a small CNN that reads the shape and the colour of a generated image (toy/scenes.py),
trained on fresh renders; committed in ``projects/spm/toy_model/classifier.safetensors``."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from projects.spm.toy.scenes import TOY_COLORS, TOY_SHAPES, render_toy_scenes
from shared.backbones.weights import load_into, not_safetensors


class ToyClassifier(nn.Module):
    """A small CNN with a shape head and a colour head (TOY_SHAPES, TOY_COLORS); input [B, 3, H, W] in [0, 1]."""

    def __init__(self, num_shapes: int = len(TOY_SHAPES), num_colors: int = len(TOY_COLORS)) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))
        self.features = nn.Sequential(block(3, 32), block(32, 64), block(64, 64), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten())
        self.shape_head = nn.Linear(64, num_shapes)
        self.color_head = nn.Linear(64, num_colors)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(images * 2 - 1)
        return self.shape_head(h), self.color_head(h)


def load_classifier(path: str | Path) -> ToyClassifier:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"toy classifier {path} does not exist (run `python -m projects.spm.toy.toy_base`)")
    try:
        state = load_file(str(path))
    except SafetensorError as err:
        raise ValueError(not_safetensors(path, err)) from None
    model = ToyClassifier()
    load_into(model, state, "toy classifier", source=path)  # every tensor, of the right shape, or one line
    return model.eval()


def train_classifier(out: Path, steps: int = 800, seed: int = 1) -> float:
    """Train the judge on fresh renders; returns held-out (shape and colour) accuracy."""
    torch.manual_seed(seed)
    data = render_toy_scenes(6000, seed=seed)
    test = render_toy_scenes(600, seed=seed + 1000)
    model = ToyClassifier()
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    x_all = data["images"].float() / 255
    for _ in range(steps):
        idx = torch.randint(len(x_all), (128,))
        x = x_all[idx]
        x = x + 0.08 * torch.randn_like(x)  # generated images are noisier than renders
        s, c = model(x)
        loss = F.cross_entropy(s, data["shape"][idx]) + F.cross_entropy(c, data["color"][idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        s, c = model(test["images"].float() / 255)
    acc = ((s.argmax(1) == test["shape"]) & (c.argmax(1) == test["color"])).float().mean().item()
    save_file(model.state_dict(), str(out))
    return acc
