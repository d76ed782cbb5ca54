"""Datasets for DRDF in their real on-disk formats, the datamodule, and the toy Hateful-Memes-format writer.

* Hateful Memes (docs/papers/drdf.md §7.1): ``<root>/{train,dev_seen,test_seen,dev_unseen,test_unseen}.jsonl`` (phase 1:
  ``dev.jsonl`` / ``test.jsonl``) with ``id``, ``img`` ("img/XXXXX.png"), ``text`` and optional ``label``.
* CIFAR-10 / CIFAR-100 python pickles (§7.2 / §7.3), read with :class:`RestrictedCifarUnpickler` (no arbitrary
  globals are ever resolved or executed).
* TinyImageNet (§7.4): ``wnids.txt``, ``train/<wnid>/images/*.JPEG``, ``val/val_annotations.txt``.

Never imports the model.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2 as T

from shared.backbones.text import build_wordpiece_tokenizer
from shared.data.checks import require_labels_in_range, require_num_classes, require_samples
from shared.data.datamodule import Split, SplitDataModule
from shared.data.images import load_rgb, read_lines, read_utf8, require_dir, require_file
from shared.data.toyworld import Scene, make_object, render

logger = logging.getLogger(__name__)

HM_SPLITS = ("train", "dev_seen", "test_seen", "dev_unseen", "test_unseen", "dev", "test")
HM_LAYOUT = "<root>/{train,dev_seen,test_seen,dev_unseen,test_unseen}.jsonl + <root>/img/XXXXX.png"
HM_MEAN, HM_STD = (0.46777, 0.44531, 0.40661), (0.12222, 0.12146, 0.14380)  # MMF's HM image normalisation
CIFAR_STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
               "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}
TINY_LAYOUT = "tiny-imagenet-200/{wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, val/val_annotations.txt}"
DECIDED_BY = {"text": 0, "image": 1}  # the toy's extra jsonl fields (absent in the real data -> -1)
ASPECT = {"verdict": 0, "colour": 1, "shape": 2}


# ------------------------------------------------------------------------------------------------ Hateful Memes
def read_hm_jsonl(path: str | Path) -> list[dict]:
    """Parse a Hateful Memes jsonl file; a bad line raises ValueError naming the file, line and field."""
    path = require_file(path, HM_LAYOUT, "Hateful Memes annotation file")
    records = []
    for lineno, line in enumerate(read_utf8(path, "Hateful Memes annotation file", HM_LAYOUT).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({e}); expected one object per line") from e
        if not isinstance(rec, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
        for field in ("id", "img", "text"):
            if field not in rec:
                raise ValueError(f"{path}:{lineno}: missing field {field!r} (each line needs id, img, text and "
                                 f"optionally label); got keys {sorted(rec)}")
        if "label" in rec and rec["label"] not in (0, 1):
            raise ValueError(f"{path}:{lineno}: label must be 0 or 1, got {rec['label']!r}")
        records.append(rec)
    return records


def meme_list(folder: str | Path) -> str:
    """``predict`` on a folder of memes: the folder holds their images and ONE ``.jsonl`` naming them (Hateful
    Memes lines ``{"id", "img", "text"}``, ``img`` relative to the folder: a meme needs its text). Returns its stem."""
    root = require_dir(folder, HM_LAYOUT, "data.predict_dir")
    lists = sorted(root.glob("*.jsonl"))
    if len(lists) != 1:
        raise ValueError(f"data.predict_dir {root}: expected exactly one .jsonl of memes (one {{\"id\", \"img\", "
                         f"\"text\"}} per line, img relative to the folder), found {[p.name for p in lists] or 'none'}")
    return lists[0].stem


class HatefulMemesDataset(Dataset):
    """One split of Hateful Memes: items ``{id, image [3,H,W], text, label (-1 if unlabeled), decided_by, aspect}``
    (the last two only in the toy set, -1 otherwise).

    ``require_label=True`` (training / evaluation) refuses a file whose lines lack ``label``; unlabeled test
    files load with ``require_label=False`` (prediction).
    """

    def __init__(self, root: str | Path, split: str, transform=None, require_label: bool = True) -> None:
        self.root = require_dir(root, HM_LAYOUT, "Hateful Memes folder")
        file = self.root / f"{split}.jsonl"
        if not file.is_file():
            have = sorted(p.name for p in self.root.glob("*.jsonl"))
            raise FileNotFoundError(f"Hateful Memes split {split!r}: {file} not found (have {have}; expected "
                                    f"layout {HM_LAYOUT})")
        self.records = read_hm_jsonl(file)
        self.source = file  # named by the datamodule's checks
        if require_label:
            missing = [i for i, r in enumerate(self.records) if "label" not in r]
            if missing:
                raise ValueError(f"{file}: {len(missing)} lines have no 'label' (first: line {missing[0] + 1}); "
                                 "unlabeled splits can only be used for prediction")
        self.transform = transform or T.Compose([T.ToImage(), T.ToDtype(torch.float32, scale=True)])

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = self.records[i]
        image = load_rgb(self.root / rec["img"], HM_LAYOUT)
        return {"id": int(rec["id"]), "image": self.transform(image), "text": str(rec["text"]),
                "label": int(rec.get("label", -1)), "decided_by": DECIDED_BY.get(rec.get("decided_by"), -1),
                "aspect": ASPECT.get(rec.get("aspect"), -1)}


# ------------------------------------------------------------------------------------------------ CIFAR
CIFAR_LAYOUT = "cifar-10-batches-py/{data_batch_1..5,test_batch} or cifar-100-python/{train,test}"
CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}


class CifarRefusedError(pickle.UnpicklingError, ValueError):
    """A CIFAR batch names a global the restricted unpickler refuses (a ValueError, so the CLI prints one line)."""


class RestrictedCifarUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR python batches: admits only numpy array reconstruction and plain types.

    The format holds dicts of bytes/str keys, lists of ints / bytes and one uint8 ndarray. Any other global
    (``os.system``, ``builtins.eval``, ...) is refused with an error naming the file and the global; it is never
    imported, so nothing in the file is executed.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("builtins", "dict"), ("builtins", "list"), ("builtins", "bytes"), ("builtins", "str"),
        ("builtins", "int"), ("builtins", "float"), ("builtins", "tuple"),
        ("_codecs", "encode"),  # how a Python 3 protocol-2 pickle stores bytes
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # protocol-5 arrays
    }

    def __init__(self, file, path: str | Path) -> None:
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str):
        # protocol-2 pickles name the builtins ``__builtin__`` (Python 2's name; e.g. ``bytes`` of an empty array)
        if ("builtins" if module == "__builtin__" else module, name) not in self.ALLOWED:
            raise CifarRefusedError(
                f"{self.path}: refused to load global {module}.{name} - a CIFAR batch only needs numpy arrays and "
                "plain types (this file is not a CIFAR python batch, or it was tampered with)")
        return super().find_class(module, name)


def load_cifar_batch(path: str | Path) -> dict:
    """Read one CIFAR pickle with the restricted unpickler; keys come back as ``str``."""
    path = require_file(path, CIFAR_LAYOUT, "CIFAR batch file")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        obj = RestrictedCifarUnpickler(io.BytesIO(raw), path).load()
    except CifarRefusedError:
        raise
    except Exception as e:  # a cut or foreign file fails in many ways: EOFError, UnpicklingError, ValueError, ...
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        raise ValueError(f"{path}: truncated or not a CIFAR python batch ({len(raw)} bytes, {reason}); re-download "
                         f"and extract cifar-10-python.tar.gz / cifar-100-python.tar.gz (expected layout: "
                         f"{CIFAR_LAYOUT})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict (CIFAR python format), got {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


class CIFARDataset(Dataset):
    """CIFAR-10 (``cifar-10-batches-py/``) or CIFAR-100 (``cifar-100-python/``, fine labels): ``{id, image, label}``."""

    def __init__(self, root: str | Path, name: Literal["cifar10", "cifar100"], train: bool, transform=None) -> None:
        root = require_dir(root, "the cifar-10-batches-py/ or cifar-100-python/ folder", f"{name} folder")
        if name == "cifar10":
            files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
            label_key = "labels"
        elif name == "cifar100":
            files, label_key = (["train"] if train else ["test"]), "fine_labels"
        else:
            raise ValueError(f"CIFARDataset: name must be cifar10 or cifar100, got {name!r}")
        images, labels = [], []
        for fname in files:
            batch = load_cifar_batch(root / fname)
            for key in ("data", label_key):
                if key not in batch:
                    raise ValueError(f"{root / fname}: missing key {key!r} (have {sorted(batch)})")
            redo = "the file is damaged: re-download and extract it"
            try:
                data = np.asarray(batch["data"], dtype=np.uint8)
                batch_labels = [int(x) for x in batch[label_key]]
            except (TypeError, ValueError, OverflowError) as e:
                raise ValueError(f"{root / fname}: expected 'data' uint8 [N, 3072] and {label_key!r} N ints, got "
                                 f"{type(e).__name__}: {e}; {redo}") from e
            if data.ndim != 2 or data.shape[1] != 3072 or len(batch_labels) != data.shape[0]:
                raise ValueError(f"{root / fname}: expected 'data' uint8 [N, 3072] and {label_key!r} N ints, got "
                                 f"'data' {list(data.shape)} and {len(batch_labels)} {label_key}; {redo}")
            require_labels_in_range(batch_labels, CIFAR_CLASSES[name], root / fname, label_key,
                                    classes_from=f"{name} classes", advice=redo)
            images.append(data.reshape(-1, 3, 32, 32))
            labels.extend(batch_labels)
        self.images = torch.from_numpy(np.concatenate(images))
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.transform = transform
        self.source = root / (files[0] if len(files) == 1 else f"{{{','.join(files)}}}")  # named by setup's checks
        self.label_field = label_key

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image = self.images[i].float() / 255.0
        if self.transform is not None:
            image = self.transform(image)
        return {"id": i, "image": image, "label": int(self.labels[i])}


# ------------------------------------------------------------------------------------------------ TinyImageNet
class TinyImageNetDataset(Dataset):
    """TinyImageNet train / val: ``{id, image, label}``; class order = the order of ``wnids.txt``."""

    def __init__(self, root: str | Path, split: Literal["train", "val"], transform=None) -> None:
        root = require_dir(root, TINY_LAYOUT, "TinyImageNet folder")
        self.wnids_file = root / "wnids.txt"
        self.wnids = read_lines(self.wnids_file, "TinyImageNet class list", TINY_LAYOUT)
        index = {w: i for i, w in enumerate(self.wnids)}
        if len(index) != len(self.wnids):
            twice = sorted({w for w in self.wnids if self.wnids.count(w) > 1})
            raise ValueError(f"{self.wnids_file}: wnids listed twice: {twice[:5]}; expected each class once")
        self.samples: list[tuple[Path, int]] = []
        if split == "train":
            self.source = root / "train"
            for w in self.wnids:
                folder = require_dir(root / "train" / w / "images", TINY_LAYOUT, f"train images of {w}")
                found = [(p, index[w]) for p in sorted(folder.glob("*.JPEG"))]
                if not found:
                    raise ValueError(f"{folder}: no *.JPEG training images for class {w} of wnids.txt, expected "
                                     f"at least one (expected layout: {TINY_LAYOUT}); re-extract the dataset")
                self.samples += found
        elif split == "val":
            ann = self.source = root / "val" / "val_annotations.txt"
            for lineno, line in enumerate(read_lines(ann, "TinyImageNet val annotations", TINY_LAYOUT), start=1):
                parts = line.split("\t")
                if len(parts) < 2 or parts[1] not in index:
                    raise ValueError(f"{ann}:{lineno}: expected 'filename<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1' with "
                                     f"a wnid from wnids.txt, got {line!r}")
                self.samples.append((root / "val" / "images" / parts[0], index[parts[1]]))
        else:
            raise ValueError(f"TinyImageNetDataset: split must be train or val, got {split!r} (test has no labels)")
        self.transform = transform or T.Compose([T.ToImage(), T.ToDtype(torch.float32, scale=True)])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path, label = self.samples[i]
        return {"id": i, "image": self.transform(load_rgb(path, TINY_LAYOUT)), "label": label}


# ------------------------------------------------------------------------------------------------ toy memes
TOY_VERSION = 3   # bump when the toy changes (3: the deterministic tokenizer); an old data_dir is then rewritten
TOY_NOUNS = ("cat", "dog", "car", "tree", "house", "party", "song", "movie", "city", "game")
TOY_WORDS = ("good", "bad")            # verdict rule: "good" -> 0, "bad" -> 1
TOY_KEY_COLORS = ("blue", "red")       # colour rule: the key object is blue -> 0, red -> 1
TOY_KEY_SHAPES = ("circle", "square")  # shape rule: the key object is a circle -> 0, a square -> 1
TOY_DISTRACTOR_COLORS = ("yellow", "green", "pink", "purple")
TOY_DISTRACTOR_SHAPES = ("triangle", "star", "cross")
TOY_ASPECTS = ("verdict", "colour", "shape")  # what decides the label; verdict = the caption, the others = the image
TOY_SPLITS = {"train": 1, "dev_seen": 2, "test_seen": 3, "test_unseen": 4}
TOY_SIZES = {"train": 3600, "dev_seen": 450, "test_seen": 450, "test_unseen": 60}


def toy_caption(aspect: str, noun: str, word: str) -> str:
    """The caption's template names what decides: the verdict word, or the colour / shape of the key object."""
    if aspect == "verdict":
        return f"the caption says this {noun} is {word}"
    return f"look at the {aspect} of the {noun} , someone wrote {word}"


def make_toy_meme(rng: np.random.Generator, size: int = 32) -> tuple[Scene, str, int, str]:
    """One toy meme: (scene, caption, label, aspect), aspect in verdict / colour / shape (a third each).

    Every meme carries three independent random bits: the caption's verdict word, the key object's colour and
    its shape. The caption's template says which bit is the label; the other two are distractors. So
    * a caption-only model knows *which* bit decides but sees only the verdict (2/3 correct at best);
    * an image-only model sees the colour and the shape but not which of them decides (2/3 at best, see README);
    * an additive (late) fusion of the two cannot use the caption's cue to choose between colour and shape;
    * a per-sample weighting of a text expert and two image experts (one for colour, one for shape) steered by
      the caption can reach 100%.
    """
    aspect = TOY_ASPECTS[int(rng.integers(3))]
    verdict, colour, shape = (int(b) for b in rng.integers(2, size=3))
    label = {"verdict": verdict, "colour": colour, "shape": shape}[aspect]
    key = make_object(rng, size, kind=TOY_KEY_SHAPES[shape], color=TOY_KEY_COLORS[colour],
                      object_size=(0.38 * size, 0.5 * size))
    other = make_object(rng, size, kind=TOY_DISTRACTOR_SHAPES[int(rng.integers(3))],
                        color=TOY_DISTRACTOR_COLORS[int(rng.integers(4))], object_size=(0.2 * size, 0.3 * size))
    scene = Scene(size, "gray", (other, key), texture=10.0, noise=6.0, seed=int(rng.integers(2**31)))
    noun = TOY_NOUNS[int(rng.integers(len(TOY_NOUNS)))]
    return scene, toy_caption(aspect, noun, TOY_WORDS[verdict]), label, aspect


def _toy_stamp(sizes: dict[str, int], image_size: int, seed: int) -> dict:
    return {"version": TOY_VERSION, "sizes": sizes, "image_size": image_size, "seed": seed}


def toy_memes_ready(root: str | Path, sizes: dict[str, int] | None = None, image_size: int = 32,
                    seed: int = 0) -> bool:
    """True if ``root`` holds the toy set written with these settings by this version of the writer."""
    done = Path(root) / "DONE"
    if not done.is_file():
        return False
    try:
        return json.loads(done.read_text()) == _toy_stamp(sizes or TOY_SIZES, image_size, seed)
    except json.JSONDecodeError:
        return False


def write_toy_memes(root: str | Path, sizes: dict[str, int] | None = None, image_size: int = 32,
                    seed: int = 0) -> Path:
    """Write the toy dataset in the Hateful Memes layout (jsonl + img/) plus a WordPiece ``tokenizer/``.

    Extra jsonl fields, for analysis only: ``decided_by`` (text / image) and ``aspect`` (verdict / colour /
    shape). ``test_unseen`` is written without labels (like the real unlabeled test files). Returns ``root``.
    """
    root = Path(root)
    sizes = dict(sizes or TOY_SIZES)
    (root / "DONE").unlink(missing_ok=True)
    (root / "img").mkdir(parents=True, exist_ok=True)
    next_id, texts = 1, []
    for split, n in sizes.items():
        rng = np.random.default_rng([seed, TOY_SPLITS.get(split, 9)])
        lines = []
        for _ in range(n):
            scene, text, label, aspect = make_toy_meme(rng, image_size)
            rel = f"img/{next_id:05d}.png"
            render(scene).save(root / rel, format="PNG", compress_level=1)
            rec = {"id": next_id, "img": rel, "text": text,
                   "decided_by": "text" if aspect == "verdict" else "image", "aspect": aspect}
            if split != "test_unseen":
                rec["label"] = label
            lines.append(json.dumps(rec))
            texts.append(text)
            next_id += 1
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    build_wordpiece_tokenizer(texts, root / "tokenizer", vocab_size=256)
    (root / "DONE").write_text(json.dumps(_toy_stamp(sizes, image_size, seed)))
    return root


# ------------------------------------------------------------------------------------------------ datamodule
class Collate:
    """Stack images and labels; tokenize texts (BERT-style, padded to the longest, truncated at ``max_length``)."""

    def __init__(self, tokenizer=None, max_length: int = 128) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, items: Sequence[dict]) -> dict[str, Any]:
        batch: dict[str, Any] = {
            "id": torch.tensor([it["id"] for it in items]),
            "image": torch.stack([it["image"] for it in items]),
            "label": torch.tensor([it["label"] for it in items]),
        }
        if "text" in items[0]:
            texts = [it["text"] for it in items]
            batch["text"] = texts
            batch["decided_by"] = torch.tensor([it["decided_by"] for it in items])
            batch["aspect"] = torch.tensor([it.get("aspect", -1) for it in items])
            enc = self.tokenizer(texts, padding="longest", truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
            batch["input_ids"], batch["attention_mask"] = enc["input_ids"], enc["attention_mask"]
        return batch


class DRDFDataModule(SplitDataModule):
    """Hateful Memes (real or toy), CIFAR-10/100 or TinyImageNet for DRDF.

    ``dataset``: hateful_memes | toy_memes | cifar10 | cifar100 | tiny_imagenet. ``toy_memes`` writes the toy
    Hateful-Memes-format set into ``data_dir`` first (if not there yet) and then reads it like the real one.
    ``tokenizer``: a local tokenizer folder (e.g. bert-base-uncased); defaults to ``<data_dir>/tokenizer`` for
    the toy set. ``num_classes``: the classes the model has (checked against the labels in ``setup``); None = the
    dataset's own count (2 for memes, 10 / 100 for CIFAR, the lines of ``wnids.txt``).
    ``skip_bad_files``: an unreadable image (memes, TinyImageNet) is replaced by the next sample and counted
    instead of ending the run, up to ``max_bad_fraction`` of a pass (``shared.data.bad_files``).
    """

    def __init__(self, dataset: Literal["hateful_memes", "toy_memes", "cifar10", "cifar100", "tiny_imagenet"] =
                 "toy_memes", data_dir: str = "data/drdf_toy", tokenizer: str | None = None, batch_size: int = 64,
                 eval_batch_size: int | None = None, num_workers: int = 0, image_size: int = 224,
                 max_length: int = 128, train_split: str = "train", val_split: str = "dev_seen",
                 test_split: str = "test_seen", predict_split: str = "test_unseen", augment: bool = True,
                 toy_sizes: dict[str, int] | None = None, toy_seed: int = 0, predict_dir: str | None = None,
                 num_classes: int | None = None, skip_bad_files: bool = False, max_bad_fraction: float = 0.001) -> None:
        super().__init__()
        self.save_hyperparameters()
        for name in ("image_size", "max_length"):
            if int(self.hparams[name]) < 1:
                raise ValueError(f"data.{name} must be >= 1; got {self.hparams[name]}")
        self.tokenizer = None
        self.splits: dict[str, Dataset] = {}

    @property
    def multimodal(self) -> bool:
        return self.hparams.dataset in ("hateful_memes", "toy_memes")

    def prepare_data(self) -> None:
        h = self.hparams
        if h.dataset == "toy_memes" and not toy_memes_ready(h.data_dir, h.toy_sizes, h.image_size, h.toy_seed):
            logger.info("writing the toy memes dataset (version %d) to %s", TOY_VERSION, h.data_dir)
            write_toy_memes(h.data_dir, h.toy_sizes, image_size=h.image_size, seed=h.toy_seed)

    def _load_tokenizer(self):
        from transformers import AutoTokenizer  # transformers loads in seconds: only the meme datasets need it

        path = self.hparams.tokenizer or str(Path(self.hparams.data_dir) / "tokenizer")
        require_dir(path, "a transformers tokenizer folder (vocab.txt / tokenizer.json), e.g. bert-base-uncased",
                    "data.tokenizer")
        return AutoTokenizer.from_pretrained(path, local_files_only=True)

    def _transforms(self, train: bool):
        h = self.hparams
        if self.multimodal:  # MMF grid pipeline: resize (256 -> centre crop 224 at full size), normalise
            # Always resize: memes come in every size, and a batch stacks only equal ones (a no-op on the toy's).
            ops = [T.Resize((h.image_size, h.image_size), antialias=True)]
            if train and h.augment and h.dataset == "toy_memes":  # the toy's labels survive flips (MMF has none)
                ops += [T.RandomHorizontalFlip(), T.RandomVerticalFlip()]
            return T.Compose([T.ToImage(), *ops, T.ToDtype(torch.float32, scale=True), T.Normalize(HM_MEAN, HM_STD)])
        if h.dataset in CIFAR_STATS:
            mean, std = CIFAR_STATS[h.dataset]
            aug = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if train and h.augment else []
            return T.Compose([*aug, T.Normalize(mean, std)])
        aug = [T.RandomCrop(64, padding=8), T.RandomHorizontalFlip()] if train and h.augment else []
        resize = [T.Resize((h.image_size, h.image_size), antialias=True)]  # no-op at 64; fixes a stray size
        return T.Compose([T.ToImage(), T.ToDtype(torch.float32, scale=True), *aug, *resize,
                          T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])

    def _split(self, stage: str) -> Dataset:
        h = self.hparams
        if stage in self.splits:
            return self.splits[stage]
        train = stage == "train"
        if self.multimodal and stage == "predict" and h.predict_dir is not None:
            ds = HatefulMemesDataset(h.predict_dir, meme_list(h.predict_dir), self._transforms(False),
                                     require_label=False)
        elif self.multimodal:
            name = {"train": h.train_split, "val": h.val_split, "test": h.test_split, "predict": h.predict_split}
            ds = HatefulMemesDataset(h.data_dir, name[stage], self._transforms(train),
                                     require_label=stage != "predict")
        elif h.dataset in CIFAR_STATS:
            ds = CIFARDataset(h.data_dir, h.dataset, train=train, transform=self._transforms(train))
        elif h.dataset == "tiny_imagenet":
            ds = TinyImageNetDataset(h.data_dir, "train" if train else "val", self._transforms(train))
        else:
            raise ValueError(f"data.dataset: unknown {h.dataset!r} (hateful_memes, toy_memes, cifar10, cifar100, "
                             "tiny_imagenet)")
        self.splits[stage] = ds
        return ds

    def setup(self, stage: str | None = None) -> None:
        if self.multimodal and self.tokenizer is None:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            self.tokenizer = self._load_tokenizer()
        # Read the splits the stage uses now (the loaders reuse them): a bad one stops the run here, in one line.
        used = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
        for split in used.get(stage, ("train", "val")):
            ds = self._split(split)
            require_samples(len(ds), split, ds.source)
            if split != "predict":
                self._check_labels(ds)

    def _check_labels(self, ds: Dataset) -> None:
        """Every label of ``ds`` within ``data.num_classes`` (when set; the dataset's own classes otherwise)."""
        n = self.hparams.num_classes
        if isinstance(ds, TinyImageNetDataset):
            if n is not None:
                require_num_classes(len(ds.wnids), n, ds.wnids_file, "wnids")
        elif isinstance(ds, CIFARDataset):
            require_labels_in_range(ds.labels, n or CIFAR_CLASSES[self.hparams.dataset], ds.source, ds.label_field)
        else:
            require_labels_in_range([r["label"] for r in ds.records], n or 2, ds.source, "label")

    def dataset(self, split: Split) -> Dataset:
        return self._split(split)

    def collate_fn(self) -> Collate:
        return Collate(self.tokenizer, self.hparams.max_length)
