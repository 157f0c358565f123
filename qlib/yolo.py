"""The study's real data: a Roboflow YOLO export ("Traffic and Road Signs", derived from GTSRB).

``read_meta`` checks the export (``data.yaml``, its split folders); ``decode`` reads every
labelled image, crops it to a square around its largest box (plus a margin) and resizes it,
keeping the box's size; ``track_of`` groups the images by the GTSRB track in their file names
(what ``data``'s leak-free split needs); ``file_list_hash`` identifies the export for the cache.
"""
from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from .config import DataError

EXPORT_SPLITS = ("train", "val", "test")  # the export's folders ("valid" is read as val)
BOX_MARGIN = 0.10  # of the box's longer side, on each side
GTSRB_ID = re.compile(r"^(\d{5})_(\d{5})_(\d{5})")
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".ppm")


def _export_folders(root: Path) -> dict:
    """Map train/val/test to (images dir, labels dir) in either Roboflow layout."""
    found = {}
    for name in EXPORT_SPLITS:
        for alias in ((name, "valid") if name == "val" else (name,)):
            for img, lab in ((root / "images" / alias, root / "labels" / alias),
                             (root / alias / "images", root / alias / "labels")):
                if img.is_dir() and name not in found:
                    found[name] = (img, lab)
    return found


def read_meta(root) -> tuple:
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


def decode(root: Path, size: int, crop: bool) -> dict:
    from PIL import UnidentifiedImageError
    from tqdm.auto import tqdm

    names, folders = read_meta(root)
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


def file_list_hash(root: Path) -> str:
    h = hashlib.sha1()
    for _, (img_dir, lab_dir) in sorted(_export_folders(root).items()):
        for d in (img_dir, lab_dir):
            if d.is_dir():
                for p in sorted(d.iterdir()):
                    h.update(f"{p.name}:{p.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


def describe(root: Path) -> str:
    readme = root / "README.md"
    if readme.is_file() and "Traffic and Road Signs" in readme.read_text():
        return ('Roboflow Universe "Traffic and Road Signs" (usmanchaudhry622), version 1, '
                "CC BY 4.0, YOLO export; images derived from GTSRB")
    return f"Roboflow YOLO export '{root.name}'"
