"""Many SPMs per sample: batched linear composition vs single SPMNetworks one sample at a time, the official flag vs
its explicit gamma-weighted-sum construction, merged weights vs hooks, kohya files, transfer and its errors."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import UNet2DConditionModel
from torch import nn
from torch.func import functional_call

from projects.spm.composition import SPMComposition
from projects.spm.diffusion.configs import SD14_UNET_CONFIG
from projects.spm.diffusion.model import DiffusionModel
from projects.spm.diffusion.sampling import guided_eps
from projects.spm.network import SPMNetwork, load_spm_file
from projects.spm.toy.toy_base import write_random_base
from projects.spm.transport import facilitated_gammas
from tests.projects.spm.tiny_sd import TINY

CONCEPTS = [["red circle"], ["blue star", "blue cross"], ["white ring"]]


def tiny_unet(seed: int = 0, **overrides) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**{**TINY, **overrides}).eval()


def random_spm(unet: nn.Module, seed: int, rank: int = 1, alpha: float = 1.0) -> SPMNetwork:
    """A membrane with random (non-zero) ups and downs, so every SPM changes the output."""
    torch.manual_seed(seed)
    net = SPMNetwork(unet, rank=rank, alpha=alpha)
    with torch.no_grad():
        for adapter in net.adapters.values():
            adapter.lora_up.weight.normal_(0, 0.3)
    return net


def inputs(batch: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 16, 16, generator=g)
    ctx = torch.randn(batch, 5, TINY["cross_attention_dim"], generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    return x, t, ctx


@pytest.fixture(scope="module")
def spm_files(tmp_path_factory):
    """Three kohya files written by SPMNetwork.save from one UNet (ranks 1, 2, 1 and alphas 1, 1, 0.5)."""
    folder = tmp_path_factory.mktemp("spms")
    unet = tiny_unet()
    paths = []
    for i, (rank, alpha) in enumerate([(1, 1.0), (2, 1.0), (1, 0.5)]):
        net = random_spm(unet, seed=10 + i, rank=rank, alpha=alpha)
        paths.append(net.save(folder / f"spm{i}.safetensors", CONCEPTS[i]))
        net.remove()
    return paths


def test_linear_per_sample_equals_single_spms_one_sample_at_a_time(spm_files):
    unet = tiny_unet()
    ref_unet = copy.deepcopy(unet)
    comp = SPMComposition.from_files(unet, spm_files)
    assert comp.concepts == CONCEPTS and comp.num_spms == 3
    nets = [SPMNetwork.from_file(ref_unet, p) for p in spm_files]  # branches add up layer by layer (Eq. 9)
    gammas = torch.tensor([[1.0, 0.0, 0.5], [0.2, 1.5, 0.0], [0.7, 0.3, 1.0]])
    x, t, ctx = inputs(3)
    with torch.no_grad():
        base = unet(x, t, encoder_hidden_states=ctx).sample
        with comp.applied(gammas):
            out = unet(x, t, encoder_hidden_states=ctx).sample
        assert torch.equal(unet(x, t, encoder_hidden_states=ctx).sample, base)  # off outside applied()
        for b in range(3):
            for net, g in zip(nets, gammas[b].tolist(), strict=True):
                net.multiplier = g  # a scalar multiplier, one sample at a time
            ref = ref_unet(x[b:b + 1], t[b:b + 1], encoder_hidden_states=ctx[b:b + 1]).sample
            assert torch.allclose(out[b:b + 1], ref, atol=1e-5), b
    assert not torch.allclose(out, base, atol=1e-3)
    comp.remove()
    with torch.no_grad(), comp.applied(gammas):
        assert torch.equal(unet(x, t, encoder_hidden_states=ctx).sample, base)  # hooks detached


def test_cfg_batch_shares_gamma_and_one_gamma_set_broadcasts(spm_files):
    unet = tiny_unet()
    comp = SPMComposition.from_files(unet, spm_files)
    gammas = torch.tensor([[1.0, 0.0, 0.5], [0.2, 1.5, 0.0]])
    x, t, ctx = inputs(4)  # [uncond; cond] layout: rows 0, 1 and rows 2, 3 use gamma rows 0, 1
    with torch.no_grad():
        with comp.applied(gammas):
            cfg = unet(x, t, encoder_hidden_states=ctx).sample
        with comp.applied(gammas.repeat(2, 1)):
            explicit = unet(x, t, encoder_hidden_states=ctx).sample
        assert torch.equal(cfg, explicit)
        comp.merge_uniform = False  # the hooks' shared-row path (ups pre-multiplied by the gammas)
        with comp.applied([0.3, 0.0, 1.0]):
            one = unet(x, t, encoder_hidden_states=ctx).sample
        comp.merge_uniform = True
        # One shared gamma row (folded into the ups) = the per-sample path with that row.
        rows = torch.tensor([[0.3, 0.0, 1.0]] * 3 + [[1.0, 1.0, 1.0]])
        with comp.applied(rows):
            assert torch.allclose(unet(x, t, encoder_hidden_states=ctx).sample[:3], one[:3], atol=1e-5)
    with pytest.raises(ValueError, match=r"expected \[B, 3\] or \[3\]"):
        with comp.applied([1.0, 2.0]):
            pass
    with pytest.raises(ValueError, match="not a multiple"), torch.no_grad(), comp.applied(torch.eye(3)):
        unet(x, t, encoder_hidden_states=ctx)


def test_official_flag_equals_gamma_weighted_sum_network(tmp_path):
    """Official loop: ONE rank-r network loaded with sum_c g_c * state_c (alpha kept: scale fixed at build)."""
    unet = tiny_unet()
    paths = []
    for i in range(3):
        net = random_spm(unet, seed=20 + i, rank=2)
        paths.append(net.save(tmp_path / f"s{i}.safetensors", CONCEPTS[i]))
        net.remove()
    ref_unet = copy.deepcopy(unet)
    comp = SPMComposition.from_files(unet, paths, mode="official")
    states = [load_spm_file(p)[0] for p in paths]
    weighted_net = SPMNetwork(ref_unet, rank=2, alpha=1.0)
    gammas = torch.tensor([[1.0, 0.5, 0.0], [0.8, 0.6, 1.2]])
    x, t, ctx = inputs(2)
    with torch.no_grad():
        with comp.applied(gammas):
            out = unet(x, t, encoder_hidden_states=ctx).sample
        for b in range(2):
            weighted = {k: sum(g * s[k] for g, s in zip(gammas[b].tolist(), states, strict=True)) for k in states[0]}
            weighted.update({k: v for k, v in states[0].items() if k.endswith(".alpha")})
            weighted_net.load_spm_state_dict(weighted)
            ref = ref_unet(x[b:b + 1], t[b:b + 1], encoder_hidden_states=ctx[b:b + 1]).sample
            assert torch.allclose(out[b:b + 1], ref, atol=1e-5), b
        # One SPM at gamma g: official = g^2 x the trained delta at layer level, so it equals linear at g^2.
        single = SPMComposition.from_files(copy.deepcopy(unet), paths[:1], mode="official")
        lin = SPMComposition.from_files(copy.deepcopy(unet), paths[:1])
        with single.applied([1.5]):
            a = single.unet(x, t, encoder_hidden_states=ctx).sample
        with lin.applied([2.25]):
            b_ = lin.unet(x, t, encoder_hidden_states=ctx).sample
        assert torch.allclose(a, b_, atol=1e-5)
    with pytest.raises(ValueError, match="need one rank"):
        SPMComposition(tiny_unet(), states[:1] + [_rank1_state(tmp_path)], [["a"], ["b"]], mode="official")


def _rank1_state(tmp_path):
    net = random_spm(tiny_unet(), seed=30, rank=1)
    return load_spm_file(net.save(tmp_path / "r1.safetensors", ["b"]))[0]


@pytest.mark.parametrize("mode", ["linear", "official"])
def test_merged_weights_equal_hooked_forward(tmp_path, mode):
    unet = tiny_unet()
    paths = []
    for i in range(2):
        net = random_spm(unet, seed=40 + i, rank=2, alpha=1.0)
        paths.append(net.save(tmp_path / f"m{i}.safetensors", CONCEPTS[i]))
        net.remove()
    comp = SPMComposition.from_files(unet, paths, mode=mode)
    gammas = [0.7, 1.3]
    params = comp.merged_weights(gammas)
    assert any(k.endswith("proj_in.weight") for k in params) and any(k.endswith("to_q.weight") for k in params)
    x, t, ctx = inputs(2)
    originals = {name: p for name, p in unet.named_parameters()}
    with torch.no_grad():
        comp.merge_uniform = False
        with comp.applied(gammas):
            assert comp.hooked
            hooked = unet(x, t, encoder_hidden_states=ctx).sample
        merged = functional_call(unet, params, (x, t), {"encoder_hidden_states": ctx}).sample  # no hooks outside
        comp.merge_uniform = True
        with comp.applied(gammas):  # one gamma row: merged into the weights on entry, no hooks
            assert not comp.hooked
            auto = unet(x, t, encoder_hidden_states=ctx).sample
    assert torch.allclose(merged, hooked, atol=1e-4) and torch.allclose(auto, hooked, atol=1e-4)
    assert all(p is originals[name] for name, p in unet.named_parameters())  # the UNet's own weights are back
    with pytest.raises(RuntimeError, match="already active"), comp.applied(gammas), comp.applied(gammas):
        pass
    with pytest.raises(ValueError, match="one gamma set of 2 values"):
        comp.merged_weights(torch.ones(2, 2))


def test_linear_and_conv_layers_match_their_adapters(spm_files):
    """Layer level: the stacked branch of a Conv2d (proj_in) and a Linear (attn2.to_k) equals sum_c g_c adapter_c."""
    unet = tiny_unet()
    comp = SPMComposition.from_files(unet, spm_files)
    nets = [SPMNetwork.from_file(copy.deepcopy(unet), p) for p in spm_files]
    gammas = torch.tensor([[0.4, 1.1, 0.9], [1.0, 0.0, 2.0]])
    for key, shape in [("lora_unet_down_blocks_1_attentions_0_proj_in", (2, 16, 4, 4)),
                       ("lora_unet_up_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", (2, 5, 32))]:
        path = comp._paths[key]
        layer = dict(unet.named_modules())[path]
        assert isinstance(layer, nn.Conv2d if "proj_in" in key else nn.Linear)
        x = torch.randn(shape[0], layer.weight.shape[1], *shape[2:]) if "proj_in" in key else torch.randn(shape)
        with torch.no_grad(), comp.applied(gammas):
            out = layer(x)
            ref = layer._conv_forward(x, layer.weight, layer.bias) if "proj_in" in key else nn.functional.linear(
                x, layer.weight, layer.bias)
            gv = gammas.view(2, *([1] * (out.ndim - 1)), 3)
            for c, net in enumerate(nets):
                ref = ref + net.adapters[key](x) * gv[..., c]
        assert torch.allclose(out, ref, atol=1e-5), key


def test_transfer_to_another_model_with_gammas_from_its_text_encoder(tmp_path, spm_files):
    """SPMs saved from one random toy UNet load into a second random UNet with the same config (paper 4.2)."""
    target = DiffusionModel.from_folder(write_random_base(tmp_path / "target", TINY, seed=7))
    unet = target.unet
    ref_unet = copy.deepcopy(unet)
    comp = SPMComposition.from_files(unet, spm_files)
    prompts = ["a red circle", "a blue cross"]
    gammas = facilitated_gammas(target.text_encoder, target.tokenizer, prompts, comp.concepts)
    assert gammas.shape == (2, 3) and gammas[0, 0] == 1.0 and gammas[1, 1] == 1.0
    nets = [SPMNetwork.from_file(ref_unet, p) for p in spm_files]
    cond = target.encode_prompts(prompts)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        with comp.applied(gammas):
            out = target.predict(x, 500, cond)
        for b in range(2):
            for net, g in zip(nets, gammas[b].tolist(), strict=True):
                net.multiplier = g
            ref = ref_unet(x[b:b + 1], torch.tensor([500]), encoder_hidden_states=cond[b:b + 1]).sample
            assert torch.allclose(out[b:b + 1], ref, atol=1e-5)
        # One CFG step with per-sample gammas runs through the model's own guided_eps.
        with comp.applied(gammas):
            eps = guided_eps(target, x, 500, target.encode_prompts([""]), cond, 7.5)
    assert eps.shape == x.shape and torch.isfinite(eps).all()


def test_incompatible_unet_names_file_key_and_shapes(spm_files, tmp_path):
    bigger = tiny_unet(block_out_channels=(16, 32, 48))  # other widths (e.g. SD v2/XL vs v1)
    with pytest.raises(ValueError, match=r"spm0\.safetensors: key 'lora_unet_.*' has shape \(\d+, \d+.*\) in the "
                                         r"file but this UNet needs \(\d+, \d+.*\)"):
        SPMComposition.from_files(bigger, spm_files)
    other_ctx = tiny_unet(cross_attention_dim=48)  # only attn2.to_k / to_v differ
    with pytest.raises(ValueError, match=r"attn2_to_k\.lora_down\.weight' has shape \(1, 32\) in the file but this "
                                         r"UNet needs \(1, 48\)"):
        SPMComposition.from_files(other_ctx, spm_files[:1])
    from safetensors.torch import save_file

    state, _ = load_spm_file(spm_files[0])
    state = {k.removeprefix("adapters."): v for k, v in state.items()}
    state["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.zeros(1, 4)
    save_file(state, str(tmp_path / "te.safetensors"), metadata={"prompts": "x", "rank": "1", "alpha": "1"})
    with pytest.raises(ValueError, match="te.safetensors: unexpected key 'lora_te_text_model"):
        SPMComposition.from_files(tiny_unet(), [tmp_path / "te.safetensors"])
    del state["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"]
    missing = next(k for k in state if k.endswith("lora_up.weight"))
    del state[missing]
    save_file(state, str(tmp_path / "gap.safetensors"))
    with pytest.raises(ValueError, match=f"gap.safetensors: key '{missing}' is missing"):
        SPMComposition.from_files(tiny_unet(), [tmp_path / "gap.safetensors"])
    with pytest.raises(ValueError, match="mode 'sum' is not one of"):
        SPMComposition.from_files(tiny_unet(), spm_files, mode="sum")


class Transformer2DModel(nn.Module):
    """A stand-in block (matched by class name) with a strided 3x3 conv, a 1x1 conv and a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.point = nn.Conv2d(6, 5, 1)
        self.proj = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.point(self.conv(x)).flatten(2).transpose(1, 2))


@pytest.mark.parametrize("mode", ["linear", "official"])
def test_strided_conv_pointwise_conv_and_linear(mode):
    """Every layer kind against the reference (SPMNetworks one sample at a time, or the official weighted
    network), per-sample and shared gammas, and merged weights."""
    torch.manual_seed(0)
    model = nn.Sequential(Transformer2DModel()).eval()
    nets = [random_spm(copy.deepcopy(model), seed=50 + i, rank=2, alpha=0.5) for i in range(3)]
    states = [n.state_dict() for n in nets]
    comp = SPMComposition(model, states, [["a"], ["b"], ["c"]], mode=mode)
    assert {s.kind for s in comp.stacks.values()} == {"conv", "conv1x1", "linear"}
    ref_model = copy.deepcopy(model)
    ref_nets = [SPMNetwork(ref_model, rank=2, alpha=0.5) for _ in range(3 if mode == "linear" else 1)]
    x = torch.randn(3, 4, 8, 8)
    gammas = torch.tensor([[1.0, 0.5, 0.0], [0.3, 1.2, 0.7], [0.3, 1.2, 0.7]])
    with torch.no_grad():
        with comp.applied(gammas):
            out = model(x)
        for b in range(3):
            if mode == "linear":
                for net, state, g in zip(ref_nets, states, gammas[b].tolist(), strict=True):
                    net.load_spm_state_dict(state)
                    net.multiplier = g
            else:
                weighted = {k: sum(g * s[k] for g, s in zip(gammas[b].tolist(), states, strict=True))
                            for k in states[0]}
                weighted.update({k: v for k, v in states[0].items() if k.endswith(".alpha")})
                ref_nets[0].load_spm_state_dict(weighted)
            assert torch.allclose(out[b], ref_model(x[b:b + 1])[0], atol=1e-5), b
        with comp.applied(gammas[1]):  # one shared row
            shared = model(x)
    with comp.applied(gammas), torch.enable_grad():  # autograd on: the branch is added out of place
        assert torch.allclose(model(x.requires_grad_()), out, atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(shared[1:], out[1:], atol=1e-5)
        merged = functional_call(model, comp.merged_weights(gammas[1]), (x,))
        assert torch.allclose(merged, shared, atol=1e-5)


def test_sd14_spm_on_sd2_layout_fails_clearly():
    """An SD v1.4-shaped SPM on an SD v2-configured UNet (linear proj_in, 1024-d context): built on the meta
    device, so no weights are allocated."""
    with torch.device("meta"):
        v1 = UNet2DConditionModel(**SD14_UNET_CONFIG)
        v2 = UNet2DConditionModel(**{**SD14_UNET_CONFIG, "cross_attention_dim": 1024,
                                     "attention_head_dim": (5, 10, 20, 20), "use_linear_projection": True})
        state = {k: torch.empty(v.shape) if v.ndim else torch.tensor(1.0, device="cpu")  # alpha: a real scalar
                 for k, v in SPMNetwork(v1).state_dict().items()}
        assert len(SPMComposition(v1, [state], [["snoopy"]]).stacks) == 192
        with pytest.raises(ValueError, match=r"snoopy\.safetensors: key 'lora_unet_down_blocks_0_attentions_0_proj_in"
                                             r"\.lora_down\.weight' has shape \(1, 320, 1, 1\) in the file but this "
                                             r"UNet needs \(1, 320\)"):
            SPMComposition(v2, [state], [["snoopy"]], names=["snoopy.safetensors"])
