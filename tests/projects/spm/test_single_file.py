"""Single-file SD checkpoints (original LDM layout): tiny SD1 / SD2 / SDXL pipelines written as one .safetensors or
.ckpt load back equal through ``load_single_file``, offline, and every bad input is one line."""

from __future__ import annotations

import argparse
import json
import shutil
import socket

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from projects.spm.diffusion.single_file import load_single_file
from projects.spm.module import BaseModel, SPMModule
from projects.spm.tools.generate import main as generate
from tests.projects.spm.ldm_layout import pipeline_to_ldm


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """HF_HUB_OFFLINE set and every socket connection refused (and recorded): nothing here may reach the hub."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access from a single-file test")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield
    assert not attempts, f"tried to reach the network: {attempts}"


@pytest.fixture(scope="module")
def tiny(tiny_sd, tmp_path_factory):
    """``tiny(family)`` -> (the session's tiny pipeline, its diffusers folder, the pipeline as one original-layout
    .safetensors)."""
    root, made = tmp_path_factory.mktemp("single_file"), {}

    def get(family: str):
        if family not in made:
            pipe = tiny_sd[family].pipe
            save_file(pipeline_to_ldm(pipe), root / f"{family}.safetensors")
            made[family] = pipe, tiny_sd[family].folder, root / f"{family}.safetensors"
        return made[family]

    return get


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


def plain(config) -> dict:
    """A diffusers config as JSON would hold it (lists, no private keys)."""
    return {k: v for k, v in json.loads(json.dumps(dict(config))).items() if not k.startswith("_")}


def assert_same_weights(loaded, original):
    a, b = loaded.state_dict(), original.state_dict()
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_single_file_loads_back_equal(tiny, family):
    pipe, folder, file = tiny(family)
    parts = load_single_file(file, folder)
    encoders = ["text_encoder", "text_encoder_2"] if family == "sdxl" else ["text_encoder"]
    assert parts["family"] == family and parts["config"] == folder
    for name in ["unet", "vae", *encoders]:
        assert_same_weights(parts[name], getattr(pipe, name))
        assert not parts[name].training
    assert plain(parts["unet"].config) == plain(pipe.unet.config)
    assert parts["vae"].config.scaling_factor == pipe.vae.config.scaling_factor
    assert parts["scheduler_config"] == json.loads((folder / "scheduler/scheduler_config.json").read_text())
    ids = parts["tokenizer"](["a red circle"], padding="max_length", max_length=16, return_tensors="pt").input_ids
    assert torch.equal(ids, pipe.tokenizer(["a red circle"], padding="max_length", max_length=16,
                                           return_tensors="pt").input_ids)
    with torch.no_grad():  # the OpenCLIP q/k/v split and the projection's transpose, through the outputs
        for name in encoders:
            out, ref = parts[name](ids, output_hidden_states=True), getattr(pipe, name)(ids, output_hidden_states=True)
            assert torch.equal(out.hidden_states[-2], ref.hidden_states[-2])
            if name == "text_encoder_2":
                assert torch.equal(out.text_embeds, ref.text_embeds)


def test_the_written_files_use_the_original_key_names(tiny):
    """The test layout is the original one, not merely what diffusers' converter inverts (SD v1.5 / SDXL key names at
    layers_per_block 1)."""
    sd1 = set(pipeline_to_ldm(tiny("sd1")[0]))
    unet = {"input_blocks.1.1.proj_in.weight", "input_blocks.2.0.op.weight", "middle_block.2.out_layers.3.weight",
            "output_blocks.1.1.conv.weight", "time_embed.2.bias", "out.2.weight"}
    assert {f"model.diffusion_model.{k}" for k in unet} <= sd1
    assert {"first_stage_model.encoder.mid.attn_1.q.weight", "first_stage_model.decoder.up.1.upsample.conv.weight",
            "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight", "first_stage_model.encoder.norm_out.bias",
            "cond_stage_model.transformer.text_model.final_layer_norm.weight"} <= sd1
    assert pipeline_to_ldm(tiny("sd1")[0])["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4  # 1x1 conv
    xl = set(pipeline_to_ldm(tiny("sdxl")[0]))
    assert {"model.diffusion_model.label_emb.0.0.weight",
            "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
            "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight",
            "conditioner.embedders.1.model.text_projection", "conditioner.embedders.1.model.ln_final.bias"} <= xl


def test_ckpt_is_read_with_weights_only(tiny, tmp_path, monkeypatch):
    pipe, folder, file = tiny("sd1")
    ckpt = tmp_path / "model.ckpt"  # a Lightning / LDM training checkpoint: tensors plus plain values
    torch.save({"state_dict": load_file(str(file)), "global_step": 7, "epoch": 1}, ckpt)
    calls, real_load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw) or real_load(*a, **kw))
    parts = load_single_file(ckpt, folder)
    assert calls and all(kw.get("weights_only") is True for kw in calls)
    assert_same_weights(parts["unet"], pipe.unet)
    assert_same_weights(parts["text_encoder"], pipe.text_encoder)


def test_ckpt_with_a_pickled_object_is_refused(tiny, tmp_path):
    _, folder, file = tiny("sd1")
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(str(file)), "hyper_parameters": argparse.Namespace(lr=1e-4)}, ckpt)
    with pytest.raises(ValueError) as err:
        load_single_file(ckpt, folder)
    assert "pickled argparse.Namespace" in one_line(err) and "weights_only=True" in one_line(err)


def test_truncated_or_foreign_file_is_one_line(tiny, tmp_path):
    _, folder, file = tiny("sd1")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(file.read_bytes()[:5000])
    with pytest.raises(ValueError) as err:
        load_single_file(cut, folder)
    assert "not a readable .safetensors file" in one_line(err)
    cut_ckpt = tmp_path / "cut.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.out.2.weight": torch.zeros(64, 64)}}, cut_ckpt)
    cut_ckpt.write_bytes(cut_ckpt.read_bytes()[:300])
    with pytest.raises(ValueError) as err:
        load_single_file(cut_ckpt, folder)
    assert "not a readable PyTorch file" in one_line(err)
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.ones(())}, lora)
    with pytest.raises(ValueError) as err:
        load_single_file(lora, folder)
    assert "no model.diffusion_model.* tensors" in one_line(err)


@pytest.mark.parametrize("case", ["none", "not_a_folder", "no_tokenizer", "no_model_index"])
def test_missing_config_is_our_one_line(tiny, tmp_path, case):
    """No config, or one lacking pieces: our line naming what to pass and what is missing, never a hub look-up."""
    _, folder, file = tiny("sd1")
    config = {"none": None, "not_a_folder": tmp_path / "nowhere"}.get(case, tmp_path / "partial")
    if case in ("no_tokenizer", "no_model_index"):
        shutil.copytree(folder, config)
        if case == "no_tokenizer":
            shutil.rmtree(config / "tokenizer")
            (config / "text_encoder/config.json").unlink()
        else:
            (config / "model_index.json").unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_single_file(file, config)
    text = one_line(err)
    assert text.startswith(f"{file}: a single-file checkpoint needs --model.base.config")
    assert "SD v1.x: e.g. a local stable-diffusion-v1-5 folder" in text
    expected = {"none": "none given", "not_a_folder": "is not a folder",
                "no_tokenizer": "lacks text_encoder/config.json, tokenizer/tokenizer_config.json, "
                                "tokenizer/tokenizer.json (or vocab.json + merges.txt)",
                "no_model_index": "lacks model_index.json"}[case]
    assert expected in text


@pytest.mark.parametrize("file_family, folder_family", [("sd1", "sd2"), ("sd2", "sd1"), ("sdxl", "sd1")])
def test_config_of_another_family_is_refused(tiny, file_family, folder_family):
    with pytest.raises(ValueError) as err:
        load_single_file(tiny(file_family)[2], tiny(folder_family)[1], flag="--base_config")
    names = {"sd1": "SD v1.x", "sd2": "SD v2.x", "sdxl": "SDXL"}
    assert (f"an {names[file_family]} checkpoint, but --base_config {tiny(folder_family)[1]} is an "
            f"{names[folder_family]} folder") in one_line(err)


def test_config_of_another_size_or_a_missing_tensor_is_one_line(tiny, tmp_path):
    _, folder, file = tiny("sd1")
    wide = tmp_path / "wide"
    shutil.copytree(folder, wide)
    config = json.loads((wide / "text_encoder/config.json").read_text())
    (wide / "text_encoder/config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(ValueError) as err:
        load_single_file(file, wide)
    assert "text_encoder tensors are missing from the file (first, in diffusers names: ['encoder.layers.2" in \
        one_line(err)
    config = json.loads((wide / "unet/config.json").read_text())
    (wide / "unet/config.json").write_text(json.dumps({**config, "block_out_channels": [64, 64]}))
    with pytest.raises(ValueError) as err:
        load_single_file(file, wide)
    assert "cannot load the unet (time_embedding.linear_1.weight has shape" in one_line(err)
    holed = tmp_path / "holed.safetensors"
    save_file({k: v for k, v in load_file(str(file)).items() if "output_blocks.1.0.in_layers.2" not in k}, holed)
    with pytest.raises(ValueError) as err:
        load_single_file(holed, folder)
    assert "cannot load the unet (tensors the config asks for are missing from the file)" in one_line(err)


def test_checkpoint_without_vae_takes_the_config_vae(tiny, tmp_path):
    """``*_noVAE`` releases (Realistic Vision): the VAE comes from the config folder's vae/ weights."""
    pipe, folder, _ = tiny("sd1")
    novae = tmp_path / "novae.safetensors"
    save_file(pipeline_to_ldm(pipe, vae=False), novae)
    parts = load_single_file(novae, folder)
    assert_same_weights(parts["vae"], pipe.vae)
    assert_same_weights(parts["unet"], pipe.unet)
    bare = tmp_path / "configs_only"
    shutil.copytree(folder, bare, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(FileNotFoundError) as err:
        load_single_file(novae, bare)
    assert "has no VAE (first_stage_model.*)" in one_line(err)
    assert_same_weights(load_single_file(tiny("sd1")[2], bare)["unet"], pipe.unet)  # configs alone are enough


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_generate_runs_on_a_single_file_as_on_its_folder(tiny, family, tmp_path):
    """``generate --base_model <file> --base_config <folder>``: the same images as the diffusers folder gives."""
    _, folder, file = tiny(family)
    outs = {}
    for name, base in (("file", ["--base_model", str(file), "--base_config", str(folder)]),
                       ("folder", ["--base_model", str(folder)])):
        outs[name] = tmp_path / name
        info = generate([*base, "--prompts", "a red circle", "--steps", "2", "--out", str(outs[name]), "--logger",
                         "none"])
        assert info["images"] == 1
    images = [Image.open(next((outs[n] / "images").iterdir())) for n in ("file", "folder")]
    assert images[0].tobytes() == images[1].tobytes()


def test_training_takes_a_single_file_with_its_config_folder(tiny):
    """``--model.base.path <file> --model.base.config <folder>``: the module's frozen model is the file's."""
    pipe, folder, file = tiny("sd1")
    module = SPMModule(BaseModel(str(file), str(folder)), anchoring={"mode": "none"})
    module.setup("fit")
    assert_same_weights(module.diffusion.unet, pipe.unet)
    with pytest.raises(FileNotFoundError, match=r"needs --model.base.config") as err:
        SPMModule(BaseModel(str(file))).setup("fit")
    one_line(err)
