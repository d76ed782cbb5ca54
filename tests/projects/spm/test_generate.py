"""`python -m projects.spm generate` on a random tiny model: inline prompts with SPMs and FT, CSV rows with their own
seeds and sizes, batch-size independence, merged == hooked fixed gammas, samplers, errors, and 2-rank DDP (a
subprocess)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image

from projects.spm.diffusion.model import DiffusionModel
from projects.spm.tools.generate import IMAGENET_TEMPLATES, main
from projects.spm.tools.protocol import OFFICIAL_NEGATIVE_PROMPT
from projects.spm.transport import facilitated_gammas
from tests.projects.spm.tiny_sd import write_random_spm

REPO = Path(__file__).resolve().parents[3]
COMMON = ["--steps", "4", "--logger", "none"]


@pytest.fixture(scope="module")
def base(tiny_base: Path) -> Path:
    return tiny_base


@pytest.fixture(scope="module")
def spms(base: Path, tmp_path_factory) -> list[Path]:
    unet = UNet2DConditionModel.from_pretrained(base / "unet")
    out = tmp_path_factory.mktemp("spms")
    return [write_random_spm(unet, out / "red.safetensors", ["red", "crimson"], 1),
            write_random_spm(unet, out / "circle.safetensors", ["circle"], 2)]


def read_manifest(out: Path) -> list[dict]:
    with (out / "manifest.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def pixels(out: Path, rows: list[dict]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(out / r["file"]), dtype=np.int16) for r in rows])


PROMPTS = ["a red circle", "a blue star", "a green circle"]


@pytest.fixture(scope="module")
def ft_run(base: Path, spms: list[Path], tmp_path_factory) -> SimpleNamespace:
    """Two SPMs with FT on the three prompts, seeds 0 and 1, batches of 4 (mixed gammas): the run several tests
    compare with (its ``info``, manifest ``rows``, ``pixels`` and what it printed)."""
    out = tmp_path_factory.mktemp("ft") / "gen"
    printed = io.StringIO()
    with redirect_stdout(printed):
        info = main(["--base_model", str(base), "--spm", *map(str, spms), "--prompts", *PROMPTS, "--seeds", "0", "1",
                     "--batch_size", "4", "--out", str(out), *COMMON])
    rows = read_manifest(out)
    return SimpleNamespace(out=out, info=info, rows=rows, pixels=pixels(out, rows), printed=printed.getvalue())


def test_inline_prompts_with_spms_and_ft(base: Path, ft_run: SimpleNamespace, tmp_path: Path):
    out, info, rows = ft_run.out, ft_run.info, ft_run.rows
    assert [r["prompt"] for r in rows] == [p for p in PROMPTS for _ in range(2)]
    assert [int(r["seed"]) for r in rows] == [0, 1] * 3
    assert list(rows[0]) == ["index", "file", "prompt", "seed", "width", "height", "guidance", "concept",
                             "gamma_red", "gamma_circle"]
    for r in rows:
        assert (out / r["file"]).is_file() and r["file"].startswith(f"images/{int(r['index']):05d}_")
        assert Image.open(out / r["file"]).size == (16, 16)
    assert (out / "grid.png").is_file() and info["concepts"] == [["red", "crimson"], ["circle"]]
    # The manifest's gammas are FT's (Eqs. 10-11): token overlap makes the named concepts 1.
    model = DiffusionModel.from_folder(base)
    want = facilitated_gammas(model.text_encoder, model.tokenizer, PROMPTS, info["concepts"])
    got = torch.tensor([[float(r["gamma_red"]), float(r["gamma_circle"])] for r in rows[::2]])
    assert torch.allclose(got, want, atol=1e-4)
    assert got[0].tolist() == [1.0, 1.0] and got[2, 1] == 1.0 and got[1].max() < 1
    for prompt, g in zip(PROMPTS, got, strict=True):
        assert f"gamma {prompt!r}: red | crimson={g[0]:.4f}, circle={g[1]:.4f}" in ft_run.printed
    # The SPMs change the images (compared with no SPM, same seeds).
    plain = tmp_path / "plain"
    main(["--base_model", str(base), "--prompts", *PROMPTS, "--seeds", "0", "1", "--out", str(plain), *COMMON])
    assert np.abs(ft_run.pixels - pixels(plain, read_manifest(plain))).max() > 10


def test_images_do_not_depend_on_batch_size(base: Path, spms: list[Path], ft_run: SimpleNamespace, tmp_path: Path):
    """Single-sample batches give the images of the mixed-gamma batches of 4 (per-sample gammas and noise)."""
    out = tmp_path / "bs1"
    main(["--base_model", str(base), "--spm", *map(str, spms), "--prompts", *PROMPTS, "--seeds", "0", "1",
          "--batch_size", "1", "--out", str(out), *COMMON])
    assert np.abs(pixels(out, read_manifest(out)) - ft_run.pixels).max() <= 1


def test_csv_rows_with_own_seeds_sizes_and_guidance(base: Path, tmp_path: Path):
    csv_path = tmp_path / "prompts.csv"
    csv_path.write_text("case_number,prompt,evaluation_seed,sd_image_width,sd_image_height,sd_guidance_scale\n"
                        "0,a red circle,11,16,16,7.5\n1,a blue star,12,24,20,3\n2,a red circle,13,17,16,7.5\n")
    out = tmp_path / "csv"
    main(["--base_model", str(base), "--prompts_csv", str(csv_path), "--images_per_prompt", "2",
          "--batch_size", "8", "--out", str(out), *COMMON])
    rows = read_manifest(out)
    assert [(r["prompt"], int(r["seed"])) for r in rows] == [("a red circle", 11), ("a red circle", 12),
                                                              ("a blue star", 12), ("a blue star", 13),
                                                              ("a red circle", 13), ("a red circle", 14)]
    sizes = [Image.open(out / r["file"]).size for r in rows]
    assert sizes == [(16, 16)] * 2 + [(24, 20)] * 2 + [(17, 16)] * 2  # pixel space: latent factor 1
    assert [float(r["guidance"]) for r in rows] == [7.5, 7.5, 3.0, 3.0, 7.5, 7.5]
    # A CSV row's image equals the inline prompt with that seed and size (noise depends only on the seed).
    inline = tmp_path / "inline"
    main(["--base_model", str(base), "--prompts", "a red circle", "--seeds", "11", "12", "--out", str(inline),
          *COMMON])
    assert np.abs(pixels(out, rows[:2]) - pixels(inline, read_manifest(inline))).max() <= 1


def test_fixed_gammas_merged_equal_hooks_and_official_mode_runs(base: Path, spms: list[Path], tmp_path: Path):
    runs = {}
    for merge in ("on", "off"):
        out = tmp_path / merge
        info = main(["--base_model", str(base), "--spm", *map(str, spms), "--prompts", *PROMPTS, "--merge", merge,
                     "--spm_multiplier", "0.5", "2", "--out", str(out), *COMMON])
        rows = read_manifest(out)
        assert info["merged"] == (merge == "on") and not info["ft"]
        assert {(r["gamma_red"], r["gamma_circle"]) for r in rows} == {("0.5000", "2.0000")}
        runs[merge] = pixels(out, rows)
    assert np.abs(runs["on"] - runs["off"]).max() <= 1
    out = tmp_path / "official"
    info = main(["--base_model", str(base), "--spm", *map(str, spms), "--prompts", *PROMPTS, "--composition",
                 "official", "--out", str(out), *COMMON])
    assert info["composition"] == "official" and np.abs(pixels(out, read_manifest(out)) - runs["off"]).max() > 0


@pytest.mark.parametrize("sampler", ["euler_a", "dpm++", "pndm"])
def test_diffusers_samplers_are_batch_size_independent(base: Path, sampler: str, tmp_path: Path):
    runs = []
    for bs in (1, 3):
        out = tmp_path / f"{sampler}{bs}"
        main(["--base_model", str(base), "--prompts", *PROMPTS, "--sampler", sampler, "--batch_size", str(bs),
              "--seed", "5", "--out", str(out), *COMMON])
        runs.append(pixels(out, read_manifest(out)))
    assert np.abs(runs[0] - runs[1]).max() <= 1


def test_templates_tag_the_concept(base: Path, tmp_path: Path):
    out = tmp_path / "tpl"
    main(["--base_model", str(base), "--prompts", "circle", "--templates", "imagenet80", "--batch_size", "80",
          "--out", str(out), "--steps", "1", "--logger", "none"])
    rows = read_manifest(out)
    assert len(IMAGENET_TEMPLATES) == len(set(IMAGENET_TEMPLATES)) == 80
    assert [r["prompt"] for r in rows] == [t.format("circle") for t in IMAGENET_TEMPLATES]
    assert {r["concept"] for r in rows} == {"circle"}


def run_subprocess(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "projects.spm", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_clear_errors(base: Path, spms: list[Path], tmp_path: Path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,evaluation_seed\na red circle,1\n")
    cases = [(["--base_model", str(base), "--prompts_csv", str(bad)], [str(bad), "no 'prompt' column"]),
             (["--base_model", str(tmp_path / "nope"), "--prompts", "x"], [str(tmp_path / "nope"), "does not exist"]),
             (["--base_model", str(base), "--spm", str(tmp_path / "x.safetensors"), "--prompts", "x"],
              ["x.safetensors", "does not exist"]),
             (["--base_model", str(base), "--spm", *map(str, spms), "--spm_multiplier", "1", "2", "3",
               "--prompts", "x"], ["3 values for 2 SPMs"])]
    seed_bad = tmp_path / "seed.csv"
    seed_bad.write_text("prompt,sd_seed\na red circle,abc\n")
    cases.append((["--base_model", str(base), "--prompts_csv", str(seed_bad)], [str(seed_bad), "line 2",
                                                                              "'sd_seed'", "'abc'"]))
    for args, words in cases:
        with pytest.raises(SystemExit) as exc:
            main([*args, "--out", str(tmp_path / "o"), *COMMON])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "error: " in err and all(w in err for w in words), err


def test_cli_two_ranks_cpu_ddp(base: Path, spms: list[Path], ft_run: SimpleNamespace, tmp_path: Path):
    """`python -m projects.spm generate --devices 2`: ranks split the samples; rank 0 merges; the images of one
    process."""
    out = tmp_path / "ddp"
    proc = run_subprocess("generate", "--base_model", str(base), "--spm", *map(str, spms), "--prompts", *PROMPTS,
                          "--seeds", "0", "1", "--accelerator", "cpu", "--devices", "2", "--out", str(out), *COMMON)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_manifest(out)
    assert len(rows) == 6 and [int(r["index"]) for r in rows] == list(range(6))
    assert not list(out.glob("manifest.rank*.csv"))
    assert np.abs(pixels(out, rows) - ft_run.pixels).max() <= 1
    assert "gamma 'a blue star'" in proc.stdout


def test_wandb_offline_run(base: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "wb"
    main(["--base_model", str(base), "--prompts", "a red circle", "--steps", "2", "--out", str(out)])
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_protocol_official_is_recorded(base: Path, tmp_path: Path, capsys):
    out = tmp_path / "official"
    main(["--base_model", str(base), "--prompts", "a red circle", "--protocol", "official", "--steps", "2",
          "--images_per_prompt", "2", "--out", str(out), "--logger", "none"])
    info = json.loads((out / "generate.json").read_text())
    assert (info["protocol"], info["task"], info["sampler"], info["images"]) == ("official", "general", "default", 2)
    assert (info["negative_prompt"], info["composition"]) == (OFFICIAL_NEGATIVE_PROMPT, "official")
    assert "--protocol official (task general)" in capsys.readouterr().out
