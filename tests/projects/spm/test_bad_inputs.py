"""Bad SPM inputs end with one line naming the file (and key, line, column): a base model folder with a missing part
or unreadable weights, ``.bin`` weights (read with ``weights_only=True``), bad SPM files, bad prompt CSVs and
manifests."""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel

from projects.spm.anchoring import Anchoring
from projects.spm.composition import SPMComposition
from projects.spm.diffusion.model import DiffusionModel
from projects.spm.module import SPMModule
from projects.spm.network import Membrane, SPMNetwork, load_spm_file
from projects.spm.rollout import Rollout
from projects.spm.tools.evaluate import read_manifest
from projects.spm.tools.generate import read_prompt_csv
from projects.spm.toy.classifier import load_classifier
from projects.spm.toy.toy_base import ensure_toy_base
from tests.projects.spm.tiny_sd import TINY

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def base(tiny_base: Path) -> Path:
    return tiny_base


@pytest.fixture(scope="module")
def unet(base: Path):
    return UNet2DConditionModel.from_pretrained(base / "unet")


def copy_of(base: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(base, tmp_path / "model"))


def one_line(err: pytest.ExceptionInfo) -> None:
    assert "\n" not in str(err.value) and "weights_only=False" not in str(err.value)


# ---------------------------------------------------------------------- the base model folder
def test_bin_weights_load_and_a_pickled_object_in_them_is_refused(base: Path, unet, tmp_path: Path):
    folder = copy_of(base, tmp_path)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    unet.save_pretrained(folder / "unet", safe_serialization=False)
    assert (folder / "unet" / "diffusion_pytorch_model.bin").is_file()
    DiffusionModel.from_folder(folder)  # plain tensors: loads
    state = torch.load(folder / "unet" / "diffusion_pytorch_model.bin", weights_only=True)
    torch.save({**state, "args": argparse.Namespace(lr=1)}, folder / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match=r"unet/diffusion_pytorch_model.bin: holds a pickled argparse.Namespace "
                                         r"object.*convert it to .safetensors") as err:
        DiffusionModel.from_folder(folder)
    one_line(err)


@pytest.mark.parametrize(("remove", "message"), [
    ("unet/config.json", r"base model folder .*model: missing unet/config.json"),
    ("scheduler/scheduler_config.json", r"base model folder .*model: missing scheduler/scheduler_config.json"),
    ("tokenizer/tokenizer_config.json", r"base model folder .*model: missing tokenizer/tokenizer_config.json"),
    ("text_encoder", r"base model folder .*model: missing text_encoder/"),
    ("unet/diffusion_pytorch_model.safetensors", r"model/unet: no weights file"),
])
def test_a_missing_part_of_the_base_folder_is_named(base: Path, tmp_path: Path, remove: str, message: str):
    folder = copy_of(base, tmp_path)
    shutil.rmtree(folder / remove) if (folder / remove).is_dir() else (folder / remove).unlink()
    with pytest.raises(FileNotFoundError, match=message) as err:
        DiffusionModel.from_folder(folder)
    one_line(err)


def test_truncated_base_weights_are_named(base: Path, tmp_path: Path):
    folder = copy_of(base, tmp_path)
    weights = folder / "text_encoder" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"text_encoder/model.safetensors: not a readable .safetensors file") as err:
        DiffusionModel.from_folder(folder)
    one_line(err)


# ---------------------------------------------------------------------- SPM files
def test_bad_spm_files_name_the_file_and_key(base: Path, unet, tmp_path: Path):
    good = SPMNetwork(unet).save(tmp_path / "good.safetensors", ["red"])
    (tmp_path / "cut.safetensors").write_bytes(good.read_bytes()[:-40])
    with pytest.raises(ValueError, match=r"cut.safetensors: not a readable .safetensors file \(Error while "
                                         r"deserializing header: incomplete metadata") as err:
        load_spm_file(tmp_path / "cut.safetensors")
    one_line(err)
    classifier = REPO / "projects" / "spm" / "toy_model" / "classifier.safetensors"
    with pytest.raises(ValueError, match=r"SPM file .*classifier.safetensors: no '\*.lora_down.weight' keys \(its "
                                         r"keys begin \['color_head.bias'") as err:
        load_spm_file(classifier)
    one_line(err)
    other = SPMNetwork(UNet2DConditionModel(**{**TINY, "cross_attention_dim": 48}))
    other.save(tmp_path / "other.safetensors", ["red"])
    with pytest.raises(ValueError, match=r"other.safetensors: key 'lora_unet_\w+_attn2_to_k.lora_down.weight' has "
                                         r"shape \(1, 48\) in the file but this UNet needs \(1, 32\)") as err:
        SPMComposition.from_files(unet, [tmp_path / "other.safetensors"])
    one_line(err)


def test_a_bad_toy_classifier_file_is_named(tmp_path: Path):
    (tmp_path / "judge.safetensors").write_text("not weights\n")
    with pytest.raises(ValueError, match=r"judge.safetensors: not a readable .safetensors file"):
        load_classifier(tmp_path / "judge.safetensors")


# ---------------------------------------------------------------------- prompt CSVs and manifests
@pytest.mark.parametrize(("text", "message"), [
    ("", r"prompts CSV .*p.csv is empty \(expected a header line with a 'prompt' column"),
    ("prompt,seed\n", r"prompts CSV .*p.csv has a header but no rows"),
    ("text,evaluation_seed\na,1\n", r"prompts CSV .*p.csv: no 'prompt' column \(columns: \['text', "
                                    r"'evaluation_seed'\]\)"),
    ("prompt,evaluation_seed\na,1\nb,1.5\n", r"p.csv, line 3, column 'evaluation_seed': '1.5' is not a seed "
                                             r"\(an integer from 0 to 2\*\*63 - 1\)"),
    ("prompt,sd_seed\na,-3\n", r"p.csv, line 2, column 'sd_seed': '-3' is not a seed"),
    ("prompt,evaluation_guidance\na,high\n", r"p.csv, line 2, column 'evaluation_guidance': 'high' is not a "
                                             r"guidance scale \(a finite number\)"),
    ("prompt,width\na,0\n", r"p.csv, line 2, column 'width': '0' is not a size in pixels \(a positive integer\)"),
])
def test_a_bad_prompt_csv_names_the_file_line_and_column(tmp_path: Path, text: str, message: str):
    (tmp_path / "p.csv").write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        read_prompt_csv(tmp_path / "p.csv")
    one_line(err)


def test_unknown_columns_are_one_warning_line(tmp_path: Path, caplog):
    (tmp_path / "p.csv").write_text("case_number,prompt,evaluation_seed,categories\n0,a,1,x\n1,b,2,y\n2,c,3.0,z\n")
    with caplog.at_level(logging.WARNING):
        rows = read_prompt_csv(tmp_path / "p.csv")
    assert [r["seed"] for r in rows] == [1, 2, 3]
    assert [r.getMessage() for r in caplog.records] == [
        f"prompts CSV {tmp_path / 'p.csv'}: ignoring column(s) ['case_number', 'categories'] (read: ['prompt', "
        "'evaluation_seed'])"]


def test_a_bad_manifest_value_names_the_file_line_and_column(tmp_path: Path):
    (tmp_path / "manifest.csv").write_text("file,prompt,seed,guidance\nimages/a.png,a,1,7.5\nimages/b.png,b,x,7.5\n")
    with pytest.raises(ValueError, match=r"manifest.csv, line 3, column 'seed': 'x' is not a seed"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.csv").write_text("")
    with pytest.raises(ValueError, match=r"manifest.csv is empty \(expected the manifest `generate` writes"):
        read_manifest(tmp_path)


def test_generate_with_a_bad_csv_exits_2_with_one_error_line(run_cli, base: Path, tmp_path: Path, monkeypatch):
    monkeypatch.delenv("CV_PAPERS_DEBUG", raising=False)
    bad = tmp_path / "prompts.csv"
    bad.write_text("prompt,evaluation_seed\na red circle,-1\n")
    run = run_cli("spm", "generate", "--base_model", base, "--prompts_csv", bad, "--steps", "1", "--logger", "none",
                  "--out", tmp_path / "o", check=False)
    assert run.code == 2, run.err
    errors = [line for line in run.err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: prompts CSV {bad}, line 2, column 'evaluation_seed': '-1' is not a seed (an integer "
                      "from 0 to 2**63 - 1)"], run.err
    assert "Traceback" not in run.err


@pytest.mark.parametrize("group, name, value", [(Membrane, "rank", 0), (Anchoring, "samples", 0),
                                                 (Rollout, "max_denoising_steps", 1), (Rollout, "batch_size", 0),
                                                 (Rollout, "resolution", 4)])
def test_hyperparameters_out_of_range_are_named(group: type, name: str, value: int):
    """Each was a traceback deep in a step (a [0, 64] conv weight, randint's "cannot sample n_sample <= 0",
    "empty range for randrange() (1, 1, 0)"). A group given as a dict (a notebook, a test) is checked the same way."""
    where = {Membrane: "membrane", Anchoring: "anchoring", Rollout: "rollout"}[group]
    message = rf"^model\.{where}\.{name} must be >= \d+; got {value}$"
    with pytest.raises(ValueError, match=message):
        group(**{name: value})
    with pytest.raises(ValueError, match=message):
        SPMModule(**{where: {name: value}})
    Anchoring(mode="none", samples=0)   # no anchors drawn: 0 is fine


def test_a_file_as_base_model_is_not_built_over(tmp_path: Path):
    """``base.build_toy`` with a file as ``base.path``: nothing to build (was a FileExistsError from mkdir);
    loading it then names the file and the formats it could be."""
    notes = tmp_path / "notes.md"
    notes.write_text("not a model")
    assert ensure_toy_base(notes) == notes and notes.read_text() == "not a model"
    with pytest.raises(ValueError, match=r"notes.md: unsupported checkpoint format '.md' \(expected a single-file"):
        DiffusionModel.from_folder(notes)


def test_a_spreadsheet_csv_with_a_byte_order_mark_reads(tmp_path: Path):
    """Excel's "CSV UTF-8" starts with a BOM: it was read into the first column's name ("no 'prompt' column")."""
    (tmp_path / "p.csv").write_bytes("\ufeffprompt,evaluation_seed\r\na red circle,3\r\n".encode())
    assert read_prompt_csv(tmp_path / "p.csv") == [{"prompt": "a red circle", "seed": 3}]
