"""diffusers reads our SPM files as ordinary kohya LoRAs and computes what our membrane computes.

An ``SPMNetwork`` with random non-zero weights is saved with ``network.save`` and loaded into an identical copy of the
pipeline with ``pipe.load_lora_weights`` (peft backend). Shown, on tiny SD1 (rank 1 and rank 4 with alpha 3) and
SDXL pipelines: diffusers adapts exactly our layers; the UNet output equals ours at adapter weight 1 and 0.5
(``set_adapters(..., adapter_weights=[0.5])`` is our ``multiplier = 0.5``: both scale each layer's branch linearly,
which the layer-level check shows); ``fuse_lora`` gives the same output; two SPMs add up as two adapters (Eq. 9);
and a whole SD1 pipeline run (2 DDIM steps with CFG, ``output_type="latent"``) equals our ``denoise`` with our
membrane on.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from peft.tuners.lora import LoraLayer

from projects.spm.diffusion.ddim import DDIM
from projects.spm.diffusion.model import DiffusionModel
from projects.spm.diffusion.sampling import denoise
from projects.spm.network import SPMNetwork, kohya_name

CASES = {"sd1-rank1": ("sd1", 1, 1.0), "sd1-rank4-alpha3": ("sd1", 4, 3.0), "sdxl-rank1": ("sdxl", 1, 1.0)}
ATOL = 1e-5  # float32; measured: 0 unfused, about 2e-6 fused (outputs of size 1)


def unet_inputs(unet, seed: int = 1) -> dict:
    """Fixed latents, timesteps, encoder states (and SDXL's pooled text embeds / time ids) for a batch of 2."""
    g = torch.Generator().manual_seed(seed)
    c = unet.config
    kw = dict(sample=torch.randn(2, c.in_channels, c.sample_size, c.sample_size, generator=g),
              timestep=torch.tensor([10, 500]),
              encoder_hidden_states=torch.randn(2, 16, c.cross_attention_dim, generator=g))
    if c.addition_embed_type == "text_time":
        pooled = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(2, pooled, generator=g),
                                   "time_ids": torch.randn(2, 6, generator=g)}
    return kw


def run(unet, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return unet(**inputs).sample


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tiny_sd, tmp_path_factory):
    """``ours``: a copy of the session's pipeline with our membrane; ``theirs``: another copy with our file loaded by
    diffusers."""
    family, rank, alpha = CASES[request.param]
    ours = copy.deepcopy(tiny_sd[family].pipe)
    theirs = copy.deepcopy(ours)
    net = SPMNetwork(ours.unet.eval(), rank=rank, alpha=alpha)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    path = net.save(tmp_path_factory.mktemp("spm") / f"{request.param}.safetensors", prompts=["cat"])
    theirs.load_lora_weights(str(path), adapter_name="spm")
    theirs.set_progress_bar_config(disable=True)
    inputs = unet_inputs(ours.unet)
    outputs = {}  # our UNet output per multiplier (0: the base model)
    for weight in (1.0, 0.5, 0.0):
        with net.applied(weight):
            outputs[weight] = run(ours.unet, inputs)
    return SimpleNamespace(family=family, rank=rank, alpha=alpha, net=net, ours=ours, theirs=theirs, inputs=inputs,
                           outputs=outputs)


def test_diffusers_adapts_exactly_our_layers_with_our_rank_and_alpha(case):
    lora = {name: m for name, m in case.theirs.unet.named_modules() if isinstance(m, LoraLayer)}
    assert {kohya_name(name) for name in lora} == set(case.net.adapters)
    assert {m.scaling["spm"] for m in lora.values()} == {case.alpha / case.rank}


@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_unet_output_equals_ours_at_adapter_weight(case, weight):
    case.theirs.set_adapters(["spm"], adapter_weights=[weight])
    try:
        theirs = run(case.theirs.unet, case.inputs)
    finally:
        case.theirs.set_adapters(["spm"], adapter_weights=[1.0])
    ours = case.outputs[weight]
    assert (ours - case.outputs[0.0]).abs().max() > 0.05  # the membrane does change the output
    torch.testing.assert_close(theirs, ours, rtol=0, atol=ATOL)


def test_weight_scales_each_layers_branch_linearly_in_both(case):
    """One adapted layer (the first cross-attention key projection): branch(0.5) = 0.5 branch(1), ours and peft's."""
    path = next(n for n in case.net.adapters if n.endswith("attn2_to_k"))
    name = next(n for n, _ in case.ours.unet.named_modules() if kohya_name(n) == path)
    layer, peft_layer = case.ours.unet.get_submodule(name), case.theirs.unet.get_submodule(name)
    x = torch.randn(2, 16, layer.in_features, generator=torch.Generator().manual_seed(3))
    branches = {}  # weight: (our branch, peft's branch)
    with torch.no_grad():
        base = torch.nn.functional.linear(x, layer.weight, layer.bias)
        try:
            for w in (1.0, 0.5):
                case.theirs.set_adapters(["spm"], adapter_weights=[w])
                with case.net.applied(w):
                    branches[w] = (layer(x) - base, peft_layer(x) - base)
        finally:
            case.theirs.set_adapters(["spm"], adapter_weights=[1.0])
    for at_one, at_half in zip(branches[1.0], branches[0.5], strict=True):
        assert at_one.abs().max() > 0.05
        torch.testing.assert_close(at_half, 0.5 * at_one, rtol=0, atol=1e-6)
    torch.testing.assert_close(branches[1.0][1], branches[1.0][0], rtol=0, atol=1e-6)


def test_fused_lora_gives_our_output(case):
    fused = copy.deepcopy(case.theirs)  # unfuse_lora would leave the base weights off by rounding
    fused.fuse_lora()
    torch.testing.assert_close(run(fused.unet, case.inputs), case.outputs[1.0], rtol=0, atol=ATOL)


@pytest.mark.parametrize("case", ["sd1-rank1"], indirect=True)
@pytest.mark.filterwarnings("ignore:Already found a `peft_config`:UserWarning")  # a second adapter: intended
def test_two_spms_add_up_as_two_adapters(case, tmp_path):
    """Paper Eq. 9: two membranes on one UNet (gammas 1 and 0.5) = two diffusers adapters with those weights."""
    second = SPMNetwork(case.ours.unet, rank=2, alpha=1.0, multiplier=0.5)
    try:
        with torch.no_grad():
            for p in second.parameters():
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(5))
        case.theirs.load_lora_weights(str(second.save(tmp_path / "second.safetensors", ["dog"])), adapter_name="b")
        case.theirs.set_adapters(["spm", "b"], adapter_weights=[1.0, 0.5])
        theirs, ours = run(case.theirs.unet, case.inputs), run(case.ours.unet, case.inputs)
    finally:
        second.remove()
        case.theirs.delete_adapters("b")
        case.theirs.set_adapters(["spm"], adapter_weights=[1.0])
    assert (ours - case.outputs[1.0]).abs().max() > 0.05
    torch.testing.assert_close(theirs, ours, rtol=0, atol=ATOL)


@pytest.mark.parametrize("case", ["sd1-rank1", "sd1-rank4-alpha3"], indirect=True)  # SDXL: the UNet checks only
def test_sd1_pipeline_latents_equal_our_denoise(case):
    """``pipe(prompt, latents=..., output_type="latent")`` with diffusers' LoRA = our DDIM + CFG with our membrane."""
    pipe, sched = case.ours, case.ours.scheduler
    model = DiffusionModel(pipe.unet, pipe.text_encoder, pipe.tokenizer,
                           DDIM(sched.alphas_cumprod, sched.config.set_alpha_to_one), vae=pipe.vae,
                           scheduler_config=dict(sched.config))
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(4))
    ours = denoise(model, noise, model.encode_prompts(["a red circle"]), model.encode_prompts([""]), guidance=7.5,
                   steps=2)
    theirs = case.theirs("a red circle", num_inference_steps=2, guidance_scale=7.5, latents=noise,
                         output_type="latent").images
    torch.testing.assert_close(theirs, ours, rtol=0, atol=ATOL)
