"""The expert registry: every backbone DRDF can wrap, each usable as an expert and as a single-model baseline.

An expert is a whole backbone plus its classification head (docs/papers/drdf.md §4). Every expert has the same
interface: ``forward(batch) -> (logits [B, C], features [B, feature_dim])`` where ``batch`` is a dict with
``image`` [B, 3, H, W] and, for the multimodal experts, ``input_ids`` / ``attention_mask`` [B, L]. The features
are the input of the head (used by the shared-head fusion variant F3).

Image experts (timm, CIFAR stems where the input is 32 px): resnet18, resnet50, vgg16_bn, mobilenetv2,
efficientnet_b0, densenet121, vit_s16. Multimodal experts for Hateful Memes, after the MMF baselines
(§4): text_bert, image_grid, late_fusion, concat_bert, mmbt_grid, visual_bert (transformers
VisualBERT on grid features), vilt (transformers ViLT).

``size="full"`` builds the paper-size architecture, ``size="tiny"`` a reduced width/depth for tests and the toy
run; ``overrides`` change any field of the chosen size. Weights come from local paths only (``pretrained``: a
file / folder, ``True`` = local cache, ``None`` = random init); with none, one log line says random init.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from shared.backbones.cnn import build_cnn
from shared.backbones.text import load_text_encoder
from shared.backbones.vit import ViTBackbone

logger = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]

# ------------------------------------------------------------------------------------------------ sizes
# Text encoder sizes: "full" = bert-base-uncased (the MMF HM baselines), "tiny" = a 1-layer toy BERT.
BERT_SIZES = {
    "full": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 max_position_embeddings=512, vocab_size=30522),
    "tiny": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                 max_position_embeddings=64, vocab_size=512),
}
# Grid image encoders of the multimodal experts: MMF uses an ImageNet ResNet-152; the toy one is a 1-block ResNet.
GRID_CNN = {
    "full": dict(name="resnet152"),
    "tiny": dict(name="resnet18", layers=(1, 1, 1, 1), channels=(8, 16, 32, 32)),
}
# timm image backbones: (timm name, tiny timm name, tiny kwargs). "tiny" keeps the family and shrinks width / depth.
TIMM_EXPERTS: dict[str, tuple[str, str, dict]] = {
    "resnet18": ("resnet18", "resnet18", dict(layers=(1, 1, 1, 1), channels=(8, 16, 32, 64))),
    "resnet50": ("resnet50", "resnet50", dict(layers=(1, 1, 1, 1), channels=(8, 16, 16, 16))),
    "vgg16_bn": ("vgg16_bn", "vgg16_bn", dict(mlp_ratio=1 / 64)),
    "mobilenetv2": ("mobilenetv2_100", "mobilenetv2_035", dict()),
    "efficientnet_b0": ("efficientnet_b0", "test_efficientnet", dict()),
    "densenet121": ("densenet121", "densenet121", dict(growth_rate=8, block_config=(1, 1, 1, 1))),
}
CIFAR_STEM_FAMILIES = ("resnet", "mobilenet", "efficientnet")  # what shared build_cnn can adapt to 32 px


def _no_weights(what: str) -> None:
    logger.info("%s: no pretrained weights given; starting from random init", what)


def _local_or_random(model_cls, folder: str | None, name: str, kind: str, make_config) -> nn.Module:
    """A transformers model from a local folder, or randomly initialised from ``make_config()`` (one log line)."""
    if folder is None:
        _no_weights(f"expert {name}")
        return model_cls(make_config())
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"{name}_model: folder not found: {folder} (expected a transformers {kind} folder "
                                "with config.json and weights)")
    return model_cls.from_pretrained(folder, local_files_only=True)


def _mlp_head(in_dim: int, num_classes: int, hidden: int | None, dropout: float) -> nn.Module:
    """MMF's classifier: Linear, or a 2-layer MLP (Linear-ReLU-Dropout-Linear) when ``hidden`` is given."""
    if not hidden:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, num_classes))
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes))


def feature_dim(module: nn.Module, image_size: int, what: str, features=None) -> int:
    """The feature size of ``module`` (or of ``features``, one of its methods), measured in eval mode on one zero
    image: pooled [1, C] or a map [1, C, h, w] (timm's ``num_features`` is the pre-head size, not always the
    output). A size the network cannot take (smaller than its stem's kernel) is a ValueError naming
    ``data.image_size``, not a convolution error."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return int((features or module)(torch.zeros(1, 3, image_size, image_size)).shape[1])
    except RuntimeError as err:
        raise ValueError(f"{what}: data.image_size {image_size} is too small for it ({err}); expected a larger "
                         f"image_size") from None
    finally:
        module.train(was_training)


class Expert(nn.Module):
    """Base class: ``forward(batch) -> (logits, features)``; ``head`` maps features to logits."""

    feature_dim: int
    head: nn.Module
    modalities: tuple[str, ...] = ("image",)

    def features(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(batch)
        return self.head(feats), feats


def _require_text(batch: Batch, who: str) -> tuple[torch.Tensor, torch.Tensor]:
    if "input_ids" not in batch:
        raise ValueError(f"expert {who!r} needs text (batch['input_ids']); this dataset gives images only "
                         "- use an image expert (resnet18, vgg16_bn, ...) for CIFAR / TinyImageNet")
    ids = batch["input_ids"]
    return ids, batch.get("attention_mask", torch.ones_like(ids))


# ------------------------------------------------------------------------------------------------ image experts
class ImageExpert(Expert):
    """A timm image backbone (pooled features) + a linear head."""

    def __init__(self, backbone: nn.Module, num_classes: int, image_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim(backbone, image_size, "image expert")
        self.head = _mlp_head(self.feature_dim, num_classes, None, dropout)

    def features(self, batch: Batch) -> torch.Tensor:
        return self.backbone(batch["image"])


class _ViTPooled(nn.Module):
    """ViTBackbone tokens -> the class token (timm's default pooling for ViT-S/16)."""

    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.vit = ViTBackbone(**kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(x)[0][:, 0]


def build_timm_expert(name: str, num_classes: int, size: str = "full", pretrained=None, image_size: int = 224,
                      cifar_stem: bool = False, dropout: float = 0.0, **overrides) -> ImageExpert:
    full_name, tiny_name, tiny = TIMM_EXPERTS[name]
    timm_name = tiny_name if size == "tiny" else full_name
    kwargs = {**(tiny if size == "tiny" else {}), **overrides}
    stem = cifar_stem and any(f in timm_name for f in CIFAR_STEM_FAMILIES)  # VGG / DenseNet run 32 px as they are
    if not pretrained:
        _no_weights(f"expert {name}")
    backbone = build_cnn(timm_name, pretrained=pretrained or False, num_classes=0, cifar_stem=stem, **kwargs)
    return ImageExpert(backbone, num_classes, image_size, dropout)


def build_vit_expert(num_classes: int, size: str = "full", pretrained=None, image_size: int = 224,
                     cifar_stem: bool = False, dropout: float = 0.0, **overrides) -> ImageExpert:
    """ViT-S/16; at 32 px (``cifar_stem``) the patch becomes 4 px so the grid stays 8x8."""
    kwargs: dict = dict(name="vit_small_patch16_224", img_size=image_size)
    if cifar_stem:
        kwargs["patch_size"] = 4
    if size == "tiny":
        kwargs.update(depth=1, embed_dim=48, num_heads=2)
    kwargs.update(overrides)
    if not pretrained:
        _no_weights("expert vit_s16")
    return ImageExpert(_ViTPooled(pretrained=pretrained or False, **kwargs), num_classes, image_size, dropout)


# ------------------------------------------------------------------------------------------------ multimodal parts
def build_text_encoder(size: str = "full", text_model: str | None = None, **overrides):
    """BERT: a local transformers folder when ``text_model`` names one, else random init at ``size``."""
    fields = {**BERT_SIZES[size], **overrides}
    if text_model is not None and Path(text_model).is_dir():
        encoder = load_text_encoder(text_model, kind="bert", pretrained=True)
    else:
        logger.info("text encoder: no local BERT folder given (text_model=%s); random init, %s", text_model,
                    {k: fields[k] for k in ("hidden_size", "num_hidden_layers", "vocab_size")})
        encoder = load_text_encoder(None, kind="bert", pretrained=False, config_overrides=fields)
    encoder.model.pooler = None  # features are the [CLS] output (pool="cls"); an unused pooler would break DDP
    return encoder


class GridEncoder(nn.Module):
    """A timm CNN as a grid-feature extractor: image -> feature map [B, C, h, w] -> tokens or pooled vector."""

    def __init__(self, size: str = "full", pretrained=None, grid: int = 1, image_size: int = 224, **overrides):
        super().__init__()
        cfg = {**GRID_CNN[size], **overrides}
        if not pretrained:
            _no_weights(f"grid encoder {cfg['name']}")
        name = cfg.pop("name")
        self.cnn = build_cnn(name, pretrained=pretrained or False, num_classes=0, **cfg)
        self.grid = grid
        self.channels = feature_dim(self.cnn, image_size, f"grid encoder {name}", self.cnn.forward_features)

    def tokens(self, image: torch.Tensor) -> torch.Tensor:
        """[B, grid*grid, C] grid features (adaptive average pooling of the last feature map)."""
        fmap = nn.functional.adaptive_avg_pool2d(self.cnn.forward_features(image), self.grid)
        return fmap.flatten(2).transpose(1, 2)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.cnn.forward_features(image).mean((2, 3))


class TextBertExpert(Expert):
    """Text BERT (MMF): pooled [CLS] -> 2-layer MLP."""

    modalities = ("text",)

    def __init__(self, num_classes: int, size: str = "full", text_model: str | None = None, hidden: int | None = None,
                 dropout: float = 0.1, text_overrides: dict | None = None, **_) -> None:
        super().__init__()
        self.text = build_text_encoder(size, text_model, **(text_overrides or {}))
        self.feature_dim = self.text.hidden_size
        self.head = _mlp_head(self.feature_dim, num_classes, hidden or self.feature_dim, dropout)

    def features(self, batch: Batch) -> torch.Tensor:
        ids, mask = _require_text(batch, "text_bert")
        return self.text({"input_ids": ids, "attention_mask": mask})[1]


class ImageGridExpert(Expert):
    """Image-Grid (MMF): ResNet-152 average-pooled 2048-d -> MLP."""

    def __init__(self, num_classes: int, size: str = "full", image_pretrained=None, image_size: int = 224,
                 hidden: int | None = None, dropout: float = 0.1, image_overrides: dict | None = None, **_) -> None:
        super().__init__()
        self.image = GridEncoder(size, image_pretrained, image_size=image_size, **(image_overrides or {}))
        self.feature_dim = self.image.channels
        self.head = _mlp_head(self.feature_dim, num_classes, hidden or 512, dropout)

    def features(self, batch: Batch) -> torch.Tensor:
        return self.image(batch["image"])


class _TextImageExpert(Expert):
    """A BERT text encoder plus a grid image encoder (the MMF two-tower baselines below)."""

    modalities = ("text", "image")

    def __init__(self, size: str = "full", text_model: str | None = None, image_pretrained=None,
                 image_size: int = 224, text_overrides: dict | None = None,
                 image_overrides: dict | None = None) -> None:
        super().__init__()
        self.text = build_text_encoder(size, text_model, **(text_overrides or {}))
        self.image = GridEncoder(size, image_pretrained, image_size=image_size, **(image_overrides or {}))
        self.feature_dim = self.text.hidden_size + self.image.channels


class LateFusionExpert(_TextImageExpert):
    """Late Fusion (MMF ``fusions.py``): a text MLP and an image MLP; the scores are averaged, (s_t + s_v) / 2."""

    def __init__(self, num_classes: int, size: str = "full", text_model: str | None = None, image_pretrained=None,
                 image_size: int = 224, hidden: int | None = None, dropout: float = 0.1,
                 text_overrides: dict | None = None, image_overrides: dict | None = None, **_) -> None:
        super().__init__(size, text_model, image_pretrained, image_size, text_overrides, image_overrides)
        self.text_head = _mlp_head(self.text.hidden_size, num_classes, hidden or self.text.hidden_size, dropout)
        self.image_head = _mlp_head(self.image.channels, num_classes, hidden or 512, dropout)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = _require_text(batch, "late_fusion")
        h_t = self.text({"input_ids": ids, "attention_mask": mask})[1]
        h_v = self.image(batch["image"])
        logits = 0.5 * (self.text_head(h_t) + self.image_head(h_v))
        return logits, torch.cat([h_t, h_v], dim=1)

    @property
    def head(self) -> nn.Module:  # F3 (shared head) replaces this; the expert's own head is the two MLPs
        return nn.Identity()


class ConcatBertExpert(_TextImageExpert):
    """Concat BERT (MMF): concat(BERT pooled, ResNet pooled) -> 2-layer MLP."""

    def __init__(self, num_classes: int, size: str = "full", text_model: str | None = None, image_pretrained=None,
                 image_size: int = 224, hidden: int | None = None, dropout: float = 0.1,
                 text_overrides: dict | None = None, image_overrides: dict | None = None, **_) -> None:
        super().__init__(size, text_model, image_pretrained, image_size, text_overrides, image_overrides)
        self.head = _mlp_head(self.feature_dim, num_classes, hidden or 512, dropout)

    def features(self, batch: Batch) -> torch.Tensor:
        ids, mask = _require_text(batch, "concat_bert")
        h_t = self.text({"input_ids": ids, "attention_mask": mask})[1]
        return torch.cat([h_t, self.image(batch["image"])], dim=1)


class MMBTGridExpert(Expert):
    """MMBT-style bitransformer: projected grid features become extra tokens in BERT's input.

    Sequence: [CLS] image tokens (segment 1) then the text tokens (segment 0, its own [CLS] dropped);
    BERT adds position and segment embeddings to these ``inputs_embeds``. MMF's MMBT-Grid pools to one image
    token (``num_output_features: 1``); ``grid`` > 1 gives grid*grid tokens.
    """

    modalities = ("text", "image")

    def __init__(self, num_classes: int, size: str = "full", text_model: str | None = None, image_pretrained=None,
                 image_size: int = 224, grid: int = 1, hidden: int | None = None, dropout: float = 0.1,
                 text_overrides: dict | None = None, image_overrides: dict | None = None, **_) -> None:
        super().__init__()
        self.text = build_text_encoder(size, text_model, **(text_overrides or {}))
        self.image = GridEncoder(size, image_pretrained, grid=grid, image_size=image_size, **(image_overrides or {}))
        self.project = nn.Linear(self.image.channels, self.text.hidden_size)
        self.feature_dim = self.text.hidden_size
        self.head = _mlp_head(self.feature_dim, num_classes, hidden, dropout)

    def features(self, batch: Batch) -> torch.Tensor:
        ids, mask = _require_text(batch, "mmbt_grid")
        bert = self.text.model
        words = bert.embeddings.word_embeddings(ids)                       # [B, L, D], ids[:, 0] is [CLS]
        img = self.project(self.image.tokens(batch["image"]))              # [B, N, D]
        embeds = torch.cat([words[:, :1], img, words[:, 1:]], dim=1)
        n = img.shape[1]
        ones = mask.new_ones(mask.shape[0], n)
        full_mask = torch.cat([mask[:, :1], ones, mask[:, 1:]], dim=1)
        segments = torch.cat([mask.new_zeros(mask.shape[0], 1), ones, torch.zeros_like(mask[:, 1:])], dim=1)
        out = bert(inputs_embeds=embeds, attention_mask=full_mask, token_type_ids=segments)
        return out.last_hidden_state[:, 0]


class VisualBertExpert(Expert):
    """VisualBERT (transformers ``VisualBertModel``) on grid features instead of Detectron regions."""

    modalities = ("text", "image")

    def __init__(self, num_classes: int, size: str = "full", visual_bert_model: str | None = None,
                 image_pretrained=None, image_size: int = 224, grid: int = 3, dropout: float = 0.1,
                 text_overrides: dict | None = None, image_overrides: dict | None = None, **_) -> None:
        super().__init__()
        from transformers import VisualBertConfig, VisualBertModel  # seconds to load: only this expert needs it

        self.image = GridEncoder(size, image_pretrained, grid=grid, image_size=image_size, **(image_overrides or {}))
        fields = {**BERT_SIZES[size], **(text_overrides or {})}
        self.vl = _local_or_random(VisualBertModel, visual_bert_model, "visual_bert", "VisualBERT",
                                   lambda: VisualBertConfig(visual_embedding_dim=self.image.channels, **fields))
        self.feature_dim = self.vl.config.hidden_size
        self.head = _mlp_head(self.feature_dim, num_classes, None, dropout)

    def features(self, batch: Batch) -> torch.Tensor:
        ids, mask = _require_text(batch, "visual_bert")
        vis = self.image.tokens(batch["image"])
        out = self.vl(input_ids=ids, attention_mask=mask, visual_embeds=vis,
                      visual_attention_mask=mask.new_ones(vis.shape[:2]))
        return out.pooler_output


class ViltExpert(Expert):
    """ViLT (transformers ``ViltModel``): text tokens and raw image patches in one transformer."""

    modalities = ("text", "image")
    VILT_SIZES = {
        "full": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                     patch_size=32, max_position_embeddings=40, vocab_size=30522),
        "tiny": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                     patch_size=8, max_position_embeddings=64, vocab_size=512),
    }

    def __init__(self, num_classes: int, size: str = "full", vilt_model: str | None = None, image_size: int = 224,
                 dropout: float = 0.1, text_overrides: dict | None = None, **_) -> None:
        super().__init__()
        from transformers import ViltConfig, ViltModel  # seconds to load: only this expert needs it

        fields = {**self.VILT_SIZES[size], **(text_overrides or {})}
        self.vl = _local_or_random(ViltModel, vilt_model, "vilt", "ViLT",
                                   lambda: ViltConfig(image_size=image_size, **fields))
        self.feature_dim = self.vl.config.hidden_size
        self.head = _mlp_head(self.feature_dim, num_classes, None, dropout)

    def features(self, batch: Batch) -> torch.Tensor:
        ids, mask = _require_text(batch, "vilt")
        ids = ids[:, : self.vl.config.max_position_embeddings]
        mask = mask[:, : ids.shape[1]]
        image = batch["image"]
        out = self.vl(input_ids=ids, attention_mask=mask, pixel_values=image,
                      pixel_mask=image.new_ones(image.shape[0], *image.shape[2:], dtype=torch.long))
        return out.pooler_output


# ------------------------------------------------------------------------------------------------ the registry
def _timm(name: str) -> Callable[..., Expert]:
    def build(num_classes: int, size: str = "full", pretrained=None, image_size: int = 224, cifar_stem: bool = False,
              dropout: float = 0.0, **overrides) -> Expert:
        return build_timm_expert(name, num_classes, size, pretrained, image_size, cifar_stem, dropout, **overrides)

    return build


EXPERTS: dict[str, Callable[..., Expert]] = {
    **{name: _timm(name) for name in TIMM_EXPERTS},
    "vit_s16": build_vit_expert,
    "text_bert": TextBertExpert,
    "image_grid": ImageGridExpert,
    "late_fusion": LateFusionExpert,
    "concat_bert": ConcatBertExpert,
    "mmbt_grid": MMBTGridExpert,
    "visual_bert": VisualBertExpert,
    "vilt": ViltExpert,
}
IMAGE_EXPERTS = (*TIMM_EXPERTS, "vit_s16")
MULTIMODAL_EXPERTS = ("text_bert", "image_grid", "late_fusion", "concat_bert", "mmbt_grid", "visual_bert", "vilt")


def build_expert(name: str, num_classes: int, **kwargs) -> Expert:
    """Build registered expert ``name`` with a ``num_classes`` head; ``kwargs`` go to its builder."""
    if name not in EXPERTS:
        raise ValueError(f"unknown expert {name!r}; registered: {', '.join(EXPERTS)}")
    return EXPERTS[name](num_classes=num_classes, **kwargs)
