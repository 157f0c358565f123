"""The study's data: three sources behind one ``load(cfg)``, a leak-free split, a tensor cache.

Sources (``Config.data``):
- the path of a Roboflow YOLO export (the real data: "Traffic and Road Signs"),
- ``"gtsrb"``: the German Traffic Sign Recognition Benchmark through torchvision,
- ``""`` / ``"synthetic"``: traffic signs drawn by :mod:`qlib.signs` (offline default).

Every image is kept as uint8 ``[3, H, W]``; :func:`to_float` normalises a batch for the model.
Decoded images are cached under ``Config.cache_dir`` keyed by a hash of the source, its file
list, the image size and the crop option; the split is recomputed from the cache (it is cheap),
so the ``tracks`` and ``export`` splits share one decode.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import Config

CACHE_VERSION = 1
MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, so pretrained weights see what they expect
STD = (0.229, 0.224, 0.225)
SPLIT_NAMES = ("train", "val", "test")
FRACTIONS = (0.70, 0.15, 0.15)
BOX_MARGIN = 0.10  # of the box's longer side, on each side
GTSRB_ID = re.compile(r"^(\d{5})_(\d{5})_(\d{5})")
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".ppm")
SMOKE_PER_CLASS = 30  # three synthetic tracks of ten frames per class
SYNTHETIC_PER_CLASS = 350  # ~10,000 images, the size of the real export


class DataError(ValueError):
    """Bad input data: a missing folder, a malformed export, labels out of range."""


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
# Source 1: a Roboflow YOLO export
# --------------------------------------------------------------------------------------

def _export_folders(root: Path) -> dict:
    """Map train/val/test to (images dir, labels dir) in either Roboflow layout."""
    found = {}
    for name in SPLIT_NAMES:
        for alias in ((name, "valid") if name == "val" else (name,)):
            for img, lab in ((root / "images" / alias, root / "labels" / alias),
                             (root / alias / "images", root / alias / "labels")):
                if img.is_dir() and name not in found:
                    found[name] = (img, lab)
    return found


def read_yolo_meta(root) -> tuple:
    """Read and check ``data.yaml``: returns (class names, {split: (images, labels)})."""
    import yaml

    root = Path(root)
    if not root.exists():
        raise DataError(f"data={str(root)!r}: no such folder. Expected the folder of a Roboflow "
                        "YOLO export (with data.yaml), 'gtsrb', or 'synthetic'.")
    if not root.is_dir():
        raise DataError(f"data={str(root)!r}: is a file; expected the folder of a YOLO export")
    meta_path = root / "data.yaml"
    if not meta_path.is_file():
        raise DataError(f"data={str(root)!r}: no data.yaml in this folder; expected a Roboflow "
                        "YOLO export (data.yaml, images/<split>/, labels/<split>/)")
    try:
        meta = yaml.safe_load(meta_path.read_text())
    except yaml.YAMLError as e:
        raise DataError(f"{meta_path}: not valid YAML ({e})") from None
    if not isinstance(meta, dict) or "names" not in meta:
        raise DataError(f"{meta_path}: expected keys 'nc' and 'names'")
    names = meta["names"]
    if isinstance(names, dict):  # newer exports: {0: name, 1: name}
        names = [names[k] for k in sorted(names)]
    nc = meta.get("nc", len(names))
    if not isinstance(names, list) or nc != len(names):
        raise DataError(f"{meta_path}: nc={nc!r} does not match the {len(names)} entries of names")
    folders = _export_folders(root)
    if not folders:
        raise DataError(f"data={str(root)!r}: found no split folder; expected images/train "
                        "(+ labels/train) or train/images (+ train/labels)")
    return [str(n) for n in names], folders


def _read_label(path: Path, nc: int):
    """The largest box of a YOLO label file as (class, cx, cy, w, h), or None if empty."""
    best = None
    for ln, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            cls = int(float(parts[0]))
            cx, cy, w, h = (float(v) for v in parts[1:5])
        except (ValueError, IndexError):
            raise DataError(f"{path}:{ln}: expected 'class cx cy w h', got {line!r}") from None
        if not 0 <= cls < nc:
            raise DataError(f"{path}:{ln}: class id {cls} out of range 0..{nc - 1} (nc={nc})")
        if best is None or w * h > best[3] * best[4]:
            best = (cls, cx, cy, w, h)
    return best


def _crop_resize(path: Path, box, size: int, crop: bool) -> tuple:
    """The image cropped to a square around its box (plus margin), resized: (uint8 HWC, (W, H))."""
    from PIL import Image

    with Image.open(path) as im:
        W, H = im.size
        if crop and box is not None:
            _, cx, cy, w, h = box
            side = max(w * W, h * H) * (1 + 2 * BOX_MARGIN)
            # decode JPEGs at a reduced scale when the crop stays at least 2x the target size
            im.draft("RGB", (max(size * 2 * W / side, 1), max(size * 2 * H / side, 1)))
            s = im.size[0] / W
            x0, y0 = (cx * W - side / 2) * s, (cy * H - side / 2) * s
            im = im.convert("RGB").crop((round(x0), round(y0), round(x0 + side * s), round(y0 + side * s)))
        else:
            im.draft("RGB", (size * 2, size * 2))
            im = im.convert("RGB")
        im = im.resize((size, size), Image.BILINEAR, reducing_gap=2.0)
        return np.asarray(im, dtype=np.uint8), (W, H)


def _decode_yolo(root: Path, size: int, crop: bool) -> dict:
    from PIL import UnidentifiedImageError
    from tqdm.auto import tqdm

    names, folders = read_yolo_meta(root)
    items = []
    for split, (img_dir, lab_dir) in folders.items():
        for p in sorted(img_dir.iterdir()):
            if p.suffix.lower() in IMAGE_EXT:
                items.append((split, p, lab_dir / (p.stem + ".txt")))
    images, labels, files, export_split, bad, unlabelled, boxes = [], [], [], [], [], [], []
    for split, p, lab in tqdm(items, desc=f"decoding {root.name}", unit="img", mininterval=1):
        box = _read_label(lab, len(names)) if lab.is_file() else None
        if box is None:
            unlabelled.append(p.name)
            continue
        try:
            img, (W, H) = _crop_resize(p, box, size, crop)
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            bad.append(f"{p.name} ({type(e).__name__})")
            continue
        images.append(img)
        labels.append(box[0])
        files.append(p.name)
        export_split.append(split)
        boxes.append((W, H, box[3] * W, box[4] * H))
    _report_skipped(bad, "could not be decoded", len(items))
    _report_skipped(unlabelled, "have no label (no or empty .txt)", len(items))
    if not images:
        raise DataError(f"data={str(root)!r}: no labelled, decodable image found")
    return dict(images=torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
                labels=torch.tensor(labels, dtype=torch.int64), files=files,
                groups=[track_of(f) for f in files], export_split=export_split, classes=names,
                # per image: original width, height, and the box's width, height in pixels
                boxes=torch.tensor(boxes, dtype=torch.float32))


def _report_skipped(names: list, what: str, total: int):
    if not names:
        return
    if len(names) > max(10, 0.05 * total):
        raise DataError(f"{len(names)} of {total} images {what}, e.g. {names[:5]}; "
                        "is the export complete?")
    warnings.warn(f"skipped {len(names)} image(s) that {what}: {names}", stacklevel=3)


def track_of(filename: str) -> str:
    """GTSRB track of an export file name ``CCCCC_TTTTT_FFFFF_png...`` -> 'CCCCC_TTTTT';
    a file without a GTSRB id is its own group."""
    m = GTSRB_ID.match(Path(filename).name)
    return f"{m.group(1)}_{m.group(2)}" if m else "file:" + Path(filename).name.split(".rf.")[0]


def _file_list_hash(root: Path) -> str:
    h = hashlib.sha1()
    for _, (img_dir, lab_dir) in sorted(_export_folders(root).items()):
        for d in (img_dir, lab_dir):
            if d.is_dir():
                for p in sorted(d.iterdir()):
                    h.update(f"{p.name}:{p.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


def describe_yolo(root: Path) -> str:
    readme = root / "README.md"
    if readme.is_file() and "Traffic and Road Signs" in readme.read_text():
        return ('Roboflow Universe "Traffic and Road Signs" (usmanchaudhry622), version 1, '
                "CC BY 4.0, YOLO export; images derived from GTSRB")
    return f"Roboflow YOLO export '{root.name}'"


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
    from . import signs

    n = SMOKE_PER_CLASS if cfg.smoke else SYNTHETIC_PER_CLASS
    imgs, labels, groups = signs.generate(n, size=cfg.image_size, seed=cfg.seed)
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
        read_yolo_meta(root)  # fail early with a clear message
        ident = {"source": "yolo", "files": _file_list_hash(root), "crop": cfg.crop}
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
        blob = _decode_yolo(Path(cfg.data).expanduser().resolve(), cfg.image_size, cfg.crop)
    elif ident["source"] == "gtsrb":
        blob = _decode_gtsrb(cfg)
    else:
        blob = _decode_synthetic(cfg)
    blob["ident"] = ident
    atomic_save(blob, path)
    return blob


def atomic_save(obj, path) -> None:
    """torch.save to a temporary file in the same folder, then rename: never a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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
        source = describe_yolo(Path(cfg.data).expanduser().resolve())
    elif cfg.source == "gtsrb":
        source = "GTSRB (German Traffic Sign Recognition Benchmark), via torchvision"
    else:
        source = "synthetic traffic signs (qlib.signs)" + (" — smoke mode" if cfg.smoke else "")
    return Splits(parts["train"], parts["val"], parts["test"], list(blob["classes"]), source, cfg.split,
                  info={"image_size": cfg.image_size, "crop": cfg.crop, "seed": cfg.seed})
