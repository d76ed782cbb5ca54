"""The membrane: identity at init, switch-off, scale, SD v1.4 count, kohya safetensors round trip and errors."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import save_file
from torch.func import functional_call

from projects.spm.bench import random_ups
from projects.spm.diffusion.configs import SD14_UNET_CONFIG, SD21_UNET_CONFIG, SDXL_UNET_CONFIG
from projects.spm.network import SPMNetwork, adapted_layers, load_spm_file
from tests.projects.spm.tiny_sd import TINY


def tiny_unet(seed: int = 0, **overrides) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**{**TINY, **overrides}).eval()


def unet_inputs(unet: UNet2DConditionModel, batch: int = 2):
    g = torch.Generator().manual_seed(1)
    c = unet.config
    x = torch.randn(batch, c.in_channels, c.sample_size, c.sample_size, generator=g)
    ctx = torch.randn(batch, 5, c.cross_attention_dim, generator=g)
    return x, torch.tensor([10, 500])[:batch], ctx


def test_sd14_unet_gets_192_layers_and_423936_parameters():
    with torch.device("meta"):  # from the configuration alone: no weights, no memory
        unet = UNet2DConditionModel(**SD14_UNET_CONFIG)
        net = SPMNetwork(unet)
    assert len(net.adapters) == 192
    assert net.num_parameters() == 423_936
    keys = net.state_dict().keys()
    assert "adapters.lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in keys
    assert "adapters.lora_unet_mid_block_attentions_0_proj_in.lora_up.weight" in keys
    assert not any("resnets" in k or "time_emb" in k or "conv_in" in k for k in keys)


@pytest.mark.parametrize("config, layers, params, blocks", [
    (SD21_UNET_CONFIG, 192, 432_128, 16),     # as SD v1.4 with 1024-dim context (attn2.to_k/to_v) and Linear proj_*
    (SDXL_UNET_CONFIG, 722, 2_659_840, 70),   # 11 Transformer2DModels holding 70 transformer blocks: 70 x 10 + 11 x 2
], ids=["sd21", "sdxl"])
def test_sd21_and_sdxl_unet_counts(config: dict, layers: int, params: int, blocks: int):
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
        net = SPMNetwork(unet)
    assert len(net.adapters) == layers and net.num_parameters() == params
    assert sum(type(m).__name__ == "BasicTransformerBlock" for m in unet.modules()) == blocks
    assert all(isinstance(layer, torch.nn.Linear) for path, layer in adapted_layers(unet).values()
               if path.endswith(("proj_in", "proj_out")))


def test_identity_at_init_switch_off_and_scale():
    unet = tiny_unet()
    x, t, ctx = unet_inputs(unet)
    with torch.no_grad():
        ref = unet(x, t, encoder_hidden_states=ctx).sample
        net = SPMNetwork(unet)
        assert torch.equal(unet(x, t, encoder_hidden_states=ctx).sample, ref)  # up = 0: identity
        random_ups(net, seed=3, scale=0.1)
        on = unet(x, t, encoder_hidden_states=ctx).sample
        assert not torch.allclose(on, ref, atol=1e-4)
        with net.applied(0.0):
            assert torch.equal(unet(x, t, encoder_hidden_states=ctx).sample, ref)  # switched off
        # Scale: per-sample gamma [B] equals running each sample with its own float gamma.
        with net.applied(torch.tensor([0.0, 2.0])):
            mixed = unet(x, t, encoder_hidden_states=ctx).sample
        with net.applied(2.0):
            two = unet(x, t, encoder_hidden_states=ctx).sample
        assert torch.allclose(mixed[0], ref[0], atol=1e-6) and torch.allclose(mixed[1], two[1], atol=1e-5)
        # Merged weights (functional_call) give the same output as the hooks.
        with net.applied(0.0):
            merged = functional_call(unet, net.merged_weights(unet, 1.0), (x, t), {"encoder_hidden_states": ctx})
        assert torch.allclose(merged.sample, on, atol=1e-4)
        # Merged weights swapped in while the membrane is still attached would add it twice: refused.
        with pytest.raises(RuntimeError, match="the membrane would be applied twice"):
            functional_call(unet, net.merged_weights(unet, 1.0), (x, t), {"encoder_hidden_states": ctx})
        net.remove()
        assert torch.equal(unet(x, t, encoder_hidden_states=ctx).sample, ref)


def test_base_weights_untouched_and_only_membrane_trainable():
    unet = tiny_unet()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    unet.requires_grad_(False)
    net = SPMNetwork(unet, rank=2, alpha=1.0)
    assert set(unet.state_dict()) == set(before)  # the UNet's own keys are unchanged
    x, t, ctx = unet_inputs(unet)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    for _ in range(2):
        unet(x, t, encoder_hidden_states=ctx).sample.pow(2).mean().backward()
        opt.step()
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())
    assert any(a.lora_up.weight.abs().sum() > 0 for a in net.adapters.values())


def test_save_load_round_trip_and_kohya_layout(tmp_path):
    unet = tiny_unet()
    net = SPMNetwork(unet)
    random_ups(net, seed=3, scale=0.1)
    path = net.save(tmp_path / "circle.safetensors", ["circle", "ring"])
    with safe_open(str(path), framework="pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert meta == {"prompts": "circle,ring", "rank": "1", "alpha": "1.0"}
    assert all(k.startswith("lora_unet_") for k in keys)
    name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    assert {f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"} <= keys
    assert len(keys) == 3 * len(net.adapters)

    other = tiny_unet(seed=5)
    loaded = SPMNetwork.from_file(other, path)
    assert loaded.prompts == ["circle", "ring"]
    for k, v in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    # Same base weights + same file = same output.
    other.load_state_dict(unet.state_dict())
    x, t, ctx = unet_inputs(unet)
    with torch.no_grad():
        assert torch.allclose(unet(x, t, encoder_hidden_states=ctx).sample,
                              other(x, t, encoder_hidden_states=ctx).sample, atol=1e-6)


def test_mismatching_shape_names_key_and_both_shapes(tmp_path):
    net = SPMNetwork(tiny_unet())
    path = net.save(tmp_path / "a.safetensors", ["circle"])
    bigger = tiny_unet(block_out_channels=(16, 32, 48))  # other widths (e.g. SD v2 vs v1)
    with pytest.raises(ValueError, match=r"key 'lora_unet_.*' has shape \([\d, ]+\) in the file but "
                                         r"\([\d, ]+\) in this UNet"):
        SPMNetwork.from_file(bigger, path)
    state, _ = load_spm_file(path)
    state = {k.removeprefix("adapters."): v for k, v in state.items()}
    state["lora_unet_not_a_layer.lora_down.weight"] = torch.zeros(1, 4)
    save_file(state, str(tmp_path / "b.safetensors"), metadata={"prompts": "x", "rank": "1", "alpha": "1"})
    with pytest.raises(ValueError, match="unexpected key 'lora_unet_not_a_layer.lora_down.weight'"):
        SPMNetwork.from_file(tiny_unet(), tmp_path / "b.safetensors")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SPMNetwork.from_file(tiny_unet(), tmp_path / "missing.safetensors")


def _sd14_forward(config: dict, latent: int) -> None:
    """Random-init SD v1.4-structured UNet: forward on one latent with the membrane; identity at init, 192 layers."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config).eval()
    x = torch.randn(1, 4, latent, latent)
    ctx = torch.randn(1, 77, config["cross_attention_dim"])
    t = torch.tensor([500])
    with torch.no_grad():
        ref = unet(x, t, encoder_hidden_states=ctx).sample
        net = SPMNetwork(unet)
        assert len(net.adapters) == 192
        out = unet(x, t, encoder_hidden_states=ctx).sample
        assert out.shape == (1, 4, latent, latent) and torch.isfinite(out).all()
        assert torch.equal(out, ref)  # lora_up = 0 at init
        random_ups(net, seed=3, scale=0.1)
        assert not torch.allclose(unet(x, t, encoder_hidden_states=ctx).sample, ref, atol=1e-4)


def test_sd14_structure_reduced_width_forward():
    """The SD v1.4 block structure at reduced width (fast variant of the full-size test below)."""
    _sd14_forward({**SD14_UNET_CONFIG, "block_out_channels": (32, 32, 64, 64), "cross_attention_dim": 32,
                   "attention_head_dim": 4, "norm_num_groups": 8}, latent=16)


@pytest.mark.slow
def test_sd14_full_size_random_init_forward():
    """Full-size SD v1.4 UNet (860M parameters, random init, ~3.4 GB fp32) on one 32x32 latent."""
    _sd14_forward(SD14_UNET_CONFIG, latent=32)
