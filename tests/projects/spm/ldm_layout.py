"""Diffusers -> original ("LDM", CompVis / Stability) key layout, to write single-file SD checkpoints in tests.

The inverse of what diffusers' ``from_single_file`` reads, written from the original checkpoints' key names:

* UNet under ``model.diffusion_model.``: ``input_blocks.0.0`` (conv_in), then per down level ``layers_per_block``
  blocks ``[resnet, attention]`` and one ``.0.op`` downsampler (not after the last level); ``middle_block.0/1/2``;
  ``output_blocks`` with ``layers_per_block + 1`` blocks per up level, the upsampler at ``.1.conv`` or ``.2.conv``;
  resnets ``in_layers.0/2``, ``emb_layers.1``, ``out_layers.0/3``, ``skip_connection``; ``time_embed.0/2``,
  ``label_emb.0.0/2`` (SDXL's add_embedding), ``out.0/2``.
* VAE under ``first_stage_model.``: ``encoder.down.{i}.block.{j}``, ``decoder.up.{n-1-i}`` (reversed),
  ``mid.block_1/2``, ``mid.attn_1`` with 1x1-conv ``q/k/v/proj_out``, ``norm_out``, ``nin_shortcut``.
* CLIP (SD1 ``cond_stage_model.transformer.``, SDXL ``conditioner.embedders.0.transformer.``): transformers'
  ``CLIPTextModel`` keys under ``text_model.``.
* OpenCLIP (SD2 ``cond_stage_model.model.``, SDXL ``conditioner.embedders.1.model.``): ``transformer.resblocks.{i}``
  with fused ``attn.in_proj_weight`` (q; k; v), ``ln_1/2``, ``mlp.c_fc/c_proj``; ``token_embedding``,
  ``positional_embedding``, ``ln_final``, ``text_projection`` ([width, dim], the transpose of transformers').
"""

from __future__ import annotations

import torch

_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"))
_VAE_ATTENTION = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))


def _rename(rest: str, pairs) -> str:
    for new, old in pairs:
        if rest == new or rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def _unet_key(key: str, layers: int, up_attention: set[int]) -> str:
    parts = key.split(".")
    top = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
           "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
           "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    head = ".".join(parts[:2]) if parts[0] in ("time_embedding", "add_embedding") else parts[0]
    if head in top:
        return top[head] + key[len(head):]
    if parts[0] == "mid_block":
        kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        if kind == "attentions":
            return f"middle_block.1.{rest}"
        return f"middle_block.{2 * index}.{_rename(rest, _RESNET)}"
    block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
    if parts[0] == "down_blocks":
        if kind == "downsamplers":  # rest: conv.weight
            return f"input_blocks.{1 + block * (layers + 1) + layers}.0.op.{rest.split('.', 1)[1]}"
        n = 1 + block * (layers + 1) + index
        return f"input_blocks.{n}.1.{rest}" if kind == "attentions" else f"input_blocks.{n}.0.{_rename(rest, _RESNET)}"
    n = block * (layers + 1) + (layers if kind == "upsamplers" else index)  # up levels: layers + 1 blocks
    if kind == "upsamplers":
        return f"output_blocks.{n}.{2 if block in up_attention else 1}.{rest}"
    return f"output_blocks.{n}.1.{rest}" if kind == "attentions" else f"output_blocks.{n}.0.{_rename(rest, _RESNET)}"


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    """A diffusers ``UNet2DConditionModel``'s weights under ``model.diffusion_model.`` in the original layout."""
    layers = unet.config.layers_per_block
    up_attention = {i for i, name in enumerate(unet.config.up_block_types) if "CrossAttn" in name}
    return {f"model.diffusion_model.{_unet_key(k, layers, up_attention)}": v.clone()
            for k, v in unet.state_dict().items()}


def _vae_key(key: str, up_levels: int) -> str:
    coder, rest = key.split(".", 1)
    parts = rest.split(".")
    if parts[0] == "conv_norm_out":
        return f"{coder}.norm_out.{parts[1]}"
    if parts[0] == "mid_block":
        kind, index, tail = parts[1], int(parts[2]), ".".join(parts[3:])
        if kind == "attentions":
            return f"{coder}.mid.attn_1.{_rename(tail, _VAE_ATTENTION)}"
        return f"{coder}.mid.block_{index + 1}.{tail.replace('conv_shortcut', 'nin_shortcut')}"
    if parts[0] in ("down_blocks", "up_blocks"):
        level, kind, tail = int(parts[1]), parts[2], ".".join(parts[3:])
        name = "down" if parts[0] == "down_blocks" else "up"
        level = level if name == "down" else up_levels - 1 - level
        if kind in ("downsamplers", "upsamplers"):  # tail: 0.conv.weight
            return f"{coder}.{name}.{level}.{name}sample.{tail.split('.', 1)[1]}"
        return f"{coder}.{name}.{level}.block.{tail.replace('conv_shortcut', 'nin_shortcut')}"
    return key  # conv_in, conv_out


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    """A diffusers ``AutoencoderKL``'s weights under ``first_stage_model.`` (attention projections as 1x1 convs)."""
    out = {}
    up_levels = len(vae.config.up_block_types)
    for key, value in vae.state_dict().items():
        new = key if key.split(".")[0] in ("quant_conv", "post_quant_conv") else _vae_key(key, up_levels)
        if ".mid.attn_1." in new and new.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]
        out[f"first_stage_model.{new}"] = value.clone()
    return out


def clip_to_ldm(text_encoder, prefix: str) -> dict[str, torch.Tensor]:
    """A transformers CLIP text model's weights under ``prefix`` + ``text_model.`` (SD1 / SDXL's first encoder)."""
    return {prefix + (k if k.startswith("text_model.") else f"text_model.{k}"): v.clone()
            for k, v in text_encoder.state_dict().items() if not k.endswith("position_ids")}


def open_clip_to_ldm(text_encoder, prefix: str) -> dict[str, torch.Tensor]:
    """A transformers CLIP text model's weights in OpenCLIP's layout under ``prefix`` (SD2 / SDXL's second
    encoder). Without a projection (SD2) an identity ``text_projection`` is written, as SD2 files carry one."""
    state = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}
    width = state["embeddings.token_embedding.weight"].shape[1]
    out = {"token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
           "positional_embedding": state.pop("embeddings.position_embedding.weight"),
           "ln_final.weight": state.pop("final_layer_norm.weight"), "ln_final.bias": state.pop("final_layer_norm.bias"),
           "text_projection": state.pop("text_projection.weight").T if "text_projection.weight" in state
           else torch.eye(width),
           "logit_scale": torch.tensor(4.6052)}
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")})
    for i in layers:
        p, q = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{q}attn.in_proj_{kind}"] = torch.cat([state.pop(f"{p}self_attn.{x}_proj.{kind}") for x in "qkv"])
            out[f"{q}attn.out_proj.{kind}"] = state.pop(f"{p}self_attn.out_proj.{kind}")
            out[f"{q}ln_1.{kind}"] = state.pop(f"{p}layer_norm1.{kind}")
            out[f"{q}ln_2.{kind}"] = state.pop(f"{p}layer_norm2.{kind}")
            out[f"{q}mlp.c_fc.{kind}"] = state.pop(f"{p}mlp.fc1.{kind}")
            out[f"{q}mlp.c_proj.{kind}"] = state.pop(f"{p}mlp.fc2.{kind}")
    left = [k for k in state if not k.endswith("position_ids")]
    assert not left, f"open_clip_to_ldm: unmapped keys {left}"
    return {prefix + k: v.clone().contiguous() for k, v in out.items()}


def pipeline_to_ldm(pipe, vae: bool = True) -> dict[str, torch.Tensor]:
    """A tiny SD1 / SD2 / SDXL pipeline (``tiny_sd.tiny_pipeline``) as one original-layout state dict."""
    state = unet_to_ldm(pipe.unet)
    if vae:
        state.update(vae_to_ldm(pipe.vae))
    if getattr(pipe, "text_encoder_2", None) is not None:  # SDXL
        state.update(clip_to_ldm(pipe.text_encoder, "conditioner.embedders.0.transformer."))
        state.update(open_clip_to_ldm(pipe.text_encoder_2, "conditioner.embedders.1.model."))
    elif pipe.unet.config.use_linear_projection:  # SD2: OpenCLIP ViT-H
        state.update(open_clip_to_ldm(pipe.text_encoder, "cond_stage_model.model."))
    else:
        state.update(clip_to_ldm(pipe.text_encoder, "cond_stage_model.transformer."))
    return state
