"""DRDF: Dual-Router + MWF-Layer + K experts + expert fusion unit (docs/papers/drdf.md §1-§5). Pure nn.Modules.

Data flow (§1): text router -> (h_t, r_t); image router -> (h_v, r_v); MWF-Layer -> modality importance
a = (a_t, a_v) and expert weights w [B, K]; experts -> logits z_k [B, C]; fusion unit -> y [B, C].
Everything below the abstract's four-part structure is INFERRED (§9; the switches: §11.1).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from torch import nn

from projects.drdf.experts import BERT_SIZES, Batch, Expert, build_expert, build_text_encoder, feature_dim
from shared.backbones.cnn import build_cnn

logger = logging.getLogger(__name__)

Gate = Literal["softmax", "sigmoid", "fixed", "concat", "text", "image"]
Mix = Literal["prob", "logit"]
Fusion = Literal["logits", "probs", "features"]
TextSlot = Literal["text", "image", "none", "constant"]
Kwargs = dict[str, Any]  # a part's settings; typed values, so `--model.net.mwf.top_k 2` is the int 2


# ------------------------------------------------------------------------------------------------ routers
class ImageRouter(nn.Module):
    """Image -> feature h_v and logits r_v = Linear(h_v).

    ``kind="cnn"`` (default): a timm CNN (default ResNet-18) with global average pooling. ``kind="patch"``: the
    light option, one strided ``patch`` x ``patch`` convolution to ``dim`` channels, ReLU, global average pooling
    (three ops, so the router costs little next to the experts; the toy config uses it).
    """

    def __init__(self, num_experts: int, kind: Literal["cnn", "patch"] = "cnn", backbone: str = "resnet18",
                 pretrained=None, cifar_stem: bool = False, freeze: bool = False, image_size: int = 224,
                 patch: int = 8, dim: int = 32, **timm_kwargs) -> None:
        super().__init__()
        self.patch = patch if kind == "patch" else 0   # the smallest image side the encoder takes (0: any)
        if kind == "cnn":
            if not pretrained:
                logger.info("image router %s: no pretrained weights given; starting from random init", backbone)
            self.encoder = build_cnn(backbone, pretrained=pretrained or False, num_classes=0, cifar_stem=cifar_stem,
                                     **timm_kwargs)
            self.feature_dim = feature_dim(self.encoder, image_size, f"image router {backbone}")
        elif kind == "patch":
            if timm_kwargs:
                raise ValueError(f"image_router.kind=patch takes patch and dim, not {sorted(timm_kwargs)}")
            self.encoder = nn.Sequential(nn.Conv2d(3, dim, patch, stride=patch), nn.ReLU(),
                                         nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.feature_dim = dim
        else:
            raise ValueError(f"image_router.kind must be 'cnn' or 'patch', got {kind!r}")
        self.head = nn.Linear(self.feature_dim, num_experts)
        self.freeze = freeze
        if freeze:
            self.encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> ImageRouter:
        super().train(mode)
        if self.freeze:  # a frozen encoder keeps its BatchNorm statistics
            self.encoder.eval()
        return self

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        size = batch["image"].shape[-2:]
        if min(size) < self.patch:
            raise ValueError(f"image_router.patch={self.patch} is larger than the {size[0]}x{size[1]} images; expected "
                             f"data.image_size >= image_router.patch")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            h = self.encoder(batch["image"])
        return h, self.head(h)


class TextRouter(nn.Module):
    """BERT-style encoder, [CLS] output -> h_t, r_t = Linear(h_t) (§2). ``kind="bow"`` is the cheap
    bag-of-embeddings option (mean of word embeddings over the attention mask)."""

    def __init__(self, num_experts: int, kind: Literal["bert", "bow"] = "bert", text_model: str | None = None,
                 size: str = "full", freeze: bool = False, bow_dim: int = 64, **bert_overrides) -> None:
        super().__init__()
        self.kind, self.freeze = kind, freeze
        if kind == "bert":
            self.encoder = build_text_encoder(size, text_model, **bert_overrides)
            self.feature_dim = self.encoder.hidden_size
        elif kind == "bow":
            vocab = bert_overrides.get("vocab_size", BERT_SIZES[size]["vocab_size"])
            self.encoder = nn.EmbeddingBag(vocab, bow_dim, mode="mean", padding_idx=0)
            self.feature_dim = bow_dim
        else:
            raise ValueError(f"text_router.kind must be 'bert' or 'bow', got {kind!r}")
        self.head = nn.Linear(self.feature_dim, num_experts)
        if freeze:
            self.encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> TextRouter:
        super().train(mode)
        if self.freeze:
            self.encoder.eval()
        return self

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        if "input_ids" not in batch:
            raise ValueError("text router: batch has no 'input_ids' (image-only data): set "
                             "model.net.text_slot to image, none or constant")
        ids = batch["input_ids"]
        mask = batch.get("attention_mask", torch.ones_like(ids))
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            if self.kind == "bert":
                h = self.encoder({"input_ids": ids, "attention_mask": mask})[1]
            else:
                h = self.encoder(ids * mask)  # padded / masked positions map to padding_idx 0
        return h, self.head(h)


class ConstantRouter(nn.Module):
    """U3: a constant "text" (one learned feature for every sample) -> the same r_t for all; a learned bias."""

    def __init__(self, num_experts: int, dim: int = 16) -> None:
        super().__init__()
        self.feature = nn.Parameter(torch.randn(dim) * 0.02)
        self.feature_dim = dim
        self.head = nn.Linear(dim, num_experts)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.feature.expand(batch["image"].shape[0], -1)
        return h, self.head(h)


# ------------------------------------------------------------------------------------------------ MWF-Layer
class MWFLayer(nn.Module):
    """Modality Weight Fusion layer (name expansion INFERRED, §3).

    Default: u = [LN(h_t); LN(h_v)], a = softmax(W u + b) [B, 2], w = a_t softmax(r_t/T) + a_v softmax(r_v/T).
    ``gate``: softmax (default) | sigmoid (M3, GMU-style g, a = (g, 1-g)) | fixed (M0, a = (0.5, 0.5)) |
    concat (M0 alt: w = softmax(W' [h_t; h_v] / T), no explicit modality score; a reported as 0.5) |
    text / image (only that router: a_t = 1 or a_v = 1).
    ``mix``: prob (default, convex mix of the two distributions) | logit (M2: w = softmax((a_t r_t + a_v r_v)/T)).
    ``top_k``: keep the k largest weights per row and renormalise (sparse ablation); ``None`` = dense.
    ``hidden`` > 0 makes W a 2-layer MLP (hidden, ReLU, dropout).
    """

    def __init__(self, text_dim: int, image_dim: int, num_experts: int, gate: Gate = "softmax", mix: Mix = "prob",
                 top_k: int | None = None, hidden: int = 0, dropout: float = 0.1) -> None:
        super().__init__()
        if gate not in ("softmax", "sigmoid", "fixed", "concat", "text", "image"):
            raise ValueError(f"mwf.gate must be softmax, sigmoid, fixed, concat, text or image; got {gate!r}")
        if mix not in ("prob", "logit"):
            raise ValueError(f"mwf.mix must be 'prob' or 'logit', got {mix!r}")
        if top_k is not None and not 1 <= top_k <= num_experts:
            raise ValueError(f"mwf.top_k must be in 1..{num_experts} (number of experts) or null, got {top_k}")
        self.gate, self.mix, self.top_k = gate, mix, top_k
        self.norm_t, self.norm_v = nn.LayerNorm(text_dim), nn.LayerNorm(image_dim)
        out = {"softmax": 2, "sigmoid": 1, "concat": num_experts}.get(gate, 0)
        self.score: nn.Module | None = None
        if out:
            d = text_dim + image_dim
            self.score = (nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, out))
                          if hidden else nn.Linear(d, out))

    def modality_weights(self, u: torch.Tensor) -> torch.Tensor:
        B = u.shape[0]
        if self.gate == "softmax":
            return self.score(u).softmax(-1)
        if self.gate == "sigmoid":
            g = torch.sigmoid(self.score(u))
            return torch.cat([g, 1 - g], dim=-1)
        fixed = {"fixed": (0.5, 0.5), "concat": (0.5, 0.5), "text": (1.0, 0.0), "image": (0.0, 1.0)}[self.gate]
        return u.new_tensor(fixed).expand(B, 2)

    def forward(self, h_t: torch.Tensor, r_t: torch.Tensor, h_v: torch.Tensor, r_v: torch.Tensor,
                temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (w [B, K] non-negative, rows sum to 1; a [B, 2] = (a_t, a_v), rows sum to 1)."""
        u = torch.cat([self.norm_t(h_t), self.norm_v(h_v)], dim=-1)
        a = self.modality_weights(u)
        if self.gate == "concat":
            w = (self.score(u) / temperature).softmax(-1)
        elif self.mix == "prob":
            w = a[:, :1] * (r_t / temperature).softmax(-1) + a[:, 1:] * (r_v / temperature).softmax(-1)
        else:
            w = ((a[:, :1] * r_t + a[:, 1:] * r_v) / temperature).softmax(-1)
        if self.top_k is not None and self.top_k < w.shape[-1]:
            kept = torch.zeros_like(w).scatter(-1, w.topk(self.top_k, dim=-1).indices, 1.0)
            w = w * kept
            w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
        return w, a


# ------------------------------------------------------------------------------------------------ fusion unit
def fuse(expert_logits: torch.Tensor, weights: torch.Tensor, mode: Fusion = "logits",
         expert_features: torch.Tensor | None = None, shared_head: nn.Module | None = None) -> torch.Tensor:
    """Expert fusion unit (§5). ``expert_logits`` [K, B, C], ``weights`` [B, K].

    logits (default): y = sum_k w_k z_k.  probs (F2): returns log(sum_k w_k softmax(z_k)), so cross-entropy on
    it is the NLL of the mixture.  features (F3): shared_head(sum_k w_k f_k) with ``expert_features`` [K, B, F].
    """
    w = weights.t().unsqueeze(-1)  # [K, B, 1]
    if mode == "logits":
        return (w * expert_logits).sum(0)
    if mode == "probs":
        return torch.logsumexp(expert_logits.log_softmax(-1) + w.clamp_min(1e-12).log(), dim=0)
    if mode == "features":
        if expert_features is None or shared_head is None:
            raise ValueError("fusion='features' needs the experts' features and a shared head")
        return shared_head((w * expert_features).sum(0))
    raise ValueError(f"fusion must be logits, probs or features, got {mode!r}")


# ------------------------------------------------------------------------------------------------ DRDF
def expert_specs(expert: str | None, num_experts: int | None, experts: list | None,
                 expert_kwargs: dict | None = None) -> list[tuple[str, dict]]:
    """Resolve the expert list: ``experts`` (heterogeneous: names, or dicts ``{name: ..., **overrides}``, the
    overrides merged over ``expert_kwargs``) or the homogeneous shorthand ``num_experts`` copies of ``expert``."""
    shared = dict(expert_kwargs or {})
    if experts is None:
        if not expert or not num_experts or num_experts < 1:
            raise ValueError(f"give model.net.experts (a list) or model.net.expert and model.net.num_experts >= 1; got "
                             f"expert={expert!r}, num_experts={num_experts!r}")
        return [(expert, shared) for _ in range(num_experts)]
    if not isinstance(experts, list | tuple) or not experts:
        raise ValueError(f"model.net.experts must be a non-empty list of expert names or dicts, got {experts!r}")
    if num_experts is not None and num_experts != len(experts):
        raise ValueError(f"model.net.num_experts={num_experts} disagrees with the {len(experts)} entries of "
                         "model.net.experts")
    specs = []
    for i, item in enumerate(experts):
        if isinstance(item, str):
            specs.append((item, shared))
        elif isinstance(item, dict) and "name" in item:
            specs.append((item["name"], {**shared, **{k: v for k, v in item.items() if k != "name"}}))
        else:
            raise ValueError(f"model.net.experts[{i}]: expected a registered name or a dict with 'name', got {item!r}")
    return specs


class DRDF(nn.Module):
    """K experts weighted per sample by the Dual-Router and the MWF-Layer.

    Experts: ``num_experts`` copies of one registered backbone ``expert`` (the paper's setting, INFERRED), or a
    heterogeneous list ``experts`` (e.g. ``[text_bert, image_grid, image_grid]``: unimodal experts, the toy's
    setting). ``routing="drdf"`` (the method) or ``"uniform"`` (w = 1/K, no routers: the static-ensemble
    control; with one expert it is the single-backbone baseline). ``text_slot`` says what the text router sees:
    ``text`` (multimodal data), or on image-only data ``image`` (U1, a second image router, default), ``none``
    (U2: no text router, a_v = 1) or ``constant`` (U3: a learned constant). Never the class name (§2).

    The other arguments are the parts' own settings: ``expert_kwargs`` go to every expert's builder
    (``experts.build_expert``), ``text_router`` / ``image_router`` / ``text_slot_image_router`` to the routers,
    ``mwf`` to :class:`MWFLayer`; ``fusion`` picks the fusion unit (:func:`fuse`); ``freeze_experts`` trains only
    the routers and the MWF-Layer. These arguments are the configs' ``model.net.init_args`` (their switches: §11.1).
    ``temperature`` (T of the routers' softmaxes) is an attribute the LightningModule sets at each step.
    """

    def __init__(self, num_classes: int, expert: str | None = "late_fusion", num_experts: int | None = 3,
                 expert_kwargs: Kwargs | None = None, routing: Literal["drdf", "uniform"] = "drdf",
                 text_slot: TextSlot = "text", text_router: Kwargs | None = None, image_router: Kwargs | None = None,
                 text_slot_image_router: Kwargs | None = None, mwf: Kwargs | None = None, fusion: Fusion = "logits",
                 freeze_experts: bool = False, experts: list[str | Kwargs] | None = None) -> None:
        super().__init__()
        if routing not in ("drdf", "uniform"):
            raise ValueError(f"model.net.routing must be 'drdf' or 'uniform', got {routing!r}")
        if text_slot not in ("text", "image", "none", "constant"):
            raise ValueError(f"model.net.text_slot must be text, image, none or constant; got {text_slot!r}")
        specs = expert_specs(expert, num_experts, experts, expert_kwargs)
        self.num_classes, self.num_experts = num_classes, len(specs)
        self.routing, self.fusion, self.text_slot = routing, fusion, text_slot
        self.temperature = 1.0
        # Built one after the other from the running RNG: every expert (and head) gets its own init.
        built: list[Expert] = [build_expert(name, num_classes, **kw) for name, kw in specs]
        self.experts = nn.ModuleList(built)
        self.expert_names = [name for name, _ in specs]
        # Which experts see only the text / only the image (for the "weight on the text experts" statistics).
        self.text_only = [k for k, e in enumerate(built) if e.modalities == ("text",)]
        self.image_only = [k for k, e in enumerate(built) if e.modalities == ("image",)]
        if freeze_experts:
            self.experts.requires_grad_(False)
        if fusion == "features" and len({e.feature_dim for e in built}) > 1:
            raise ValueError(f"fusion='features' needs experts with one feature size; got "
                             f"{[(n, e.feature_dim) for n, e in zip(self.expert_names, built, strict=True)]}")
        self.shared_head = nn.Linear(built[0].feature_dim, num_classes) if fusion == "features" else None
        self.text_router = self.image_router = self.mwf = None
        if routing == "drdf":
            K = self.num_experts
            self.image_router = ImageRouter(K, **(image_router or {}))
            mwf_cfg = dict(mwf or {})
            if text_slot == "text":
                self.text_router = TextRouter(K, **(text_router or {}))
            elif text_slot == "image":
                self.text_router = ImageRouter(K, **(text_slot_image_router or image_router or {}))
            elif text_slot == "constant":
                self.text_router = ConstantRouter(K)
            else:  # "none": only the image router routes
                mwf_cfg["gate"] = "image"
            t_dim = self.text_router.feature_dim if self.text_router is not None else 1
            self.mwf = MWFLayer(t_dim, self.image_router.feature_dim, K, **mwf_cfg)

    def router_parameters(self) -> list[nn.Parameter]:
        mods = [m for m in (self.text_router, self.image_router, self.mwf) if m is not None]
        return [p for m in mods for p in m.parameters() if p.requires_grad]

    def expert_parameters(self) -> list[nn.Parameter]:
        params = [p for p in self.experts.parameters() if p.requires_grad]
        return params + (list(self.shared_head.parameters()) if self.shared_head is not None else [])

    def route(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (w [B, K], a [B, 2])."""
        B = batch["image"].shape[0]
        device = batch["image"].device
        if self.routing == "uniform":
            return (torch.full((B, self.num_experts), 1.0 / self.num_experts, device=device),
                    torch.full((B, 2), 0.5, device=device))
        h_v, r_v = self.image_router(batch)
        if self.text_router is None:
            h_t, r_t = h_v.new_zeros(B, 1), torch.zeros_like(r_v)
        else:
            h_t, r_t = self.text_router(batch)
        return self.mwf(h_t, r_t, h_v, r_v, temperature=self.temperature)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """-> {logits [B, C] (log-probabilities for fusion="probs"), expert_logits [K, B, C], weights [B, K],
        modality [B, 2]}."""
        weights, modality = self.route(batch)
        outs = [e(batch) for e in self.experts]
        expert_logits = torch.stack([o[0] for o in outs])
        feats = torch.stack([o[1] for o in outs]) if self.fusion == "features" else None
        logits = fuse(expert_logits, weights, self.fusion, feats, self.shared_head)
        return {"logits": logits, "expert_logits": expert_logits, "weights": weights, "modality": modality}

