"""Fine-grained datasets in their real on-disk formats (CUB-200-2011, Stanford Dogs, iNat2017), the official
transforms (docs/papers/rams_trans.md §5-6), and the toy CUB-format dataset whose classes differ only by a small part.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import transforms as T

from shared.data.checks import require_labels_in_range, require_samples
from shared.data.datamodule import Split as LoaderSplit
from shared.data.datamodule import SplitDataModule, predict_folder
from shared.data.images import IMAGENET_MEAN, IMAGENET_STD, load_rgb, read_lines, read_utf8, require_dir, require_file
from shared.data.toyworld import COLORS, SHAPES, ToyObject, make_object, make_part, render, sample_scene
from shared.predict import ImageFolderDataset

CUB_LAYOUT = ("CUB_200_2011/ with images.txt ('<id> <relpath>'), image_class_labels.txt ('<id> <class 1..C>'), "
              "train_test_split.txt ('<id> <1=train|0=test>') and images/<relpath>")
DOGS_LAYOUT = ("Stanford Dogs root with train_list.mat / test_list.mat (keys file_list, labels 1..120) and "
               "Images/<wnid-breed>/<file>.jpg")
INAT_LAYOUT = ("iNat2017 root with train2017.json / val2017.json (COCO-style images[id, file_name], "
               "annotations[image_id, category_id 0-based]) and the image files at <root>/<file_name>")

Split = Literal["train", "test"]


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


class _ImageListDataset(Dataset):
    """(path, label) pairs read lazily as RGB (greyscale / CMYK / palette converted) and transformed."""

    layout = ""
    # Where the split and its labels were read from, named by the DataModule's checks (set by each subclass).
    source: Path | str = ""
    label_source: Path | str = ""
    label_field, label_base = "label", 0  # labels are stored 0-based; ``label_base`` is the file's first class

    def __init__(self, samples: list[tuple[Path, int]], transform=None) -> None:
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        img = load_rgb(path, self.layout)
        return (self.transform(img) if self.transform is not None else img), label

    @property
    def targets(self) -> list[int]:
        return [s[1] for s in self.samples]


def _id_table(path: Path, what: str, layout: str) -> dict[str, str]:
    table: dict[str, str] = {}
    for n, line in enumerate(read_lines(path, what, layout), 1):
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise ValueError(f"{path}:{n}: expected '<image id> <value>', got {line!r} (expected layout: {layout})")
        if parts[0] in table:
            raise ValueError(f"{path}:{n}: image id {parts[0]} appears twice (expected layout: {layout})")
        table[parts[0]] = parts[1]
    return table


class CUBDataset(_ImageListDataset):
    """CUB-200-2011 (``root`` = the ``CUB_200_2011`` folder); the three text files are joined on image id."""

    layout = CUB_LAYOUT

    def __init__(self, root: str | Path, split: Split = "train", transform=None) -> None:
        _check_split(split)
        root = require_dir(root, CUB_LAYOUT, "CUB root")
        paths = _id_table(root / "images.txt", "CUB images.txt", CUB_LAYOUT)
        labels = _id_table(root / "image_class_labels.txt", "CUB image_class_labels.txt", CUB_LAYOUT)
        is_train = _id_table(root / "train_test_split.txt", "CUB train_test_split.txt", CUB_LAYOUT)
        samples = []
        for img_id, rel in paths.items():
            for table, name in ((labels, "image_class_labels.txt"), (is_train, "train_test_split.txt")):
                if img_id not in table:
                    raise ValueError(f"{root / name}: no line for image id {img_id} of images.txt "
                                     f"(expected layout: {CUB_LAYOUT})")
            flag = is_train[img_id].strip()
            if flag not in ("0", "1"):
                raise ValueError(f"{root / 'train_test_split.txt'}: image id {img_id} has split {flag!r}, "
                                 "expected 1 (train) or 0 (test)")
            try:
                label = int(labels[img_id]) - 1
            except ValueError:
                raise ValueError(f"{root / 'image_class_labels.txt'}: image id {img_id} has class "
                                 f"{labels[img_id]!r}, expected an integer 1..C") from None
            if label < 0:
                raise ValueError(f"{root / 'image_class_labels.txt'}: image id {img_id} has class "
                                 f"{label + 1}, expected 1..C")
            if (flag == "1") == (split == "train"):
                samples.append((root / "images" / rel.strip(), label))
        super().__init__(samples, transform)
        self.source, self.label_source = root / "train_test_split.txt", root / "image_class_labels.txt"
        self.label_field, self.label_base = "class id", 1


def _mat_strings(value, path: Path, key: str) -> list[str]:
    """A MATLAB cell array of strings, or a char matrix (one space-padded row per string), as scipy loads
    them -> list of str. scipy gives a char matrix as 1-D padded strings, or 2-D single characters when
    loaded with ``chars_as_strings=False``; the padding is stripped."""
    arr = np.asarray(value)
    if arr.ndim == 2 and arr.shape[1] > 1 and arr.dtype in (np.dtype("U1"), np.dtype("S1")):
        arr = np.array(["".join(row) if arr.dtype.kind == "U" else b"".join(row).decode() for row in arr])
    out = []
    for item in arr.reshape(-1):
        while isinstance(item, np.ndarray) and item.dtype.kind in "OUS" and item.size == 1:
            item = item.reshape(-1)[0]
        if isinstance(item, bytes):
            item = item.decode("utf-8", "replace")
        if not isinstance(item, str):
            got = f"{item.dtype} array of shape {item.shape}" if isinstance(item, np.ndarray) else type(item).__name__
            raise ValueError(f"{path}: key {key!r} holds a {got}, expected a cell array of strings or a char "
                             f"matrix (expected layout: {DOGS_LAYOUT})")
        out.append(item.rstrip(" \x00"))
    return out


class StanfordDogsDataset(_ImageListDataset):
    """Stanford Dogs from ``train_list.mat`` / ``test_list.mat`` directly under ``root`` (read with scipy)."""

    layout = DOGS_LAYOUT

    def __init__(self, root: str | Path, split: Split = "train", transform=None) -> None:
        import scipy.io

        _check_split(split)
        root = require_dir(root, DOGS_LAYOUT, "Stanford Dogs root")
        path = require_file(root / f"{split}_list.mat", DOGS_LAYOUT, "Stanford Dogs list")
        try:
            mat = scipy.io.loadmat(str(path))
        except Exception as e:  # scipy raises several types for a corrupt file
            raise ValueError(f"cannot read {path}: {type(e).__name__}: {e} (expected layout: {DOGS_LAYOUT})") from e
        for key in ("file_list", "labels"):
            if key not in mat:
                raise ValueError(f"{path}: missing key {key!r} (expected layout: {DOGS_LAYOUT})")
        files = _mat_strings(mat["file_list"], path, "file_list")
        labels = np.asarray(mat["labels"]).reshape(-1).astype(np.int64) - 1
        if len(files) != len(labels):
            raise ValueError(f"{path}: {len(files)} files but {len(labels)} labels")
        if len(labels) and labels.min() < 0:
            raise ValueError(f"{path}: labels must be 1-based (1..120), found {int(labels.min()) + 1}")
        super().__init__([(root / "Images" / f, int(y)) for f, y in zip(files, labels, strict=True)], transform)
        self.source = self.label_source = path
        self.label_field, self.label_base = "labels", 1
        # "n02085620-Chihuahua/n02085620_10074.jpg": the folder names the breed (label -> name, as listed)
        self.names_by_label = {int(y): f.split("/", 1)[0].split("-", 1)[-1] for f, y in zip(files, labels, strict=True)}


class INat2017Dataset(_ImageListDataset):
    """iNaturalist 2017: COCO-style ``train2017.json`` / ``val2017.json`` (val = test), joined on image_id."""

    layout = INAT_LAYOUT

    def __init__(self, root: str | Path, split: Split = "train", transform=None) -> None:
        _check_split(split)
        root = require_dir(root, INAT_LAYOUT, "iNat2017 root")
        path = require_file(root / ("train2017.json" if split == "train" else "val2017.json"), INAT_LAYOUT,
                            "iNat2017 annotation file")
        try:
            data = json.loads(read_utf8(path, "iNat2017 annotation file", INAT_LAYOUT))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e}) (expected layout: {INAT_LAYOUT})") from e
        for key in ("images", "annotations"):
            if not isinstance(data.get(key), list):
                raise ValueError(f"{path}: missing list {key!r} (expected layout: {INAT_LAYOUT})")
        try:
            label_of = {a["image_id"]: int(a["category_id"]) for a in data["annotations"]}
            samples = []
            for im in data["images"]:
                if im["id"] not in label_of:
                    raise ValueError(f"{path}: image id {im['id']} has no annotation (expected layout: "
                                     f"{INAT_LAYOUT})")
                samples.append((root / im["file_name"], label_of[im["id"]]))
        except KeyError as e:
            raise ValueError(f"{path}: an entry lacks field {e} (expected layout: {INAT_LAYOUT})") from None
        if isinstance(data.get("categories"), list):
            known = {c.get("id") for c in data["categories"] if isinstance(c, dict)}
            unknown = sorted({y for _, y in samples} - known)
            if unknown:
                raise ValueError(f"{path}: annotations[].category_id {unknown[:5]} not among the ids of "
                                 f"'categories' ({len(known)} ids); fix the file or use the matching train/val json")
        super().__init__(samples, transform)
        self.source = self.label_source = path
        self.label_field = "annotations[].category_id"
        self.names_by_label = {int(c["id"]): str(c["name"]) for c in data.get("categories") or []
                               if isinstance(c, dict) and "id" in c and "name" in c}


def build_transforms(train: bool, resize: int, crop: int, autoaugment: bool = False) -> T.Compose:
    """Spec 5: square Resize (bilinear, ignores aspect) -> RandomCrop + flip (train) / CenterCrop (test) ->
    ImageNet normalisation; ``autoaugment`` adds the ImageNet AutoAugment policy (iNat, TransFG)."""
    ops: list = [T.Resize((resize, resize), interpolation=T.InterpolationMode.BILINEAR)]
    if train:
        ops += [T.RandomCrop(crop), T.RandomHorizontalFlip()]
        if autoaugment:
            ops.append(T.AutoAugment(T.AutoAugmentPolicy.IMAGENET))
    else:
        ops.append(T.CenterCrop(crop))
    return T.Compose([*ops, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


# ------------------------------------------------------------------------------------------------ toy dataset
TOY_PART_KINDS = ("dot", "stripe", "notch", "corner")
TOY_PART_COLORS = ("white", "yellow")
TOY_HOST_COLORS = tuple(c for c in COLORS if c not in TOY_PART_COLORS)


def toy_class_names() -> list[str]:
    return [f"{c}_{k}" for c in TOY_PART_COLORS for k in TOY_PART_KINDS]


def toy_scene(rng: np.random.Generator, label: int, size: int, part_frac: float, clutter: int):
    """One toy scene: class ``label`` = (part colour, part kind) of a small part on one host object at a random
    place; 1-2 part-less distractor objects and clutter around it. The part covers about ``part_frac`` of the
    image area, so the cue is small and its shape only readable up close."""
    color, kind = TOY_PART_COLORS[label // len(TOY_PART_KINDS)], TOY_PART_KINDS[label % len(TOY_PART_KINDS)]
    part_side = math.sqrt(part_frac) * size
    host_size = part_side / 0.45 * float(rng.uniform(0.9, 1.1))
    part = make_part(rng, host_size, kind, color, size=part_side * (0.75 if kind == "stripe" else 1.0))
    host = make_object(rng, size, kind=str(rng.choice(["circle", "square", "hexagon", "diamond", "pentagon"])),
                       color=str(rng.choice(TOY_HOST_COLORS)), size=host_size, part=part)
    margin = size * 0.1  # keep the host inside the train random crop
    box = host.bbox
    cx = float(rng.uniform(margin - box[0] + host.center[0], size - margin - box[2] + host.center[0]))
    cy = float(rng.uniform(margin - box[1] + host.center[1], size - margin - box[3] + host.center[1]))
    host = ToyObject(host.kind, host.color, host.size, (cx, cy), host.angle, host.part)
    return sample_scene(rng, size, (1, 2), objects=[host], shapes=SHAPES, colors=TOY_HOST_COLORS, part_prob=0.0,
                        clutter=clutter, object_size=(0.18 * size, 0.3 * size), max_overlap=0.05)


TOY_PART_BOXES = "part_boxes.txt"


def _clip(box: tuple[int, int, int, int], size: int) -> tuple[int, int, int, int]:
    return max(0, box[0]), max(0, box[1]), min(size, box[2]), min(size, box[3])


def read_boxes(path: Path) -> dict[int, tuple[int, int, int, int]]:
    """A CUB ``bounding_boxes.txt``-style file -> ``{image id: (x0, y0, x1, y1)}`` (exclusive end)."""
    out = {}
    for n, line in enumerate(read_lines(path, "box file", CUB_LAYOUT), 1):
        parts = line.split()
        try:
            i, x, y, w, h = int(parts[0]), *(round(float(v)) for v in parts[1:5])
        except (ValueError, IndexError):
            raise ValueError(f"{path}:{n}: expected '<image id> <x> <y> <width> <height>', got {line!r}") from None
        out[i] = (x, y, x + w, y + h)
    return out


def toy_part_boxes(ds: CUBDataset, root: Path, resize: int, crop: int, size: int) -> torch.Tensor:
    """Part boxes ``[N, 4]`` (x0, y0, x1, y1 exclusive) of the toy split ``ds`` in its *test-transform* input's
    pixels (square resize of the ``size`` px images to ``resize``, centre crop ``crop``), in ``ds`` order."""
    ids = {rel.strip(): int(i) for i, rel in _id_table(root / "images.txt", "CUB images.txt", CUB_LAYOUT).items()}
    boxes = read_boxes(root / TOY_PART_BOXES)
    rows = [boxes[ids[str(path.relative_to(root / "images"))]] for path, _ in ds.samples]
    offset = int(round((resize - crop) / 2.0))  # torchvision CenterCrop
    b = torch.tensor(rows, dtype=torch.float64) * (resize / size) - offset
    b[:, :2] = b[:, :2].floor()
    b[:, 2:] = b[:, 2:].ceil()
    return b.clamp(0, crop).long()


def write_toy_cub(root: str | Path, num_train: int = 1200, num_test: int = 400, size: int = 72,
                  part_frac: float = 0.02, clutter: int = 14, seed: int = 0) -> Path:
    """Write the toy dataset in the CUB-200-2011 layout under ``root`` (idempotent: a stamp file records the
    arguments); classes are balanced and test ids interleave with train ids (the loader joins on id)."""
    root = Path(root)
    args = dict(num_train=num_train, num_test=num_test, size=size, part_frac=part_frac, clutter=clutter,
                seed=seed, version=2)
    stamp = root / "toy_args.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == args:
        return root
    rng = np.random.default_rng(seed)
    names = toy_class_names()
    n = num_train + num_test
    labels = np.arange(n) % len(names)
    is_train = np.zeros(n, dtype=bool)
    is_train[rng.permutation(n)[:num_train]] = True
    lines_img, lines_lab, lines_split, lines_host, lines_part = [], [], [], [], []
    for i in range(n):
        y = int(labels[i])
        rel = f"{y + 1:03d}.{names[y]}/toy_{i:06d}.png"
        path = root / "images" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        scene = toy_scene(rng, y, size, part_frac, clutter)
        render(scene).save(path, compress_level=1)
        lines_img.append(f"{i + 1} {rel}")
        lines_lab.append(f"{i + 1} {y + 1}")
        lines_split.append(f"{i + 1} {int(is_train[i])}")
        host = scene.objects[0]  # toy_scene puts the part's host first
        for lines, (x0, y0, x1, y1) in ((lines_host, scene.boxes()[0]), (lines_part, _clip(host.part_bbox, size))):
            lines.append(f"{i + 1} {x0} {y0} {x1 - x0} {y1 - y0}")
    (root / "images.txt").write_text("\n".join(lines_img) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(lines_lab) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(lines_split) + "\n")
    # CUB's bounding_boxes.txt (the host object) and, in the same '<id> <x> <y> <width> <height>' form, the
    # discriminative part: the ground truth of the DPPM mechanism measure (projects/rams_trans/mechanism.py).
    (root / "bounding_boxes.txt").write_text("\n".join(lines_host) + "\n")
    (root / TOY_PART_BOXES).write_text("\n".join(lines_part) + "\n")
    (root / "classes.txt").write_text("\n".join(f"{i + 1} {i + 1:03d}.{c}" for i, c in enumerate(names)) + "\n")
    stamp.write_text(json.dumps(args))
    return root


# ------------------------------------------------------------------------------------------------ datamodule
DATASETS = {"cub": CUBDataset, "toy": CUBDataset, "dogs": StanfordDogsDataset, "inat2017": INat2017Dataset}


class FGVCDataModule(SplitDataModule):
    """One datamodule for CUB / Dogs / iNat2017 and the toy CUB-format set (``dataset: toy`` writes it first).

    The test split doubles as validation (FGVC practice, §5). ``batch_size`` is per process.
    ``skip_bad_files``: an unreadable image is replaced by the next sample and counted instead of ending the run,
    up to ``max_bad_fraction`` of a pass (``shared.data.bad_files``; in ``predict`` it is skipped).
    """

    def __init__(self, dataset: Literal["cub", "dogs", "inat2017", "toy"] = "toy", root: str = "data/rams_trans_toy",
                 num_classes: int = 8, resize: int = 72, crop: int = 64, autoaugment: bool = False,
                 batch_size: int = 16, eval_batch_size: int | None = None, num_workers: int = 0,
                 toy_num_train: int = 1200, toy_num_test: int = 400, toy_part_frac: float = 0.02,
                 toy_clutter: int = 14, toy_seed: int = 0, predict_dir: str | None = None,
                 skip_bad_files: bool = False, max_bad_fraction: float = 0.001) -> None:
        super().__init__()
        if dataset not in DATASETS:
            raise ValueError(f"data.dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
        self.save_hyperparameters()
        self.train_set = self.test_set = None
        self.test_part_boxes: torch.Tensor | None = None  # toy only: [N, 4] ground truth of the DPPM panels
        self.predict_set: ImageFolderDataset | None = None
        self.class_names: list[str] = []

    def _write_toy(self) -> None:
        h = self.hparams
        write_toy_cub(h.root, h.toy_num_train, h.toy_num_test, h.resize, h.toy_part_frac, h.toy_clutter, h.toy_seed)

    def prepare_data(self) -> None:
        if self.hparams.dataset == "toy":
            self._write_toy()

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        if h.dataset == "toy" and not (Path(h.root) / "toy_args.json").is_file():
            self._write_toy()  # setup without prepare_data (e.g. direct use in a script)
        self.class_names = read_class_names(Path(h.root), h.num_classes)
        if stage == "predict":
            if h.dataset in ("dogs", "inat2017"):   # the names live in the test split's annotation file
                with contextlib.suppress(FileNotFoundError, ValueError):   # predict needs no dataset: keep class_<i>
                    named = DATASETS[h.dataset](h.root, "test").names_by_label
                    self.class_names = [named.get(i, f"class_{i}") for i in range(h.num_classes)]
            self._setup_predict()
            return
        cls = DATASETS[h.dataset]
        self.train_set = cls(h.root, "train", build_transforms(True, h.resize, h.crop, h.autoaugment))
        self.test_set = cls(h.root, "test", build_transforms(False, h.resize, h.crop))
        used = [("train", self.train_set)] if stage in (None, "fit") else []
        for split, ds in [*used, ("test", self.test_set)]:
            require_samples(len(ds), split, ds.source)
            require_labels_in_range(ds.targets, h.num_classes, ds.label_source, ds.label_field, ds.label_base)
        named = {**getattr(self.train_set, "names_by_label", {}), **getattr(self.test_set, "names_by_label", {})}
        if named:      # Stanford Dogs (folder names) and iNat (categories): names from the annotation files
            self.class_names = [named.get(i, f"class_{i}") for i in range(h.num_classes)]
        if h.dataset == "toy":
            size = json.loads((Path(h.root) / "toy_args.json").read_text())["size"]
            self.test_part_boxes = toy_part_boxes(self.test_set, Path(h.root), h.resize, h.crop, size)

    def dataset(self, split: LoaderSplit) -> Dataset:
        return self.predict_set if split == "predict" else self.train_set if split == "train" else self.test_set

    def _setup_predict(self) -> None:
        h = self.hparams
        view = T.Compose([T.Resize((h.resize, h.resize), interpolation=T.InterpolationMode.BILINEAR),
                          T.CenterCrop(h.crop)])                                   # the test geometry
        self.predict_set = predict_folder(h.predict_dir, h.skip_bad_files, view)


def read_class_names(root: Path, num_classes: int) -> list[str]:
    """Class names from the dataset's ``classes.txt`` (CUB layout ``1 001.Black_footed_Albatross``, the toy set
    too); ``class_<i>`` when the dataset has no such file (Stanford Dogs and iNat then name them from their
    annotation files at ``setup``: the breed folders, the ``categories``)."""
    path = root / "classes.txt"
    if not path.is_file():
        return [f"class_{i}" for i in range(num_classes)]
    names = [line.split(maxsplit=1)[-1].split(".", 1)[-1] for line in read_lines(path, "CUB classes.txt")]
    if len(names) != num_classes:
        raise ValueError(f"data.num_classes={num_classes} but {path} lists {len(names)} classes")
    return names
