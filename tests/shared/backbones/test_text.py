"""Text encoders built offline: toy tokenizers, random BERT / CLIP text models, save/load round trips."""

import logging

import huggingface_hub.constants
import pytest
import torch

from shared.backbones.text import build_clip_tokenizer, build_wordpiece_tokenizer, load_text_encoder

CAPTIONS = ["a red circle on the left", "a blue square in the middle of the image",
            "two green triangles above a yellow star", "a small purple square"]


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    build_wordpiece_tokenizer(CAPTIONS, root / "bert", vocab_size=200)
    build_clip_tokenizer(CAPTIONS, root / "clip", vocab_size=600)
    return {"bert": root / "bert", "clip": root / "clip"}


def test_wordpiece_tokenizer(tokenizer_dirs):
    enc = load_text_encoder(tokenizer_dirs["bert"], kind="bert", pretrained=False)
    tok = enc.tokenizer
    ids = tok("A red circle")["input_ids"]
    assert ids[0] == tok.cls_token_id == 2 and ids[-1] == tok.sep_token_id and tok.pad_token_id == 0
    assert tok.convert_ids_to_tokens(ids[1:-1]) == ["a", "red", "circle"]
    assert tok.unk_token_id not in tok("reddish squares")["input_ids"]  # unseen words split into pieces


def test_clip_tokenizer(tokenizer_dirs):
    enc = load_text_encoder(tokenizer_dirs["clip"], kind="clip", pretrained=False)
    tok = enc.tokenizer
    ids = tok("Two GREEN triangles")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id == tok.pad_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "two green triangles"
    assert tok.decode(tok("zebra!")["input_ids"], skip_special_tokens=True) == "zebra !"  # byte-level: no unk


def test_bert_forward_and_mask(tokenizer_dirs):
    enc = load_text_encoder(tokenizer_dirs["bert"], kind="bert", pretrained=False).eval()
    with torch.no_grad():
        hidden, pooled = enc(CAPTIONS)
        alone, pooled_alone = enc(CAPTIONS[:1])
    assert hidden.shape[0] == 4 and hidden.shape[-1] == enc.hidden_size == 128
    torch.testing.assert_close(pooled, hidden[:, 0])  # pooled = [CLS]
    torch.testing.assert_close(pooled[:1], pooled_alone, atol=1e-5, rtol=1e-5)  # padding is masked


def test_clip_forward_pools_eos(tokenizer_dirs):
    enc = load_text_encoder(tokenizer_dirs["clip"], kind="clip", pretrained=False).eval()
    tokens = enc.tokenize(CAPTIONS)
    with torch.no_grad():
        hidden, pooled = enc(tokens)
    assert hidden.shape == (4, 77, 128) and pooled.shape == (4, 128)
    eos = (tokens["input_ids"] == enc.tokenizer.eos_token_id).int().argmax(-1)
    torch.testing.assert_close(pooled, hidden[torch.arange(4), eos])


@pytest.mark.parametrize("kind", ["bert", "clip"])
def test_save_and_reload_round_trip(kind, tokenizer_dirs, tmp_path):
    enc = load_text_encoder(tokenizer_dirs[kind], kind=kind, pretrained=False,
                            config_overrides={"num_hidden_layers": 1}).eval()
    enc.save_pretrained(tmp_path / kind)
    again = load_text_encoder(tmp_path / kind, kind=kind).eval()
    assert again.model.config.num_hidden_layers == 1
    with torch.no_grad():
        for a, b in zip(enc(CAPTIONS), again(CAPTIONS), strict=True):
            torch.testing.assert_close(a, b)


def test_uncached_hub_name_warns_and_builds_random(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with caplog.at_level(logging.WARNING):
        enc = load_text_encoder("bert-base-uncased", kind="bert", pretrained=True)
    assert len(caplog.records) == 1 and "no local pretrained weights for bert-base-uncased" in caplog.text
    assert enc(["hello world"])[1].shape == (1, 128)


def test_missing_weights_path_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "bert")):
        load_text_encoder(None, kind="bert", pretrained=tmp_path / "bert")
