"""Text encoders (BERT for DRDF's text router / experts, CLIP text for SPM) that work with no network.

A local transformers folder (config.json + weights + tokenizer files, or a diffusers pipeline folder with
``text_encoder/`` and ``tokenizer/``) is loaded with ``local_files_only=True``. Otherwise a small randomly
initialised model is built, with the folder's tokenizer (see :func:`build_wordpiece_tokenizer` /
:func:`build_clip_tokenizer`) or, without one, a character-level WordPiece tokenizer.
"""

from __future__ import annotations

import json
import logging
import string
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from shared.backbones.weights import (
    HF_WEIGHT_FILES,
    Pretrained,
    ensure_offline,
    load_into,
    read_state_dict,
    resolve_pretrained,
)

logger = logging.getLogger(__name__)

Kind = Literal["bert", "clip"]
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # [PAD] = 0, BertConfig's pad_token_id
CLIP_SPECIALS = ["<|startoftext|>", "<|endoftext|>"]
# Small built-in architectures for toy runs; config_overrides changes any field.
SMALL_CONFIGS: dict[str, dict] = {
    "bert": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512,
                 max_position_embeddings=128),
    "clip": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512,
                 max_position_embeddings=77, projection_dim=128),
}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")


class TextEncoder(nn.Module):
    """A tokenizer plus a transformers text model; ``forward`` returns (last_hidden_state, pooled).

    pooled = the [CLS] output for BERT (``pool="pooler"``: BERT's tanh pooler) and the EOS-token output
    (``pooler_output``) for CLIP. CLIP follows the Stable Diffusion convention: padding to ``max_length`` (77)
    and no attention mask (the causal mask alone), so padded positions get outputs too.
    """

    def __init__(self, tokenizer, model: nn.Module, kind: Kind, max_length: int | None = None,
                 padding: str | None = None, pool: Literal["cls", "pooler"] = "cls") -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.model = model
        self.kind = kind
        self.hidden_size: int = model.config.hidden_size
        self.max_length: int = max_length or model.config.max_position_embeddings
        self.padding = padding or ("max_length" if kind == "clip" else "longest")
        self.pool = pool

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Tokenize with this encoder's padding / truncation; tensors on the model's device."""
        if self.tokenizer is None:
            raise ValueError("TextEncoder has no tokenizer: pass a dict of token tensors instead of strings")
        enc = self.tokenizer(list(texts), padding=self.padding, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        device = next(self.model.parameters()).device
        return {k: v.to(device) for k, v in enc.items()}

    def forward(self, texts: list[str] | Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """texts or token tensors -> (last_hidden_state [B, L, D], pooled [B, D])."""
        tokens = dict(texts) if isinstance(texts, Mapping) else self.tokenize(texts)
        if self.kind == "clip":
            out = self.model(input_ids=tokens["input_ids"])
            return out.last_hidden_state, out.pooler_output
        tokens = {k: v for k, v in tokens.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        out = self.model(**tokens)
        pooled = out.pooler_output if self.pool == "pooler" else out.last_hidden_state[:, 0]
        return out.last_hidden_state, pooled

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """Save model and tokenizer as one transformers folder that :func:`load_text_encoder` reads back."""
        out = Path(out_dir)
        self.model.save_pretrained(out)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(out)
        return out


def _has_weights(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(
        (folder / f).is_file() or (folder / f"{f}.index.json").is_file() for f in HF_WEIGHT_FILES)


def _has_tokenizer(folder: Path | None) -> bool:
    return folder is not None and any((folder / f).is_file() for f in _TOKENIZER_FILES)


def _model_class(kind: Kind):
    # transformers takes seconds to import: the image-only runs (RAMS-Trans, DiD, DRDF on CIFAR) never pay it
    from transformers import BertConfig, BertModel, CLIPTextConfig, CLIPTextModel

    if kind == "bert":
        return BertConfig, BertModel
    if kind == "clip":
        return CLIPTextConfig, CLIPTextModel
    raise ValueError(f"text encoder kind must be 'bert' or 'clip', got {kind!r}")


def load_text_encoder(path_or_name: str | Path | None = None, kind: Kind = "bert", pretrained: Pretrained = True,
                      config_overrides: dict | None = None, *, max_length: int | None = None,
                      padding: str | None = None, pool: Literal["cls", "pooler"] = "cls") -> TextEncoder:
    """Load a text encoder from a local folder / the local HF cache, or build a small random one.

    ``path_or_name``: a transformers folder (or a diffusers pipeline folder), a tokenizer-only folder, a hub
    name (looked up in the local cache only), or ``None``. ``pretrained`` follows the weights rule
    (``True``: local weights if any, else one warning and random init; a path: that folder / weights file).
    """
    ensure_offline()
    config_cls, model_cls = _model_class(kind)
    what = f"load_text_encoder({str(path_or_name)!r}, kind={kind!r})"
    folder = Path(path_or_name).expanduser() if path_or_name is not None else None
    folder = folder if folder is not None and folder.is_dir() else None
    model_dir = tok_dir = folder
    if folder is not None and (folder / "text_encoder").is_dir():  # diffusers pipeline layout
        model_dir, tok_dir = folder / "text_encoder", folder / "tokenizer"
    overrides = dict(config_overrides or {})

    if pretrained is True and model_dir is not None:
        source = model_dir if _has_weights(model_dir) else None
        if source is None:
            logger.warning("%s: no local pretrained weights in %s (pass pretrained=/path/to/weights); "
                           "starting from random init", what, model_dir)
    else:
        hub_name = str(path_or_name) if path_or_name is not None and folder is None else None
        source = resolve_pretrained(pretrained, what, hf_repo=hub_name)
        if pretrained is True and hub_name is None:
            logger.warning("%s: no model name or folder given; starting from random init", what)

    tokenizer = _load_tokenizer(tok_dir if _has_tokenizer(tok_dir) else source if _has_tokenizer(source) else None,
                                kind, what)
    if source is not None and source.is_dir():
        model = model_cls.from_pretrained(source, local_files_only=True, **overrides)
    else:
        config_dir = source.parent if source is not None else model_dir
        model = model_cls(_config(config_cls, config_dir, kind, tokenizer, overrides, what))
        if source is not None:  # a bare weights file for this architecture
            load_into(model, read_state_dict(source), what, source=source)
    return TextEncoder(tokenizer, model, kind, max_length=max_length, padding=padding, pool=pool)


def _config(config_cls, config_dir: Path | None, kind: Kind, tokenizer, overrides: dict, what: str):
    if config_dir is not None and (config_dir / "config.json").is_file():
        return config_cls.from_pretrained(config_dir, local_files_only=True, **overrides)
    fields = {**SMALL_CONFIGS[kind], "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
    if kind == "clip":  # CLIPTextModel pools at the first eos_token_id (transformers >= 4.31 behaviour)
        fields.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    fields.update(overrides)
    logger.info("%s: random init from the built-in small config %s", what,
                {k: fields[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")})
    return config_cls(**fields)


def _load_tokenizer(folder: Path | None, kind: Kind, what: str):
    if folder is not None:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    logger.info("%s: no tokenizer files; using a character-level tokenizer", what)
    chars = [" ".join(string.ascii_lowercase + string.digits + string.punctuation)]
    build = build_clip_tokenizer if kind == "clip" else build_wordpiece_tokenizer
    return build(chars, None, vocab_size=64)


def build_wordpiece_tokenizer(texts: Iterable[str], out_dir: str | Path | None, vocab_size: int = 1000,
                              lowercase: bool = True):
    """A BERT-style WordPiece tokenizer for ``texts``; saved (if ``out_dir``) as a BertTokenizerFast folder.

    The vocabulary is a pure function of ``texts``: the special tokens (ids 0-4: [PAD], [UNK], [CLS], [SEP],
    [MASK]), every character seen with its ``##`` continuation (so any word of those characters can be spelt),
    then whole words by frequency, ties in alphabetical order, up to ``vocab_size`` (BERT's normaliser and
    pre-tokeniser). The ``tokenizers`` WordPiece trainer was not used: it breaks frequency ties in hash-map order,
    so two writes of the same captions got different vocabularies, and a toy run different numbers.
    """
    from tokenizers import normalizers, pre_tokenizers
    from transformers import BertTokenizerFast

    normalizer, splitter = normalizers.BertNormalizer(lowercase=lowercase), pre_tokenizers.BertPreTokenizer()
    words = Counter(w for text in texts for w, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for w in words for c in w})
    vocab = [*BERT_SPECIALS, *chars, *(f"##{c}" for c in chars)]
    vocab += [w for w in sorted(words, key=lambda w: (-words[w], w)) if len(w) > 1][:max(0, vocab_size - len(vocab))]
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=lowercase)
    if out_dir is not None:
        tokenizer.save_pretrained(out_dir)
    return tokenizer


def build_clip_tokenizer(texts: Iterable[str], out_dir: str | Path | None, vocab_size: int = 1000):
    """Train a CLIP-style byte-level BPE (``</w>`` word ends) on ``texts``; save it as a CLIPTokenizer folder.

    Same normaliser / pre-tokeniser as OpenAI CLIP; ids 0 and 1 are <|startoftext|> and <|endoftext|>
    (EOS doubles as padding, as in CLIP). ``vocab_size`` must exceed the 256-symbol byte alphabet (and the
    ``</w>`` variants of the symbols seen).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    template = CLIPTokenizer().backend_tokenizer  # reuse CLIP's own normaliser and pre-tokeniser
    tok = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="</w>"))
    tok.normalizer, tok.pre_tokenizer = template.normalizer, template.pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=CLIP_SPECIALS, min_frequency=1,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), end_of_word_suffix="</w>")
    tok.train_from_iterator(list(texts), trainer=trainer)
    vocab = tok.get_vocab()
    # Every byte also needs its word-final form so any text can be encoded (CLIP's vocab has both).
    for symbol in pre_tokenizers.ByteLevel.alphabet():
        vocab.setdefault(symbol + "</w>", len(vocab))
    merges = _bpe_merges(tok)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    if out_dir is not None:
        tokenizer.save_pretrained(out_dir)
    return tokenizer


def _bpe_merges(tok) -> list[tuple[str, str]]:
    merges = json.loads(tok.to_str())["model"]["merges"]
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
