"""`python -m projects.spm evaluate`: CLIP score / CER with a random tiny local CLIP (checked against torchmetrics'
CLIPScore), FID with pluggable features (self ~ 0, other > 0, real folder), the toy judge on the committed toy model,
NudeNet counting, and clear errors."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image
from torchmetrics.multimodal.clip_score import CLIPScore
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

from projects.spm.tools.evaluate import (
    NUDENET_LABELS,
    ClipImageEmbed,
    clip_metrics,
    load_clip,
    main,
    nudenet_counts,
    parse_toy_prompt,
    read_manifest,
)
from projects.spm.tools.generate import main as generate
from projects.spm.toy.classifier import load_classifier
from projects.spm.toy.scenes import render_toy_scenes
from projects.spm.toy.toy_base import DEFAULT_DIR, build_tokenizer
from tests.projects.spm.tiny_sd import write_random_spm

PROMPTS = ["a red circle", "a blue star", "a green circle"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    """A random tiny CLIP (transformers CLIPModel + CLIPProcessor) saved like a downloaded one."""
    out = tmp_path_factory.mktemp("clip")
    tok = build_tokenizer(None)
    ids = dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    config = CLIPConfig(text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                                         **ids),
                        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=1, num_attention_heads=2), projection_dim=16)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        CLIPModel(config).save_pretrained(out)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                     crop_size={"height": 32, "width": 32}),
                  tokenizer=tok).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def folders(tiny_base: Path, tmp_path_factory) -> dict[str, Path]:
    """original (no SPM), erased (a random 'circle' SPM) and original again, from a random tiny model."""
    root, base = tmp_path_factory.mktemp("eval"), tiny_base
    spm = write_random_spm(UNet2DConditionModel.from_pretrained(base / "unet"), root / "circle.safetensors", ["circle"],
                           seed=1, scale=0.5)
    common = ["--base_model", str(base), "--prompts", *PROMPTS, "--images_per_prompt", "4", "--steps", "4",
              "--logger", "none"]
    generate([*common, "--out", str(root / "original")])
    generate([*common, "--spm", str(spm), "--out", str(root / "erased")])
    generate([*common, "--out", str(root / "original2")])
    return {name: root / name for name in ("original", "erased", "original2")}


def test_clip_score_cer_and_fid(folders: dict[str, Path], clip_dir: Path, capsys):
    erased = main(["--images", str(folders["erased"]), "--reference", str(folders["original"]), "--clip",
                   str(clip_dir), "--concepts", "circle", "star", "--logger", "none"])
    m = erased["metrics"]
    for c in ("circle", "star"):
        assert 0 <= m[f"clip/score/{c}"] <= 250 and 0 <= m[f"clip/cer/{c}"] <= 1
    assert 0 <= m["clip/prompt_score"] <= 250
    assert m["fid/features"] == "clip" and m["fid/reference/all"] > 1e-3
    assert m["fid/reference/circle"] > 1e-3  # 8 images of the two circle prompts, changed by the SPM
    assert json.loads((folders["erased"] / "metrics.json").read_text())["metrics"] == m
    out = capsys.readouterr().out
    assert "clip/cer/circle" in out and "fid/reference/all" in out
    # Same prompts and seeds from the same model: FID ~ 0 (identical images, identical features).
    same = main(["--images", str(folders["original2"]), "--reference", str(folders["original"]), "--clip",
                 str(clip_dir), "--concepts", "circle", "--logger", "none"])["metrics"]
    assert abs(same["fid/reference/all"]) < 1e-3 and abs(same["fid/reference/circle"]) < 1e-3


class TensorOutputs(torch.nn.Module):
    """torchmetrics 1.9's CLIPScore expects tensors from get_*_features; transformers 5 returns model outputs."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model, self.config = model, model.config

    def get_image_features(self, pixel_values):
        return self.model.get_image_features(pixel_values=pixel_values).pooler_output

    def get_text_features(self, input_ids, attention_mask):
        return self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output


def test_clip_score_is_the_official_formula_and_matches_torchmetrics(folders: dict[str, Path], clip_dir: Path):
    """Per image CS = 2.5 max(cos, 0) x 100, i.e. 2.5 x torchmetrics' CLIPScore of that image; CER by hand."""
    clip = load_clip(clip_dir, torch.device("cpu"))
    rows = read_manifest(folders["original"])
    images = [torch.from_numpy(np.array(Image.open(folders["original"] / r["file"]))).permute(2, 0, 1)
              for r in rows]
    reference = CLIPScore(model_name_or_path=lambda: (TensorOutputs(clip.model), clip.processor))
    per_image = []
    for im in images:
        reference.reset()
        reference.update(im.unsqueeze(0), ["circle"])
        per_image.append(2.5 * float(reference.compute()))
    embeds = clip(torch.stack(images))
    members = [i for i, r in enumerate(rows) if "circle" in r["prompt"]]
    ours = clip_metrics(clip, embeds, rows, ["circle"])
    assert math.isclose(ours["clip/score/circle"], np.mean([per_image[i] for i in members]), rel_tol=1e-4,
                        abs_tol=1e-4)
    text = torch.nn.functional.normalize(clip.text(["circle", ""]), dim=-1)
    cos = torch.nn.functional.normalize(embeds, dim=-1)[members] @ text.T
    cs = 250 * cos.clamp_min(0)
    assert math.isclose(ours["clip/cer/circle"], (cs[:, 1] >= cs[:, 0]).float().mean().item())
    assert isinstance(clip, ClipImageEmbed)


def test_toy_judge_on_the_toy_model(tmp_path: Path):
    """Generate on the committed toy model; the judge's per-prompt numbers equal the classifier run by hand."""
    out = tmp_path / "toy"
    generate(["--base_model", str(DEFAULT_DIR), "--prompts", "a red circle", "a blue star", "--images_per_prompt",
              "6", "--steps", "20", "--guidance", "5", "--out", str(out), "--logger", "none"])
    result = main(["--images", str(out), "--reference", str(out), "--classifier",
                   str(DEFAULT_DIR / "classifier.safetensors"), "--concepts", "circle", "--logger", "none"])
    m, per_prompt = result["metrics"], result["per_prompt"]
    with (out / "manifest.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    images = torch.stack([torch.from_numpy(np.array(Image.open(out / r["file"]))).permute(2, 0, 1)
                          for r in rows]).float() / 255
    with torch.no_grad():
        s, c = load_classifier(DEFAULT_DIR / "classifier.safetensors")(images)
    labels = torch.tensor([parse_toy_prompt(r["prompt"]) for r in rows])
    right = torch.stack([s.argmax(1), c.argmax(1)], 1) == labels
    assert [e["prompt"] for e in per_prompt] == ["a red circle", "a blue star"]
    for k, entry in enumerate(per_prompt):
        assert entry["n"] == 6
        assert math.isclose(entry["shape_acc"], right[6 * k:6 * k + 6, 0].float().mean().item())
        assert math.isclose(entry["color_acc"], right[6 * k:6 * k + 6, 1].float().mean().item())
    assert math.isclose(m["toy/both_acc"], right.all(1).float().mean().item())
    assert math.isclose(m["toy/target_rate/circle"], (s.argmax(1)[:6] == 0).float().mean().item())
    assert math.isclose(m["toy/nontarget_acc"], right[6:].all(1).float().mean().item())
    assert math.isclose(sum(m[f"toy/rate/{k}"] for k in ("circle", "square", "triangle", "star", "cross", "ring")),
                        1.0, rel_tol=1e-6)
    assert m["fid/features"] == "toy" and abs(m["fid/reference/all"]) < 1e-3


def test_fid_against_a_real_folder(folders: dict[str, Path], tmp_path: Path):
    real = tmp_path / "real" / "sub"
    real.mkdir(parents=True)
    scenes = render_toy_scenes(10, seed=0, size=24)["images"]
    for i, im in enumerate(scenes):  # another size: resized (centre crop) to the generated 16x16
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(real / f"{i}.jpg")
    classifier = DEFAULT_DIR / "classifier.safetensors"
    m = main(["--images", str(folders["original"]), "--real", str(tmp_path / "real"), "--classifier",
              str(classifier), "--logger", "none"])["metrics"]
    assert m["fid/real"] > 1e-3 and math.isfinite(m["fid/real"])


def test_nudenet_counts_and_missing_package(folders: dict[str, Path], capsys):
    class FakeDetector:  # NudeNet v3's detect(): a list of {class, score, box}
        def detect(self, path: str) -> list[dict]:
            index = int(Path(path).name[:5])
            dets = [{"class": "FACE_FEMALE", "score": 0.9, "box": [0, 0, 1, 1]}]
            if index % 2:
                dets.append({"class": "FEET_EXPOSED", "score": 0.7, "box": [0, 0, 1, 1]})
            if index % 3 == 0:
                dets.append({"class": "BELLY_EXPOSED", "score": 0.3, "box": [0, 0, 1, 1]})
            return dets

    paths = sorted((folders["original"] / "images").glob("*.png"))
    counts = nudenet_counts(paths, FakeDetector(), threshold=0.5)
    assert counts["nudenet/FEET_EXPOSED"] == 6 and counts["nudenet/BELLY_EXPOSED"] == 0
    assert counts["nudenet/any_exposed"] == 6 and counts["nudenet/images"] == 12
    assert set(NUDENET_LABELS) == {k.removeprefix("nudenet/") for k in counts} - {"any_exposed", "images"}
    assert nudenet_counts(paths, FakeDetector())["nudenet/BELLY_EXPOSED"] == 4
    try:
        import nudenet  # noqa: F401
    except ImportError:
        result = main(["--images", str(folders["original"]), "--nudenet", "--logger", "none"])
        assert any("nudenet" in n and "not installed" in n for n in result["notes"])
        assert "not installed" in capsys.readouterr().out


def test_clear_errors(folders: dict[str, Path], tmp_path: Path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.csv").write_text("file,prompt\nimages/x.png,a red circle\n")
    cases = [(["--images", str(broken)], [str(broken / "manifest.csv"), "'seed'"]),
             (["--images", str(tmp_path / "none")], [str(tmp_path / "none"), "does not exist"]),
             (["--images", str(folders["original"]), "--clip", str(tmp_path / "noclip")], ["noclip", "CLIP"]),
             (["--images", str(folders["original"]), "--fid_features", "inception", "--reference",
               str(folders["original"])], ["--inception_weights"])]
    for args, words in cases:
        with pytest.raises(SystemExit):
            main([*args, "--logger", "none"])
        err = capsys.readouterr().err
        assert "error: " in err and all(w in err for w in words), err
