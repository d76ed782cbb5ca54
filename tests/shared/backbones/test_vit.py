"""ViTBackbone: capture path == plain timm path, grids, checkpoint resizing, weights rule, gradients."""

import logging

import huggingface_hub.constants
import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from scipy import ndimage

from shared.backbones.vit import ViTBackbone

TINY = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def tiny() -> ViTBackbone:
    torch.manual_seed(0)
    return ViTBackbone(TINY, img_size=64).eval()  # 4x4 grid: 16 patches + CLS


def test_capture_path_equals_plain_path(tiny):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = tiny.model.forward_features(x)
        plain, none = tiny(x)
        captured, attns = tiny(x, return_attention=True)
    captured_grad_mode, _ = tiny(x, return_attention=True)  # autograd path (no CPU scratch buffer)
    assert none is None
    torch.testing.assert_close(plain, ref)
    torch.testing.assert_close(captured, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(captured_grad_mode.detach(), ref, atol=1e-5, rtol=1e-5)
    assert len(attns) == tiny.depth == 12
    for a in attns:
        assert a.shape == (2, 17, 17) and a.min() >= 0
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 17))


@pytest.mark.parametrize(("img", "patch", "grid"), [(64, None, 4), (448, 32, 14), (96, 8, 12)])
def test_img_and_patch_size_overrides(img, patch, grid):
    bb = ViTBackbone(TINY, img_size=img, patch_size=patch).eval()
    assert bb.grid_size == (grid, grid) and bb.num_patches == grid * grid
    assert bb.patch_size == (patch or 16) and bb.num_prefix_tokens == 1 and bb.embed_dim == 192
    with torch.no_grad():
        tokens, attns = bb(torch.randn(1, 3, img, img), return_attention=True)
    assert tokens.shape == (1, grid * grid + 1, 192) and attns[0].shape == (1, grid * grid + 1, grid * grid + 1)


def test_pieces_compose_two_cls_sequence(tiny):
    """RAMS-Trans builds [cls1, cls2, patches]; the pieces also rebuild timm's own sequence exactly."""
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        patches = tiny.patch_tokens(x)
        cls = tiny.cls_token_embedded()
        assert patches.shape == (2, 16, 192) and cls.shape == (1, 1, 192)
        same, _ = tiny.encode(torch.cat([cls.expand(2, -1, -1), patches], 1))
        torch.testing.assert_close(same, tiny.model.forward_features(x))
        two = torch.cat([cls.expand(2, -1, -1), cls.expand(2, -1, -1), patches], 1)
        out, attns = tiny.encode(two, return_attention=True)
    assert out.shape == (2, 18, 192) and attns[-1].shape == (2, 18, 18)


def _source_224(num_classes: int = 10):
    torch.manual_seed(1)
    return timm.create_model(TINY, pretrained=False, num_classes=num_classes)


def _assert_loaded_and_resized(bb: ViTBackbone, src) -> None:
    dst = bb.model
    torch.testing.assert_close(dst.blocks[3].attn.qkv.weight, src.blocks[3].attn.qkv.weight)
    torch.testing.assert_close(dst.norm.weight, src.norm.weight)
    torch.testing.assert_close(dst.cls_token, src.cls_token)
    torch.testing.assert_close(dst.pos_embed[:, :1], src.pos_embed[:, :1])  # CLS position kept
    # Grid part = scipy.ndimage.zoom(order=1), as in the official TransFG / RAMS-Trans / DiD loaders.
    grid = src.pos_embed[0, 1:].detach().reshape(14, 14, -1).numpy()
    zoomed = ndimage.zoom(grid, (2, 2, 1), order=1).reshape(1, 784, -1)
    torch.testing.assert_close(dst.pos_embed[:, 1:].detach(), torch.from_numpy(zoomed), atol=1e-5, rtol=1e-5)


def test_local_checkpoint_224_into_448_resizes_pos_embed(tmp_path):
    src = _source_224()
    path = tmp_path / "vit_tiny_224.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in src.state_dict().items()}, str(path))
    bb = ViTBackbone(TINY, img_size=448, pretrained=path)
    assert bb.grid_size == (28, 28) and bb.model.pos_embed.shape == (1, 785, 192)
    _assert_loaded_and_resized(bb, src)


def _to_google_npz(model, path) -> None:
    """Write a timm ViT in Google's original ViT-B_16.npz layout (the inverse of timm's npz loader)."""
    d, h = model.embed_dim, model.blocks[0].attn.num_heads
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    w = {"embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
         "embedding/bias": sd["patch_embed.proj.bias"], "cls": sd["cls_token"],
         "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
         "Transformer/encoder_norm/scale": sd["norm.weight"], "Transformer/encoder_norm/bias": sd["norm.bias"]}
    for i in range(len(model.blocks)):
        b, p = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        mha = p + "MultiHeadDotProductAttention_1/"
        for j, n in enumerate(("query", "key", "value")):
            w[f"{mha}{n}/kernel"] = sd[b + "attn.qkv.weight"][j * d:(j + 1) * d].T.reshape(d, h, -1)
            w[f"{mha}{n}/bias"] = sd[b + "attn.qkv.bias"][j * d:(j + 1) * d].reshape(h, -1)
        w[mha + "out/kernel"] = sd[b + "attn.proj.weight"].reshape(d, h, -1).transpose(1, 2, 0)
        w[mha + "out/bias"] = sd[b + "attn.proj.bias"]
        for ln, name in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            w[f"{p}{ln}/scale"], w[f"{p}{ln}/bias"] = sd[b + name + ".weight"], sd[b + name + ".bias"]
        for r in range(2):
            w[f"{p}MlpBlock_3/Dense_{r}/kernel"] = sd[f"{b}mlp.fc{r + 1}.weight"].T
            w[f"{p}MlpBlock_3/Dense_{r}/bias"] = sd[f"{b}mlp.fc{r + 1}.bias"]
    np.savez(path, **w)


def test_google_npz_checkpoint_into_448(tmp_path):
    src = _source_224(num_classes=0)
    _to_google_npz(src, tmp_path / "ViT-Ti_16.npz")
    bb = ViTBackbone(TINY, img_size=448, pretrained=tmp_path / "ViT-Ti_16.npz")
    _assert_loaded_and_resized(bb, src)


def test_patch16_checkpoint_into_patch32_resamples_kernel(tmp_path):
    src = _source_224()
    torch.save({"state_dict": src.state_dict()}, tmp_path / "ckpt.pth")
    bb = ViTBackbone(TINY, img_size=448, patch_size=32, pretrained=str(tmp_path / "ckpt.pth"))
    assert bb.grid_size == (14, 14) and bb.model.patch_embed.proj.weight.shape == (192, 3, 32, 32)
    torch.testing.assert_close(bb.model.pos_embed, src.pos_embed)  # same 14x14 grid: untouched
    # FlexiViT resize: a patch upsampled 2x (nearest) gives ~ the same embedding as the original patch.
    patch = torch.randn(1, 3, 16, 16)
    old = torch.nn.functional.conv2d(patch, src.patch_embed.proj.weight)
    new = torch.nn.functional.conv2d(patch.repeat_interleave(2, -1).repeat_interleave(2, -2),
                                     bb.model.patch_embed.proj.weight)
    assert torch.nn.functional.cosine_similarity(old.flatten(), new.flatten(), dim=0) > 0.9


def test_missing_checkpoint_raises(tmp_path):
    missing = tmp_path / "ViT-B_16.npz"
    with pytest.raises(FileNotFoundError, match="pretrained weights file not found") as err:
        ViTBackbone(TINY, img_size=64, pretrained=missing)
    assert str(missing) in str(err.value)


def test_pretrained_true_without_cache_warns_and_random_init(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING):
        bb = ViTBackbone(TINY, img_size=64, pretrained=True)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert f"no local pretrained weights for {TINY}" in warnings[0].getMessage()
    torch.manual_seed(0)
    fresh = ViTBackbone(TINY, img_size=64, pretrained=False)
    torch.testing.assert_close(bb.state_dict(), fresh.state_dict())


def test_gradients_flow_through_capture_path():
    torch.manual_seed(0)
    bb = ViTBackbone(TINY, img_size=64, attn_drop_rate=0.5, drop_path_rate=0.1).train()
    x = torch.randn(2, 3, 64, 64)
    tokens, attns = bb(x, return_attention=True)
    torch.testing.assert_close(attns[0].sum(-1), torch.ones(2, 17))  # taken before attention dropout
    (tokens.pow(2).mean() + attns[-1][:, 0, 1:].pow(2).sum()).backward()
    grads = {n: p.grad for n, p in bb.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["model.blocks.0.attn.qkv.weight"].abs().sum() > 0


def test_capture_plain_and_checkpointed_gradients_match(tiny):
    x = torch.randn(1, 3, 64, 64)
    grads = []
    for capture, checkpointing in ((False, False), (True, False), (True, True)):
        tiny.zero_grad()
        tiny.model.set_grad_checkpointing(checkpointing)
        tiny(x, return_attention=capture)[0].pow(2).mean().backward()
        grads.append(tiny.model.patch_embed.proj.weight.grad.clone())
    tiny.zero_grad()
    tiny.model.set_grad_checkpointing(False)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grads[1], grads[2])


def test_vit_base_448_single_forward():
    bb = ViTBackbone("vit_base_patch16_224", img_size=448).eval()
    assert (bb.embed_dim, bb.num_heads, bb.depth, bb.grid_size) == (768, 12, 12, (28, 28))
    with torch.inference_mode():
        tokens, attns = bb(torch.randn(1, 3, 448, 448), return_attention=True)
    assert tokens.shape == (1, 785, 768) and len(attns) == 12 and attns[0].shape == (1, 785, 785)


def test_google_npz_with_other_patch_size(tmp_path):
    """The released RAMS-Trans code runs B/32 weights at 448 (14x14); here a /16 .npz goes into a /32 model."""
    src = _source_224(num_classes=0)
    _to_google_npz(src, tmp_path / "ViT-Ti_16.npz")
    bb = ViTBackbone(TINY, img_size=448, patch_size=32, pretrained=tmp_path / "ViT-Ti_16.npz")
    assert bb.model.patch_embed.proj.weight.shape[-2:] == (32, 32)
    torch.testing.assert_close(bb.model.pos_embed, src.pos_embed)


def dropout_rates(vit: ViTBackbone) -> dict[str, set[float]]:
    b = vit.model.blocks
    return {"pos": {vit.model.pos_drop.p}, "attn_probs": {blk.attn.attn_drop.p for blk in b},
            "attn_proj": {blk.attn.proj_drop.p for blk in b},
            "mlp": {blk.mlp.drop1.p for blk in b} | {blk.mlp.drop2.p for blk in b}}


def test_dropout_sits_where_vit_pytorch_puts_it_in_both_projects():
    """ViT-pytorch: dropout_rate on the embeddings and in the MLP, attention_dropout_rate on the attention
    probabilities AND after the attention output projection (timm alone would use proj_drop_rate there)."""
    from projects.did.model import DiD
    from projects.rams_trans.model import RAMSTrans

    arch = dict(backbone="vit_tiny_patch16_224", img_size=32, patch_size=8)
    did = DiD(num_classes=4, hidden_dropout=0.3, attn_dropout=0.05, top_n=2, depth=2, **arch).backbone
    rams = RAMSTrans(num_classes=4, hidden_dropout=0.3, attn_drop_rate=0.05, backbone_kwargs={"depth": 2},
                     **arch).vit
    for vit in (did, rams):
        assert dropout_rates(vit) == {"pos": {0.3}, "attn_probs": {0.05}, "attn_proj": {0.05}, "mlp": {0.3}}
    timm_default = ViTBackbone("vit_tiny_patch16_224", img_size=32, patch_size=8, proj_drop_rate=0.3, depth=1)
    assert dropout_rates(timm_default)["attn_proj"] == {0.3}


def test_attention_output_is_deterministic_in_training_when_only_hidden_dropout_is_set():
    """The capture path uses the block's own proj_drop: with attention dropout 0 the attention branch of a
    training-mode block gives the same output twice even though the MLP drops units."""
    torch.manual_seed(0)
    vit = ViTBackbone("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, proj_drop_rate=0.5,
                      attn_proj_drop_rate=0.0).train()
    blk, x = vit.model.blocks[0], torch.randn(2, 17, vit.embed_dim)
    attn = lambda: blk.attn(blk.norm1(x))
    torch.testing.assert_close(attn(), attn())
    assert not torch.allclose(blk.mlp(x), blk.mlp(x))
