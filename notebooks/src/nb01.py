import sys; import os; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbbuild import md, code, params, write

cells = [
md(r"""
# 1. The data: traffic signs, and a split that does not leak

The study classifies 29 kinds of traffic and road signs. Its real data is the Roboflow Universe
data set *"Traffic and Road Signs"* (version 1, CC BY 4.0), exported in YOLO format: 10,000
photos at 416x416 with one labelled box each. Almost all of them are frames of the German
Traffic Sign Recognition Benchmark (GTSRB), whose file names keep GTSRB's identity of each
photo: `CCCCC_TTTTT_FFFFF` — class, **track**, frame. A track is a series of ~30 photos of one
physical sign taken seconds apart from a moving car: near-duplicates of each other.

This chapter loads the data, shows it, and measures the one flaw that decides how much the
seed paper's accuracy means: whether the same track appears in the training split and in the
test split.

`qlib.data.load(cfg)` reads one of three sources behind one interface:

1. the path of a Roboflow YOLO export (`QLIB_DATA=<folder>`, the real data of this book);
   each image is cropped to its labelled box with a 10% margin and resized;
2. GTSRB itself through `torchvision` (`data="gtsrb"`, needs internet once);
3. synthetic traffic signs drawn by `qlib.signs` (the offline default, and CI's smoke data).
"""),
params("""
# Parameters (papermill). None: take QLIB_* environment variables, then the defaults.
data = None        # path of a YOLO export, "gtsrb", or "synthetic"
image_size = None  # pixels (default 64)
split = None       # "tracks" (default) or "export"
seed = None
smoke = None
"""),
code("""
import warnings
import numpy as np
import pandas as pd
import torch
from IPython.display import display, Markdown
from qlib import Config, data as qdata, plots, plots_data

plots.style()
cfg = Config.from_env(data=data, image_size=image_size, split=split, seed=seed, smoke=smoke)
splits = qdata.load(cfg)
plots.header(cfg, splits);
"""),
md("""
## What is in it

Images per split, and how many groups (tracks) they come from. In the default `tracks` split
every track lies in exactly one split: the model is always evaluated on physical signs it has
never seen.
"""),
code("""
counts = pd.DataFrame([{"split": name, "images": len(s), "tracks (groups)": len(set(s.groups)),
                        "classes present": int((torch.bincount(s.labels, minlength=splits.num_classes) > 0).sum())}
                       for name, s in splits]).set_index("split")
counts.loc["total"] = counts.sum(numeric_only=True)
counts.loc["total", "classes present"] = splits.num_classes
counts
"""),
md("""
## A gallery: one row per class

Random training images of each class, after cropping to the labelled box and resizing to the
study's input size. Note the classes that differ only in a mirror image (left/right curves,
keep left/right, turn left/right): augmentation must not flip images.
"""),
code("""
fig = plots_data.gallery(splits.train, splits.classes, per_class=10, seed=cfg.seed)
"""),
md("""
## Class balance

The classes are not balanced: some GTSRB classes have many more tracks than others. A few
photos of the export are not GTSRB frames: their file names carry no track, so each is a group
(a "track") of its own; with the export, the text under the figure counts them. The split is stratified per
class, so every class appears in train, val and test — but it deals out whole tracks, so a class
with few tracks cannot get exactly 70% of its images in train.
"""),
code("""
fig = plots_data.class_distribution(splits)
labels_all = torch.cat([s.labels for _, s in splits]).tolist()
groups_all = [g for _, s in splits for g in s.groups]
n_class = np.bincount(labels_all, minlength=splits.num_classes)
share = np.bincount(splits.train.labels.numpy(), minlength=splits.num_classes) / np.maximum(n_class, 1)
tracks_of = [len({g for g, y in zip(groups_all, labels_all) if y == c}) for c in range(splits.num_classes)]
far = sorted(range(splits.num_classes), key=lambda c: -abs(share[c] - 0.70))[:3]
text = (f"Train's share of each class's images runs from {share.min():.0%} to {share.max():.0%}; furthest from 70%: "
        + ", ".join(f"`{splits.classes[c]}` {share[c]:.0%} ({n_class[c]} images in {tracks_of[c]} "
                    f"track{'s' if tracks_of[c] != 1 else ''})" for c in far) + ".")
if cfg.source == "yolo":  # qlib.yolo.track_of: a file name without a GTSRB id is its own group, "file:<name>"
    single = np.bincount([y for g, y in zip(groups_all, labels_all) if g.startswith("file:")],
                         minlength=splits.num_classes)
    many = [c for c in np.argsort(-single, kind="stable") if single[c] > 1]
    ones = int((single == 1).sum())
    parts = [f"{single[c]} of {n_class[c]} in `{splits.classes[c]}`" for c in many]
    if ones:
        parts.append(f"one in each of {ones} other class{'es' if ones != 1 else ''}" if many else
                     f"one in each of {ones} class{'es' if ones != 1 else ''}")
    text += (f" {single.sum()} images are single photos not from GTSRB (no track id in the file name): "
             + (", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]) + "."
             if single.sum() else " Every image of this export is a GTSRB frame with a track id.")
display(Markdown(text))
"""),
md("""
## Image and box statistics

For a YOLO export: the size of the original photos and of the labelled boxes (in pixels of the
original). The crop keeps the sign and a 10% margin, so the model sees the sign at roughly the
same scale whatever its size in the photo. For the other sources: pixel statistics per class.
"""),
code("""
import matplotlib.pyplot as plt
allb = [s.boxes for _, s in splits if s.boxes is not None]
if allb:
    b = torch.cat(allb).numpy()
    side = np.maximum(b[:, 2], b[:, 3])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3))
    a1.hist(side, bins=40, color=plots.PALETTE["rtn"])
    a1.set_xlabel("box side (pixels of the original photo)"); a1.set_ylabel("images")
    a1.axvline(cfg.image_size, color="k", ls="--", label=f"model input {cfg.image_size}px"); a1.legend()
    a2.hist(b[:, 2] / np.maximum(b[:, 3], 1), bins=40, color=plots.PALETTE["awq"])
    a2.set_xlabel("box aspect ratio (w / h)")
    sizes = sorted(set(map(tuple, b[:, :2].astype(int).tolist())))
    fig.suptitle(f"Original photo size{'s' if len(sizes) > 1 else ''} (pixels): "
                 + ", ".join(f"{w}x{h}" for w, h in sizes[:3])
                 + (f" and {len(sizes) - 3} other{'s' if len(sizes) > 4 else ''}" if len(sizes) > 3 else ""))
    fig.tight_layout()
    display(Markdown(f"Box side: median {np.median(side):.0f} px, 5%–95% {np.percentile(side, 5):.0f}–"
                     f"{np.percentile(side, 95):.0f} px; {np.mean(side < cfg.image_size) * 100:.1f}% of boxes are "
                     f"smaller than the {cfg.image_size}px input (upsampled)."))
else:
    x = splits.train.images.float() / 255
    stats = pd.DataFrame({"class": splits.classes,
                          "mean": [x[splits.train.labels == c].mean().item() for c in range(splits.num_classes)],
                          "std": [x[splits.train.labels == c].std().item() for c in range(splits.num_classes)]})
    display(stats.round(3).T)
"""),
md(r"""
## The leakage finding

The export's own folders were made by shuffling *images*, not tracks. A track's ~30 frames were
dealt out at random, so nearly every track of the val and test folders also has frames in the
train folder: a model that memorises the training frames "recognises" the test frames without
generalising at all. The seed paper's 99.85% was measured on that split.

`qlib.data.leakage(splits)` counts the tracks that two splits share. The `tracks` split (the
default of this book) regroups the whole data set by track and deals whole tracks out per
class, aiming at 70/15/15 of each class's images (classes with few tracks miss that, as the class
balance above shows), so it shares none.
"""),
code("""
rows = []
schemes = {"tracks": splits}
if cfg.source == "yolo":
    schemes["export (seed paper)"] = qdata.load(Config.from_env(data=data, image_size=image_size, split="export",
                                                                 seed=seed, smoke=smoke))
for scheme, s in schemes.items():
    for pair, n in qdata.leakage(s).items():
        rows.append({"scheme": scheme, "pair": pair, "shared": n})
leak = pd.DataFrame(rows)
fig = plots_data.leakage_bars(leak)
display(leak.pivot(index="scheme", columns="pair", values="shared"))
"""),
code("""
if "export (seed paper)" in schemes:
    ex = schemes["export (seed paper)"]
    train_tracks = set(ex.train.groups)
    seen = np.mean([g in train_tracks for g in ex.test.groups]) * 100
    display(Markdown(f"In the export's own split, **{seen:.1f}%** of the test images belong to a track that "
                     f"also has frames in train ({len(set(ex.test.groups) & train_tracks)} of "
                     f"{len(set(ex.test.groups))} test tracks). Chapter 2 measures what that does to accuracy."))
else:
    display(Markdown("This run uses a source without an export split; with the real export "
                     "(`QLIB_DATA=<folder>`) this cell compares both splits."))
"""),
md("""
## The synthetic signs

Without internet or the export, `qlib.signs` draws the same 29 classes with Pillow — shape,
colours, border and a pictogram or text per class — and `qlib.scenes` randomises every image: perspective
and rotation, scale and position, background clutter, lighting, blur, noise and partial
occlusion. Images come in tracks of one sign instance, like GTSRB, so the same track split
applies. Clean designs first, then the generator's variations of one class:
"""),
code("""
from qlib import scenes, signs
clean = [signs.render_clean(c, size=64) for c in range(len(signs.CLASS_NAMES))]
fig = plots_data.image_grid(clean, titles=[f"{c}" for c in range(len(clean))], ncols=10, size=0.9,
                            title="The 29 synthetic sign designs (class index)")
var = scenes.variations(21, n=16, size=64, seed=cfg.seed)
fig = plots_data.image_grid(list(var), ncols=8, title=f"Variations of class 21 ({signs.CLASS_NAMES[21]})")
"""),
md("""
## What must hold

These assertions run on every execution of this chapter (and in CI on the smoke data). Train's
overall share is checked against 70% only when every class has at least 10 training tracks:
with fewer, whole tracks cannot hit it.
"""),
code("""
assert qdata.leakage(splits) == {"train-val": 0, "train-test": 0, "val-test": 0}, qdata.leakage(splits)
for name, s in splits:
    present = torch.bincount(s.labels, minlength=splits.num_classes) > 0
    assert bool(present.all()), f"{name} lacks classes {(~present).nonzero().flatten().tolist()}"
n = sum(len(s) for _, s in splits)
groups_per_class = min(len({g for g, y in zip(s.groups, s.labels.tolist()) if y == c})
                       for c in range(splits.num_classes) for _, s in [("train", splits.train)])
train_share = len(splits.train) / n
if groups_per_class >= 10:  # with a handful of tracks per class, whole tracks cannot hit 70% exactly
    assert abs(train_share - 0.70) < 0.05, train_share
    check = "checked: within 5 points of the 70% target"
else:
    check = (f"the 70% target is not checked: a class has only {groups_per_class} training "
             f"track{'s' if groups_per_class != 1 else ''}, fewer than 10")
print(f"train holds {train_share:.1%} of the images ({check})")
if "export (seed paper)" in schemes:
    assert qdata.leakage(schemes["export (seed paper)"])["train-test"] > 0
print("ok: no track is shared between splits; every class is in every split")
"""),
]
write(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "notebooks", "01_data.ipynb"), cells)
