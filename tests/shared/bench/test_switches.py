"""The compile switch of ``make bench-gpu`` (``shared/bench/switches.py``): a compiled ViT encoder gives the eager
tokens, attention maps and gradients, with and without attention capture."""

import copy

import pytest
import torch

from shared.backbones import ViTBackbone
from shared.bench import switches


@pytest.mark.slow
def test_compiled_vit_encoder_matches_eager_with_attention_capture() -> None:
    torch.manual_seed(0)
    eager = ViTBackbone("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                        mlp_ratio=2.0)
    compiled = copy.deepcopy(eager)
    switches.compile_method(compiled, "encode")          # inductor, as on the GPU
    x = torch.randn(2, 3, 32, 32)
    for capture in (True, False):
        results = []
        for model in (eager, compiled):
            model.zero_grad(set_to_none=True)
            tokens, attentions = model(x, return_attention=capture)
            tokens.square().mean().backward()
            results.append((tokens.detach(), attentions, [p.grad for p in model.parameters()]))
        (tokens, attentions, grads), (c_tokens, c_attentions, c_grads) = results
        torch.testing.assert_close(c_tokens, tokens, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(c_grads, grads, rtol=1e-4, atol=1e-5)
        if capture:
            assert len(c_attentions) == 2 and not any(a.requires_grad for a in c_attentions)
            torch.testing.assert_close(c_attentions, attentions, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(c_attentions[0].sum(-1), torch.ones(2, 17))
        else:
            assert attentions is None and c_attentions is None
