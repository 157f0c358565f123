import sys; import os; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbbuild import md, code, params, write

cells = [
md(r"""
# 2. The FP32 baseline and the measurement protocol

Every quantized model in this book is compared with one float model: torchvision's standard
ResNet-18 with a 29-class head, trained once and cached. This chapter trains it, measures it
the way every later chapter measures its variants, and shows what the seed paper's leaky split
does to accuracy.

**Transfer learning or from scratch?** The seed paper fine-tuned ImageNet weights at 224x224.
`qlib.models.resnet18(pretrained=True)` asks torchvision's weights API for them
(`ResNet18_Weights.IMAGENET1K_V1`); where they cannot be downloaded (this book's build machine
has no internet) it prints a note and the model is trained from scratch. At 64x64 on ~7,000
training images a from-scratch ResNet-18 is a fine classifier of traffic signs, and what the
study asks — what quantization does to a CNN — does not depend on where the weights came from.

**The recipe** (`qlib.models.RECIPE`): SGD with Nesterov momentum 0.9 and weight decay
$5\cdot10^{-4}$, batch 128, one epoch of linear warm-up then a cosine decay of the learning
rate from 0.1, label smoothing 0.1, and light augmentation per image (rotation $\pm10°$, scale
$\pm15\%$, shift $\pm10\%$, brightness and contrast) — never a horizontal flip, since *keep
left* and *keep right* are mirror images. The standard ImageNet stem (7x7 stride-2 conv and
max-pool) is kept: at 64x64 it leaves a 2x2 map in the last stage, which is cheap enough for
2 CPU cores; a CIFAR-style stem costs ~16x the compute. Training runs in float32. Mixed precision
(`QLIB_PRECISION=bf16-mixed`: the forward and backward passes in bfloat16, the weights and the
optimizer in float32) pays only where the CPU has bfloat16 matrix units (AMX): on this study's
2-core machine a training step took 1.63 s in bf16-mixed against 0.70 s in float32 (measured once;
see `qlib.models.mixed_precision`). The trained
model is float32 either way, and that is the FP32 reference of every chapter.
"""),
params("""
data = None
image_size = None
split = None
seed = None
smoke = None
epochs = None             # default 15 (1 in smoke mode)
compare_export_split = True  # also train on the export's own (leaky) split, as the seed paper did
export_epochs = 3         # ... for this many epochs (fewer than the baseline's keep `make book` short)
"""),
code("""
import copy, os, tempfile, time
import numpy as np
import pandas as pd
import torch
from IPython.display import display, Markdown
from qlib import Config, data as qdata, models, measure, results, plots, plots_data, export

plots.style()
torch.set_num_threads(2)
cfg = Config.from_env(data=data, image_size=image_size, split=split, seed=seed, smoke=smoke, epochs=epochs)
splits = qdata.load(cfg)
plots.header(cfg, splits);
"""),
md("""
## Training

`models.baseline(cfg)` trains the model once and caches the checkpoint under a hash of
everything that affects it (data, split, image size, seed, epochs, architecture, recipe);
every later chapter loads the same weights.
"""),
code("""
t0 = time.time()
fp, hist = models.baseline(cfg, splits)
print(f"ImageNet weights used: {fp.pretrained}; precision {hist.get('precision', 'fp32')}; training took {hist['train_seconds'] / 60:.1f} min "
      f"({np.mean(hist['seconds']):.0f} s per epoch) when this checkpoint was trained (the time depends on the "
      f"machine and its load); this call {time.time() - t0:.1f} s")
m = hist.get("machine")  # another CPU or thread count trains other weights from the same seed (models.machine)
print(f"trained on: {models.describe_machine(m)}" if m else
      "trained on: not recorded (this checkpoint predates models.machine)")
fig = plots_data.training_curves(hist)
"""),
md("""
## Accuracy, with an honest interval

The test split holds a few dozen tracks; frames of one track are near-duplicates, so errors come
in clusters. The 95% interval below resamples whole tracks (a cluster bootstrap), which is wider
than a binomial interval over images would claim.
"""),
code("""
ev = models.evaluate(fp, splits.test)
acc, lo, hi = measure.accuracy_ci(ev["logits"].argmax(1), splits.test.labels, splits.test.groups)
val = models.evaluate(fp, splits.val)["accuracy"]
display(Markdown(f"**Test accuracy (`{cfg.split}` split): {acc:.2%}** (95% CI {lo:.2%}–{hi:.2%}, "
                 f"{len(splits.test)} images from {len(set(splits.test.groups))} tracks); val {val:.2%}."))
"""),
code("""
fig = plots_data.per_class_accuracy(ev["per_class"], splits.classes)
fig = plots_data.confusion(ev["confusion"], splits.classes)
worst = ev["per_class"].argsort()[:3].tolist()
print("weakest classes:", [(splits.classes[c], f"{ev['per_class'][c]:.1%}") for c in worst])
y_test = splits.test.labels
right_test = ev["logits"].argmax(1) == y_test
test_tracks = [len({g for g, y in zip(splits.test.groups, y_test.tolist()) if y == c}) for c in range(splits.num_classes)]
one_track = [c for c in range(splits.num_classes) if test_tracks[c] == 1]
if one_track:
    c = min(one_track, key=lambda c: float(ev["per_class"][c]))
    k, n_c = int(right_test[y_test == c].sum()), int((y_test == c).sum())
    display(Markdown(
        f"{len(one_track)} of {splits.num_classes} classes have a single track in the test split: their accuracy is "
        f"the outcome of one physical sign, not a rate. The lowest of them, `{splits.classes[c]}`, is {k} of {n_c} "
        f"frames of its one track ({k / max(n_c, 1):.1%})."))
else:
    display(Markdown(f"Every class has at least {min(test_tracks)} tracks in the test split (median "
                     f"{int(np.median(test_tracks))}): a class's accuracy is the outcome of that many physical signs."))
"""),
md("""
## What the leaky split measures

The seed paper trained and tested on the export's own folders, whose test images share their
tracks with training (chapter 1). Here a second model is trained with the same recipe on those
folders, for `export_epochs` epochs (the text under the table compares that with the baseline's
budget), and its test accuracy is split by whether the test image's track has frames in its
training set.
"""),
code("""
if compare_export_split and cfg.source == "yolo":
    cfg_ex = Config.from_env(data=data, image_size=image_size, split="export", seed=seed, smoke=smoke, epochs=export_epochs)
    ex = qdata.load(cfg_ex)
    fp_ex, hist_ex = models.baseline(cfg_ex, ex)
    print(f"export-split model: {cfg_ex.epochs} epochs, {hist_ex['train_seconds'] / 60:.1f} min of training "
          f"({np.mean(hist_ex['seconds']):.0f} s per epoch)")
    pred = models.evaluate(fp_ex, ex.test)["logits"].argmax(1)
    seen = torch.tensor([g in set(ex.train.groups) for g in ex.test.groups])
    right = (pred == ex.test.labels).float()
    leak = pd.DataFrame([
        {"model trained on": f"export split (seed paper), {cfg_ex.epochs} epochs", "evaluated on": "export test split", "images": len(right), "accuracy": right.mean().item()},
        {"model trained on": f"export split (seed paper), {cfg_ex.epochs} epochs", "evaluated on": "… test images whose track was in training", "images": int(seen.sum()), "accuracy": right[seen].mean().item()},
        {"model trained on": f"export split (seed paper), {cfg_ex.epochs} epochs", "evaluated on": "… test images of unseen tracks", "images": int((~seen).sum()), "accuracy": right[~seen].mean().item() if (~seen).any() else float('nan')},
        {"model trained on": f"{cfg.split} split (this book), {cfg.epochs} epochs",
         "evaluated on": f"{cfg.split} test split" + (" (unseen tracks)" if cfg.split == "tracks" else ""),
         "images": len(splits.test), "accuracy": acc}])
    display(leak.style.format({"accuracy": "{:.2%}"}, na_rep="none").hide(axis="index"))
    e_ex, e_bl = cfg_ex.epochs, cfg.epochs
    text = (f"The export-split model trained for {e_ex} epochs against the baseline's {e_bl}"
            + (f" ({e_ex / e_bl:.0%} of its budget): less time to memorise its training frames, so if anything "
               "the leaky split's advantage is understated. " if e_ex < e_bl else
               ": the same budget. " if e_ex == e_bl else
               f": {e_ex / e_bl:.1f}x the budget, which favours the leaky split. "))
    unseen = (~seen).nonzero().flatten().tolist()
    if not unseen:
        text += "Every test image of the export's split has its track in training: there is no unseen-track row to compare."
    else:
        g_un = [ex.test.groups[i] for i in unseen]
        n_single = sum(g.startswith("file:") for g in g_un)  # qlib.yolo.track_of: no GTSRB id, its own group
        a_un, lo_un, hi_un = measure.accuracy_ci(pred[unseen], ex.test.labels[unseen], g_un)
        what = ("all single photos not from GTSRB" if n_single == len(unseen) else
                f"{n_single} of them single photos not from GTSRB" if n_single else f"from {len(set(g_un))} tracks")
        text += (f"Only {len(unseen)} test image{'s' if len(unseen) != 1 else ''} of the export's split "
                 f"{'have' if len(unseen) != 1 else 'has'} no track in training ({what}): {int(right[unseen].sum())} "
                 f"right, 95% interval {lo_un:.0%}–{hi_un:.0%}"
                 + ((". Too few to measure accuracy on unseen signs" + (": the table's last row, the `tracks` split's test set, does that."
                                                                       if cfg.split == "tracks" else "."))
                    if len(unseen) < 100 else "."))
    display(Markdown(text))
else:
    leak = None
    display(Markdown("The export's own split exists only for the YOLO export; run with `QLIB_DATA=<export>` to compare."))
"""),
md("""
## The baseline row, beside the seed paper's

Size is the real file written by `qlib.export.save` (float32 tensors in safetensors), in MB
($10^6$ bytes). CPU time follows one protocol for every variant in this book: a batch of 64
images at the configured size, 2 threads, inference mode, 5 warm-up runs, then the median of
20 timed runs (`measure.latency`). The seed paper did not state its timing protocol (its
"CPU time" is per some unknown batch, at 224x224), so only ratios between variants carry over.
"""),
code("""
with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "fp32.safetensors")
    export.save(fp, path)
    size = measure.file_size_mb(path)
    back = export.load(path)
lat = measure.latency(fp, image_size=cfg.image_size, runs=5 if cfg.smoke else 20)
x = qdata.to_float(splits.test.images[:8])
assert torch.equal(back(x), fp(x)), "the saved FP32 file must load back exactly"
table = pd.DataFrame([
    {"model": "Baseline FP32 — seed paper (published)", "accuracy (%)": 99.85, "size (MB)": 44.1, "CPU time": "2.143 s (protocol not stated)"},
    {"model": "Baseline FP32 — this book", "accuracy (%)": round(acc * 100, 2), "size (MB)": round(size, 2),
     "CPU time": f"{lat['ms_per_batch']:.1f} ms / batch of 64 ({lat['images_per_s']:.0f} img/s, spread {lat['spread']:.2f})"}])
display(table.style.format({"accuracy (%)": "{:.2f}", "size (MB)": "{:.2f}"}).hide(axis="index"))
"""),
md("""
## What must hold
"""),
code("""
assert 0.0 <= lo <= acc <= hi <= 1.0
assert size > 40 if not cfg.smoke else size > 0  # ResNet-18's 11.2 M float32 weights: ~44.7 MB
if not cfg.smoke:
    assert acc >= 0.90, f"the baseline is too weak to study quantization on: {acc:.2%}"
if leak is not None:
    assert leak["accuracy"].iloc[1] >= leak["accuracy"].iloc[3], "seen tracks should be easier than unseen ones"
print("ok")
"""),
code("""
row = {"method": "fp32", "bits": 32, "act_bits": 32, "accuracy": acc, "acc_lo": lo, "acc_hi": hi,
       "agreement": 1.0, "kl": 0.0, "size_mb": size, "ms_per_batch": lat["ms_per_batch"],
       "images_per_s": lat["images_per_s"], "latency_spread": lat["spread"], "val_accuracy": val,
       "train_minutes": hist["train_seconds"] / 60, "pretrained": bool(fp.pretrained),
       "settings": {"epochs": cfg.epochs, "recipe": models.RECIPE}}
if leak is not None:
    row["export_split_accuracy"] = float(leak["accuracy"].iloc[0])
results.record("02_baseline", [row], cfg, data=splits.source);  # ';': the cell shows nothing (record returns the file's path)
"""),
]
write(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "notebooks", "02_baseline.ipynb"), cells)
