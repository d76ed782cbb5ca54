"""Datasets of DiD (§7): MS-COCO 2014, PASCAL VOC 2007/2012, optional NUS-WIDE, and the toy set.

Targets are float vectors ``[C]`` with 1 positive, 0 negative, -1 difficult (VOC objects that are only
marked ``difficult``), the convention of ``shared.metrics``. The toy dataset is written in the COCO
``instances_*.json`` format and read back by :class:`COCO2014Dataset`, so one code path serves both.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from shared.data import IMAGENET_MEAN, IMAGENET_STD, SHAPES, load_rgb, read_lines, render_dataset, sample_scene
from shared.data.checks import require_num_classes, require_samples
from shared.data.datamodule import Split, SplitDataModule, predict_folder
from shared.data.images import read_utf8, require_dir, require_file
from shared.predict import ImageFolderDataset

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
COCO_LAYOUT = "<root>/annotations/instances_{train,val}2014.json and images in <root>/{train,val}2014/"
VOC_LAYOUT = "<root>/VOCdevkit/VOC20xx/{Annotations/*.xml, ImageSets/Main/{trainval,test}.txt, JPEGImages/}"
# Toy categories: the ten toy-world shapes under non-contiguous COCO-style ids (class order = sorted ids).
TOY_CATEGORY_IDS: dict[str, int] = dict(zip(SHAPES, (11, 2, 35, 4, 7, 16, 1, 90, 27, 5), strict=True))
# Colour groups: two categories share each colour, so colour names the pair and only the (small) shape tells
# the two apart; local views that zoom on an object should help exactly there.
TOY_COLORS: dict[str, str] = dict(zip(SHAPES, ("red", "red", "yellow", "yellow", "blue", "blue", "green", "green",
                                               "purple", "purple"), strict=True))


# ----------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------
class MultiLabelImages(Dataset):
    """``(image tensor, target [C] float in {1, 0, -1})`` pairs from a list of paths and targets."""

    def __init__(self, paths: Sequence[Path], targets: torch.Tensor, class_names: Sequence[str],
                 transform: Callable | None = None, layout: str | None = None, source: str | Path = "",
                 class_source: str | Path = "") -> None:
        if len(paths) != targets.shape[0]:
            raise ValueError(f"{source or 'MultiLabelImages'}: {len(paths)} images but {targets.shape[0]} targets")
        if targets.ndim != 2 or targets.shape[1] != len(class_names):
            raise ValueError(f"{source or 'MultiLabelImages'}: targets of shape {tuple(targets.shape)}, expected "
                             f"[N, {len(class_names)}] (one column per class of {class_source or 'the class list'})")
        self.source, self.class_source = source, class_source  # the split's file and where the classes come from
        self.paths = list(paths)
        self.targets = targets.float()
        self.class_names = list(class_names)
        self.transform = transform
        self.layout = layout

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = load_rgb(self.paths[i], self.layout)
        x = self.transform(img) if self.transform is not None else T.functional.to_tensor(img)
        return x, self.targets[i]


def _field(obj: dict, key: str, where: str, path: Path):
    if not isinstance(obj, dict) or key not in obj:
        raise ValueError(f"{path}: missing field {where}{key!r} (COCO instances format expected)")
    return obj[key]


def read_coco_instances(path: str | Path) -> tuple[list[str], list[str], torch.Tensor]:
    """``instances_*.json`` -> (class names in sorted category-id order, file names, targets [N, C]).

    Labels are the set of ``category_id`` of each image's annotations (§7.1); images without any
    annotation are dropped, as DiD / ML-GCN do.
    """
    path = require_file(path, COCO_LAYOUT, "COCO annotation file")
    try:
        data = json.loads(read_utf8(path, "COCO annotation file", COCO_LAYOUT))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    cats = _field(data, "categories", "", path)
    images = _field(data, "images", "", path)
    anns = _field(data, "annotations", "", path)
    cat_ids = sorted(int(_field(c, "id", "categories[].", path)) for c in cats)
    names_by_id = {int(c["id"]): str(_field(c, "name", "categories[].", path)) for c in cats}
    index = {cid: i for i, cid in enumerate(cat_ids)}
    files = {int(_field(im, "id", "images[].", path)): str(_field(im, "file_name", "images[].", path))
             for im in images}
    labels: dict[int, set[int]] = {}
    for k, a in enumerate(anns):
        image_id = int(_field(a, "image_id", "annotations[].", path))
        cid = int(_field(a, "category_id", "annotations[].", path))
        if cid not in index:
            raise ValueError(f"{path}: annotations[{k}].category_id={cid} is not among the categories' ids")
        if image_id not in files:
            raise ValueError(f"{path}: annotations[{k}].image_id={image_id} is not among the images' ids")
        labels.setdefault(image_id, set()).add(index[cid])
    kept = sorted(labels)
    targets = torch.zeros(len(kept), len(cat_ids))
    for row, image_id in enumerate(kept):
        targets[row, list(labels[image_id])] = 1.0
    return [names_by_id[c] for c in cat_ids], [files[i] for i in kept], targets


class COCO2014Dataset(MultiLabelImages):
    """MS-COCO 2014 multi-label: ``<root>/annotations/instances_{split}2014.json``, ``<root>/{split}2014/``."""

    def __init__(self, root: str | Path, split: str = "train", transform: Callable | None = None) -> None:
        root = Path(root)
        ann = root / "annotations" / f"instances_{split}2014.json"
        names, files, targets = read_coco_instances(ann)
        image_dir = require_dir(root / f"{split}2014", COCO_LAYOUT, "COCO image folder")
        super().__init__([image_dir / f for f in files], targets, names, transform, COCO_LAYOUT,
                         f"{ann} (images with annotations)", f"{ann} 'categories'")


def read_voc_annotation(path: Path, class_index: dict[str, int]) -> torch.Tensor:
    """One VOC XML -> target [C]: 1 if a non-difficult object of the class exists, -1 if only difficult ones."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{path}: malformed VOC annotation XML ({e})") from e
    target = torch.zeros(len(class_index))
    objects = root.findall("object")
    for k, obj in enumerate(objects):
        name = obj.findtext("name")
        if name is None:
            raise ValueError(f"{path}: <object> #{k} has no <name> field")
        name = name.strip()
        if name not in class_index:
            raise ValueError(f"{path}: <object> #{k} <name>{name}</name> is not a VOC class {VOC_CLASSES}")
        difficult = (obj.findtext("difficult") or "0").strip()
        if difficult not in ("0", "1"):
            raise ValueError(f"{path}: <object> #{k} <difficult>{difficult}</difficult>, expected 0 or 1")
        c = class_index[name]
        if difficult == "0":
            target[c] = 1.0
        elif target[c] == 0:
            target[c] = -1.0
    return target


class VOCDataset(MultiLabelImages):
    """PASCAL VOC 2007 / 2012 from ``VOCdevkit/VOC{year}``: ``ImageSets/Main/{split}.txt`` + ``Annotations``.

    ``root`` is the folder holding ``VOCdevkit`` (or ``VOCdevkit`` itself, or ``VOC{year}``). Difficult-only
    classes get target -1 (ignored by the AP, treated as positive by the official training loss).
    """

    def __init__(self, root: str | Path, year: int | str = 2007, split: str = "trainval",
                 transform: Callable | None = None) -> None:
        root = Path(root)
        base = next((p for p in (root / "VOCdevkit" / f"VOC{year}", root / f"VOC{year}", root)
                     if (p / "ImageSets").is_dir()), root / "VOCdevkit" / f"VOC{year}")
        require_dir(base, VOC_LAYOUT, f"VOC{year} folder")
        ids = read_lines(base / "ImageSets" / "Main" / f"{split}.txt", f"VOC{year} {split} list", VOC_LAYOUT)
        index = {c: i for i, c in enumerate(VOC_CLASSES)}
        targets = torch.stack([read_voc_annotation(require_file(base / "Annotations" / f"{i.split()[0]}.xml",
                                                                VOC_LAYOUT, "VOC annotation"), index)
                               for i in ids]) if ids else torch.zeros(0, len(VOC_CLASSES))
        paths = [base / "JPEGImages" / f"{i.split()[0]}.jpg" for i in ids]
        super().__init__(paths, targets, VOC_CLASSES, transform, VOC_LAYOUT, base / "ImageSets" / "Main" /
                         f"{split}.txt", "the fixed VOC class list")


class NUSWIDEDataset(MultiLabelImages):
    """NUS-WIDE from a file list (optional; DiD does not report it).

    ``list_file``: one image a line, ``<path relative to root> <C values in {0, 1}>`` separated by spaces or
    tabs; ``classes_file``: the C concept names, one a line.
    """

    def __init__(self, root: str | Path, list_file: str | Path, classes_file: str | Path,
                 transform: Callable | None = None) -> None:
        layout = "list lines '<relative image path> <C 0/1 values>' and a classes file with one name a line"
        names = read_lines(classes_file, "NUS-WIDE classes file", layout)
        if not names:
            raise ValueError(f"{classes_file}: no class names, expected one concept name a line")
        paths, rows = [], []
        for k, line in enumerate(read_lines(list_file, "NUS-WIDE list", layout)):
            parts = line.split()
            if len(parts) != len(names) + 1 or any(v not in ("0", "1") for v in parts[1:]):
                raise ValueError(f"{list_file}: line {k + 1} should be '<path> {len(names)} values in {{0, 1}}', "
                                 f"got {len(parts) - 1} fields after the path")
            paths.append(Path(root) / parts[0])
            rows.append([float(v) for v in parts[1:]])
        super().__init__(paths, torch.tensor(rows).view(-1, len(names)), names, transform, layout, list_file,
                         classes_file)


# ----------------------------------------------------------------------------------------------------------
# Transforms (§6)
# ----------------------------------------------------------------------------------------------------------
class MultiScaleCrop:
    """ML-GCN / TSN multi-scale crop: side = base x s (s in ``scales``), width/height scale indices at most
    ``max_distort`` apart, offset from 13 fixed positions, resized to ``size`` (bilinear)."""

    def __init__(self, size: int, scales: Sequence[float] = (1.0, 0.875, 0.75, 0.66, 0.5), max_distort: int = 2
                 ) -> None:
        self.size, self.scales, self.max_distort = size, tuple(scales), max_distort

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        sides = [int(min(w, h) * s) for s in self.scales]
        sides = [self.size if abs(s - self.size) < 3 else s for s in sides]   # snap near-size crops
        pairs = [(cw, ch) for i, ch in enumerate(sides) for j, cw in enumerate(sides)
                 if abs(i - j) <= self.max_distort]
        cw, ch = pairs[int(torch.randint(len(pairs), ()))]
        sw, sh = (w - cw) // 4, (h - ch) // 4
        offsets = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0),
                   (1, 1), (3, 1), (1, 3), (3, 3)]
        ox, oy = offsets[int(torch.randint(len(offsets), ()))]
        x0, y0 = ox * sw, oy * sh
        return img.crop((x0, y0, x0 + cw, y0 + ch)).resize((self.size, self.size), Image.Resampling.BILINEAR)


def build_transform(img_size: int, train: bool, train_resize: int | None = None,
                    scales: Sequence[float] = (1.0, 0.875, 0.75, 0.66, 0.5), max_distort: int = 2,
                    hflip: bool = True) -> T.Compose:
    """Train: resize to ``train_resize`` (default 8/7 of the input: 512 for 448) -> MultiScaleCrop -> flip.
    Test: resize to the input size. Both end with ImageNet normalisation (the official loader's)."""
    norm = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if not train:
        return T.Compose([T.Resize((img_size, img_size)), *norm])
    resize = train_resize or round(img_size * 512 / 448)
    steps = [T.Resize((resize, resize)), MultiScaleCrop(img_size, scales, max_distort)]
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose([*steps, *norm])


# ----------------------------------------------------------------------------------------------------------
# Toy dataset writer (COCO instances format)
# ----------------------------------------------------------------------------------------------------------
def toy_scenes(n: int, seed: int, size: int, object_frac: tuple[float, float], n_objects: tuple[int, int],
               clutter: int, empty_every: int, category_colors: bool = True) -> list:
    rng = np.random.default_rng(seed)
    lo, hi = object_frac
    scenes = [sample_scene(rng, size, 0 if empty_every and i % empty_every == empty_every - 1 else n_objects,
                         object_size=(lo * size, hi * size), part_prob=0.0, clutter=clutter, unique_kinds=True,
                         max_overlap=0.05, noise=4.0) for i in range(n)]
    if category_colors:  # clutter still uses the whole palette
        scenes = [replace(sc, objects=tuple(replace(o, color=TOY_COLORS[o.kind]) for o in sc.objects))
                  for sc in scenes]
    return scenes


def val_instances(ds: MultiLabelImages, ann_file: str | Path, img_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every instance of the images of ``ds`` in its transformed input's pixels (a resize to ``img_size``).

    Returns ``(boxes [M, K, 4] float64 (x0, y0, x1, y1) continuous pixel edges, exclusive end; classes [M, K]
    long class index in sorted-category-id order, -1 = padding)``, rows in ``ds`` order (matched by file name).
    """
    ann_file = Path(ann_file)
    data = json.loads(ann_file.read_text(encoding="utf-8"))
    index = {cid: i for i, cid in enumerate(sorted(int(c["id"]) for c in data["categories"]))}
    if len(index) != ds.num_classes:
        raise ValueError(f"{ann_file}: {len(index)} categories but the dataset has {ds.num_classes} classes")
    by_file = {im["file_name"]: im for im in data["images"]}
    per_image: dict[int, list[tuple[int, list[float]]]] = {}
    for a in data["annotations"]:
        per_image.setdefault(int(a["image_id"]), []).append((index[int(a["category_id"])], a["bbox"]))
    rows = []
    for path, target in zip(ds.paths, ds.targets, strict=True):
        im = by_file[path.name]
        w, h = (im["width"], im["height"]) if "width" in im and "height" in im else load_rgb(path, COCO_LAYOUT).size
        sx, sy = img_size / w, img_size / h
        inst = per_image.get(int(im["id"]), [])
        if {c for c, _ in inst} != set((target > 0).nonzero().flatten().tolist()):
            raise ValueError(f"{ann_file}: the instances of {path.name} do not match its loader target")
        rows.append([(c, (x * sx, y * sy, (x + bw) * sx, (y + bh) * sy)) for c, (x, y, bw, bh) in inst])
    k = max((len(r) for r in rows), default=0)
    boxes = torch.zeros(len(rows), k, 4, dtype=torch.float64)
    classes = torch.full((len(rows), k), -1, dtype=torch.long)
    for m, r in enumerate(rows):
        for j, (c, b) in enumerate(r):
            classes[m, j] = c
            boxes[m, j] = torch.tensor(b, dtype=torch.float64)
    return boxes, classes


def write_toy_coco(root: str | Path, n_train: int = 2048, n_val: int = 512, size: int = 64, seed: int = 0,
                   object_frac: tuple[float, float] = (0.16, 0.26), n_objects: tuple[int, int] = (1, 4),
                   clutter: int = 14, empty_every: int = 64, category_colors: bool = True) -> Path:
    """Write the toy multi-label set: scenes of 1-4 small shapes (10 categories) among clutter.

    Layout = COCO 2014: ``annotations/instances_{train,val}2014.json`` + ``{train,val}2014/*.png``; every
    ``empty_every``-th scene has no object (dropped by the loader, like COCO's unlabelled images). Skips the
    work when ``toy_meta.json`` says the same dataset is already there.
    """
    root = Path(root)
    meta = dict(n_train=n_train, n_val=n_val, size=size, seed=seed, object_frac=list(object_frac),
                n_objects=list(n_objects), clutter=clutter, empty_every=empty_every,
                category_colors=category_colors, version=1)
    meta_file = root / "toy_meta.json"
    if meta_file.is_file() and json.loads(meta_file.read_text()) == meta:
        return root
    categories = [{"id": cid, "name": name, "supercategory": "shape"} for name, cid in TOY_CATEGORY_IDS.items()]
    for split, n, split_seed in (("train", n_train, seed), ("val", n_val, seed + 10_000)):
        scenes = toy_scenes(n, split_seed, size, object_frac, n_objects, clutter, empty_every, category_colors)
        name = lambda i, _s, split=split: f"COCO_{split}2014_{i:012d}.png"
        render_dataset(scenes, root / f"{split}2014", name)
        images, anns = [], []
        for i, scene in enumerate(scenes):
            images.append({"id": i, "file_name": name(i, scene), "width": size, "height": size})
            for obj, (x0, y0, x1, y1) in zip(scene.objects, scene.boxes(), strict=True):
                anns.append({"id": len(anns) + 1, "image_id": i, "category_id": TOY_CATEGORY_IDS[obj.kind],
                             "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}2014.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": categories}))
    meta_file.write_text(json.dumps(meta))
    return root


# ----------------------------------------------------------------------------------------------------------
# DataModule
# ----------------------------------------------------------------------------------------------------------
DatasetName = Literal["toy", "coco2014", "voc2007", "voc2012", "nuswide"]
DEFAULT_SPLITS = {"toy": ("train", "val"), "coco2014": ("train", "val"), "voc2007": ("trainval", "test"),
                  "voc2012": ("train", "val"), "nuswide": ("train", "test")}


class DiDData(SplitDataModule):
    """Train / validation data for DiD on any of the supported datasets (toy by default).

    ``num_classes`` must match the dataset (checked in ``setup``): configs interpolate it into the model.
    VOC 2012 test labels are withheld (evaluation server), so its default validation split is ``val``.
    ``skip_bad_files``: an unreadable image is replaced by the next sample and counted instead of ending the run,
    up to ``max_bad_fraction`` of a pass (``shared.data.bad_files``; in ``predict`` it is skipped).
    """

    def __init__(self, dataset: DatasetName = "toy", root: str = "data/did/toy", num_classes: int = 10,
                 img_size: int = 448, batch_size: int = 32, eval_batch_size: int | None = None, num_workers: int = 4,
                 train_split: str | None = None, val_split: str | None = None, train_resize: int | None = None,
                 scales: list[float] | None = None, max_distort: int = 2, hflip: bool = True,
                 toy_train: int = 2048, toy_val: int = 512, toy_seed: int = 0,
                 toy_object_frac: tuple[float, float] = (0.16, 0.26), nus_train_list: str | None = None,
                 nus_val_list: str | None = None, nus_classes: str | None = None, predict_dir: str | None = None,
                 skip_bad_files: bool = False, max_bad_fraction: float = 0.001,
                 predict_threshold: float = 0.5) -> None:
        super().__init__()
        if dataset not in DEFAULT_SPLITS:
            raise ValueError(f"data.dataset must be one of {tuple(DEFAULT_SPLITS)}, got {dataset!r}")
        self.save_hyperparameters()
        self.train_set: MultiLabelImages | None = None
        self.val_set: MultiLabelImages | None = None
        self.val_instance_boxes: tuple[torch.Tensor, torch.Tensor] | None = None  # toy: (boxes, classes)
        self.predict_set: ImageFolderDataset | None = None

    @property
    def class_names(self) -> list[str]:
        ds = self.val_set or self.train_set
        return ds.class_names if ds is not None else [str(i) for i in range(self.hparams.num_classes)]

    def prepare_data(self) -> None:
        hp = self.hparams
        if hp.dataset == "toy":
            write_toy_coco(hp.root, hp.toy_train, hp.toy_val, hp.img_size, hp.toy_seed,
                           tuple(hp.toy_object_frac))

    def _dataset(self, split: str, train: bool) -> MultiLabelImages:
        hp = self.hparams
        tf = build_transform(hp.img_size, train, hp.train_resize, hp.scales or (1.0, 0.875, 0.75, 0.66, 0.5),
                             hp.max_distort, hp.hflip)
        if hp.dataset in ("toy", "coco2014"):
            return COCO2014Dataset(hp.root, split, tf)
        if hp.dataset in ("voc2007", "voc2012"):
            return VOCDataset(hp.root, hp.dataset[3:], split, tf)
        lst = hp.nus_train_list if train else hp.nus_val_list
        if lst is None or hp.nus_classes is None:
            raise ValueError("data.nus_train_list / data.nus_val_list and data.nus_classes are needed for nuswide")
        return NUSWIDEDataset(hp.root, lst, hp.nus_classes, tf)

    def setup(self, stage: str) -> None:
        train_split, val_split = DEFAULT_SPLITS[self.hparams.dataset]
        train_split = self.hparams.train_split or train_split
        val_split = self.hparams.val_split or val_split
        if stage == "fit" and self.train_set is None:
            self.train_set = self._dataset(train_split, train=True)
        if self.val_set is None:
            self.val_set = self._dataset(val_split, train=False)
            if self.hparams.dataset == "toy" and stage != "predict":   # the instances score validation only
                ann = Path(self.hparams.root) / "annotations" / f"instances_{val_split}2014.json"
                self.val_instance_boxes = val_instances(self.val_set, ann, self.hparams.img_size)
        for split, ds in ((train_split, self.train_set), (val_split, self.val_set)):
            if ds is None:
                continue
            require_num_classes(ds.num_classes, self.hparams.num_classes, ds.class_source, "classes")
            if stage != "predict":  # predict reads only the class names of the validation set
                require_samples(len(ds), split, ds.source)
        if stage == "predict":  # the validation set above gave the class names (COCO categories, VOC names)
            hp = self.hparams
            self.predict_set = predict_folder(hp.predict_dir, hp.skip_bad_files,
                                              T.Resize((hp.img_size, hp.img_size)))  # the test geometry

    def dataset(self, split: Split) -> Dataset:
        return {"train": self.train_set, "predict": self.predict_set}.get(split, self.val_set)
