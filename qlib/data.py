"""The study's data: three sources behind one ``load(cfg)``, a leak-free split, a tensor cache.

Sources (``Config.data``):
- the path of a Roboflow YOLO export (the real data: "Traffic and Road Signs"), read by
  :mod:`qlib.yolo`,
- ``"gtsrb"``: the German Traffic Sign Recognition Benchmark through torchvision,
- ``""`` / ``"synthetic"``: traffic signs drawn by :mod:`qlib.signs`, photographed by
  :mod:`qlib.scenes` (offline default).

Every image is kept as uint8 ``[3, H, W]``; :func:`to_float` normalises a batch for the model.
Decoded images are cached under ``Config.cache_dir`` keyed by a hash of the source, its file
list, the image size and the crop option; the split is recomputed from the cache (it is cheap),
so the ``tracks`` and ``export`` splits share one decode.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import atomic, yolo
from .config import Config, DataError

CACHE_VERSION = 1
MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, so pretrained weights see what they expect
STD = (0.229, 0.224, 0.225)
SPLIT_NAMES = ("train", "val", "test")
FRACTIONS = (0.70, 0.15, 0.15)
SMOKE_PER_CLASS = 30  # three synthetic tracks of ten frames per class
SYNTHETIC_PER_CLASS = 350  # ~10,000 images, the size of the real export


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, 3, H, W]
    labels: torch.Tensor  # int64 [N]
    groups: list  # one group id per image (a GTSRB track, a synthetic track, or the file)
    files: list  # one name per image
    boxes: torch.Tensor | None = None  # YOLO only: [N, 4] original W, H and box w, h (pixels)

    def __len__(self):
        return len(self.labels)

    def subset(self, idx) -> "Split":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return Split(self.images[idx], self.labels[idx], [self.groups[i] for i in idx.tolist()],
                     [self.files[i] for i in idx.tolist()],
                     None if self.boxes is None else self.boxes[idx])


@dataclass
class Splits:
    train: Split
    val: Split
    test: Split
    classes: list
    source: str  # human description of the data (name, version, licence)
    split: str
    info: dict = field(default_factory=dict)

    def __iter__(self):
        return iter((("train", self.train), ("val", self.val), ("test", self.test)))

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N,3,H,W] -> normalised float32 (ImageNet mean/std)."""
    x = images.float().div_(255.0)
    mean = torch.tensor(MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def batches(split: Split, batch_size: int = 256, shuffle: bool = False, seed: int = 0):
    """Yield (normalised float images, labels) batches of an in-memory split."""
    n = len(split)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size]
        yield to_float(split.images[idx]), split.labels[idx]


# --------------------------------------------------------------------------------------
# Source 2: GTSRB through torchvision
# --------------------------------------------------------------------------------------

def _decode_gtsrb(cfg: Config) -> dict:
    import torchvision
    from PIL import Image

    root = Path(cfg.cache_dir) / "gtsrb"
    out = dict(images=[], labels=[], files=[], groups=[], export_split=[])
    for split in ("train", "test"):
        try:
            ds = torchvision.datasets.GTSRB(str(root), split=split, download=True)
        except Exception as e:  # offline: URLError, OSError, RuntimeError from torchvision
            raise DataError(
                f"data='gtsrb': could not download GTSRB ({type(e).__name__}: {e}). Offline, use "
                "the Roboflow YOLO export (QLIB_DATA=<folder>) or the synthetic signs "
                "(data='synthetic').") from None
        for path, label in ds._samples:
            with Image.open(path) as im:
                img = im.convert("RGB").resize((cfg.image_size, cfg.image_size), Image.BILINEAR)
            out["images"].append(np.asarray(img, dtype=np.uint8))
            out["labels"].append(int(label))
            name = Path(path).name
            out["files"].append(name)
            # training file names are TTTTT_FFFFF.ppm inside the class folder
            out["groups"].append(f"{label:05d}_{name.split('_')[0]}" if split == "train" else "file:" + name)
            out["export_split"].append(split)
    out["images"] = torch.from_numpy(np.stack(out["images"])).permute(0, 3, 1, 2).contiguous()
    out["labels"] = torch.tensor(out["labels"], dtype=torch.int64)
    out["classes"] = [f"GTSRB class {i}" for i in range(43)]
    return out


# --------------------------------------------------------------------------------------
# Source 3: synthetic signs
# --------------------------------------------------------------------------------------

def _decode_synthetic(cfg: Config) -> dict:
    from . import scenes, signs

    n = SMOKE_PER_CLASS if cfg.smoke else SYNTHETIC_PER_CLASS
    imgs, labels, groups = scenes.generate(n, size=cfg.image_size, seed=cfg.seed)
    return dict(images=torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(),
                labels=torch.as_tensor(labels, dtype=torch.int64),
                files=[f"{g}_{i:05d}" for i, g in enumerate(groups)], groups=list(groups),
                export_split=None, classes=list(signs.CLASS_NAMES))


# --------------------------------------------------------------------------------------
# The split
# --------------------------------------------------------------------------------------

def _groups_by_class(labels, groups) -> tuple:
    """``members``: group -> its image indices; ``by_class``: class -> its groups, a group
    belonging to the class most of its images carry."""
    labels = [int(v) for v in labels]
    members = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    by_class = defaultdict(list)
    for g, idx in members.items():
        by_class[Counter(labels[i] for i in idx).most_common(1)[0][0]].append(g)
    return members, by_class


def group_split(labels, groups, seed: int, fractions=FRACTIONS) -> list:
    """Assign every group (track) to train/val/test, stratified per class.

    Each group belongs to the class most of its images carry. Within a class the groups are
    shuffled (seeded) and dealt out so each split gets its fraction of the class's images; a
    class with at least three groups gets at least one in every split. Returns a split name
    per image.
    """
    members, by_class = _groups_by_class(labels, groups)
    assign = {}
    rng = np.random.default_rng(seed)
    for c in sorted(by_class):
        gs = sorted(by_class[c])
        rng.shuffle(gs)
        total = sum(len(members[g]) for g in gs)
        # val, then test, take whole groups until they hold their share of the class's images
        # (at least one group each when the class has three); train keeps the rest
        rest = list(gs)
        for name, frac, keep in (("val", fractions[1], 2), ("test", fractions[2], 1)):
            taken = 0
            while len(rest) > keep and len(gs) >= 3 and frac > 0 and (
                    taken == 0 or taken + len(members[rest[0]]) / 2 <= frac * total):
                g = rest.pop(0)
                assign[g] = name
                taken += len(members[g])
        for g in rest:
            assign[g] = "train"
    return [assign[g] for g in groups]


def halves(split: Split, seed: int = 0) -> tuple:
    """Two track-disjoint halves of a split, as sorted index tensors into it, stratified per
    class: within each class the tracks (shuffled, seeded) go one by one to the half holding
    fewer of that class's images (ties: fewer images overall). For experiments that use one
    half of the held-out images and must measure on images of other tracks."""
    members, by_class = _groups_by_class(split.labels.tolist(), split.groups)
    if len(members) < 2:
        raise ValueError(f"split with {len(members)} track(s): expected at least 2 to halve")
    rng = np.random.default_rng(seed)
    out, total = ([], []), [0, 0]
    for c in sorted(by_class):
        gs = sorted(by_class[c])
        rng.shuffle(gs)
        in_class = [0, 0]
        for g in gs:
            h = min((0, 1), key=lambda k: (in_class[k], total[k], k))
            out[h].extend(members[g])
            in_class[h] += len(members[g])
            total[h] += len(members[g])
    return torch.tensor(sorted(out[0]), dtype=torch.long), torch.tensor(sorted(out[1]), dtype=torch.long)


def leakage(splits: Splits) -> dict:
    """How many groups (tracks) each pair of splits shares; 0 everywhere for a fair split."""
    sets = {name: set(s.groups) for name, s in splits}
    return {f"{a}-{b}": len(sets[a] & sets[b]) for a, b in (("train", "val"), ("train", "test"), ("val", "test"))}


# --------------------------------------------------------------------------------------
# load(cfg) and the cache
# --------------------------------------------------------------------------------------

def _cache_key(cfg: Config) -> tuple:
    src = cfg.source
    if src == "yolo":
        root = Path(cfg.data).expanduser().resolve()
        yolo.read_meta(root)  # fail early with a clear message
        ident = {"source": "yolo", "files": yolo.file_list_hash(root), "crop": cfg.crop}
    elif src == "gtsrb":
        ident = {"source": "gtsrb"}
    else:
        ident = {"source": "synthetic", "seed": cfg.seed, "smoke": cfg.smoke}
    ident.update(size=cfg.image_size, version=CACHE_VERSION)
    digest = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return ident, digest


def _decode(cfg: Config) -> dict:
    ident, digest = _cache_key(cfg)
    path = Path(cfg.cache_dir) / f"data-{ident['source']}-{cfg.image_size}-{digest}.pt"
    if path.is_file():
        try:
            blob = torch.load(path, weights_only=False)
            if blob.get("ident") == ident and (ident["source"] != "yolo" or "boxes" in blob):
                return blob
            print(f"cache {path.name} was made for another source; rebuilding it")
        except Exception as e:  # a truncated or foreign file: rebuild, never use it
            print(f"cache {path.name} is unreadable ({type(e).__name__}); rebuilding it")
    if ident["source"] == "yolo":
        blob = yolo.decode(Path(cfg.data).expanduser().resolve(), cfg.image_size, cfg.crop)
    elif ident["source"] == "gtsrb":
        blob = _decode_gtsrb(cfg)
    else:
        blob = _decode_synthetic(cfg)
    blob["ident"] = ident
    atomic.torch_save(blob, path)
    return blob


def load(cfg: Config) -> Splits:
    """Load the configured source and split it (``cfg.split``: 'tracks' or 'export')."""
    if cfg.split == "export" and cfg.source == "synthetic":
        raise DataError("split='export' exists only for a YOLO export (its own folders); "
                        "synthetic signs have only split='tracks'")
    blob = _decode(cfg)
    images, labels, groups = blob["images"], blob["labels"], blob["groups"]
    if cfg.source == "gtsrb":
        # GTSRB's own test set, and a track-grouped val carved out of its train set
        is_train = [s == "train" for s in blob["export_split"]]
        tr_idx = [i for i, t in enumerate(is_train) if t]
        sub = group_split(labels[tr_idx].tolist(), [groups[i] for i in tr_idx], cfg.seed, (0.85, 0.15, 0.0))
        which = ["test"] * len(labels)
        for i, s in zip(tr_idx, sub):
            which[i] = s
    elif cfg.split == "export":
        missing = {"train", "val", "test"} - set(blob["export_split"])
        if missing:
            raise DataError(f"split='export': the export has no {sorted(missing)} folder(s)")
        which = blob["export_split"]
    else:
        which = group_split(labels.tolist(), groups, cfg.seed)
    parts = {}
    for name in SPLIT_NAMES:
        idx = [i for i, w in enumerate(which) if w == name]
        parts[name] = Split(images[idx], labels[idx], [groups[i] for i in idx], [blob["files"][i] for i in idx],
                            blob["boxes"][idx] if blob.get("boxes") is not None else None)
    if cfg.source == "yolo":
        source = yolo.describe(Path(cfg.data).expanduser().resolve())
    elif cfg.source == "gtsrb":
        source = "GTSRB (German Traffic Sign Recognition Benchmark), via torchvision"
    else:
        source = "synthetic traffic signs (qlib.signs)" + (" — smoke mode" if cfg.smoke else "")
    return Splits(parts["train"], parts["val"], parts["test"], list(blob["classes"]), source, cfg.split,
                  info={"image_size": cfg.image_size, "crop": cfg.crop, "seed": cfg.seed})
