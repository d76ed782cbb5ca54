"""Shared backbones: timm ViTs with attention capture, timm CNNs, and offline-friendly text encoders.

All builders follow one weights rule (:func:`resolve_pretrained`): a path must exist, ``True`` uses an existing
local cache only (else one warning and random init), ``False`` / ``None`` is random init.
"""

from shared.backbones.cnn import build_cnn
from shared.backbones.text import TextEncoder, build_clip_tokenizer, build_wordpiece_tokenizer, load_text_encoder
from shared.backbones.vit import ViTBackbone
from shared.backbones.weights import resolve_pretrained

__all__ = ["TextEncoder", "ViTBackbone", "build_clip_tokenizer", "build_cnn", "build_wordpiece_tokenizer",
           "load_text_encoder", "resolve_pretrained"]
