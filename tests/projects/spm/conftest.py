"""The SPM tests' shared models, built once per session: the tiny random toy base model folder and the tiny SD v1.x /
v2.x / SDXL pipelines. Tests read them; a test that changes a model works on a copy (``copy.deepcopy``) or undoes
what it attached (``SPMNetwork.remove``). Each is built with its own seed inside ``torch.random.fork_rng``, so no
test's random stream depends on which test asked for it first."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from projects.spm.diffusion.model import DiffusionModel
from projects.spm.toy.classifier import ToyClassifier
from projects.spm.toy.toy_base import write_random_base
from tests.projects.spm.tiny_sd import TINY, tiny_pipeline

FAMILIES = ("sd1", "sd2", "sdxl")


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A random toy model folder (``TINY`` UNet, random text encoder) with a random toy classifier."""
    with torch.random.fork_rng():
        out = write_random_base(tmp_path_factory.mktemp("tiny_base"), TINY)
        save_file(ToyClassifier().state_dict(), str(out / "classifier.safetensors"))
    return out


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> dict[str, SimpleNamespace]:
    """``{family: (pipe, folder, model)}``: a random diffusers pipeline of each family, its saved folder and
    ``DiffusionModel.from_folder`` of that folder."""
    out = {}
    with torch.random.fork_rng():
        for family in FAMILIES:
            pipe = tiny_pipeline(family)
            pipe.set_progress_bar_config(disable=True)
            folder = tmp_path_factory.mktemp(family)
            pipe.save_pretrained(folder, safe_serialization=True)
            out[family] = SimpleNamespace(pipe=pipe, folder=folder, model=DiffusionModel.from_folder(folder))
    return out
