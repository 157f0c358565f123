import sys; import os; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbbuild import md, code, params, write

cells = [
md(r"""
# 6. SmoothQuant, the int8 engine, and W4A8: small *and* fast?

Chapters 04 and 05 shrank the weights; the activations stayed in float32, so the model got
smaller but not faster. Speed on a CPU comes from integer arithmetic, and that needs the
*activations* quantized too. SmoothQuant (Xiao et al., ICML 2023) was built for the
activations of LLMs, where a few input channels are ~100x larger than the rest and ruin a
per-tensor activation scale. This chapter applies it to the convolutions of the ResNet-18,
runs the result on PyTorch's real int8 engine (x86), and combines it with GPTQ's 4-bit and
2-bit weights (W4A8, W2A8) to test the seed paper's conclusion that a method could make the
model smaller *or* faster, not both.

## The equivalence transform

A conv or linear layer computes $Y = XW$ (for a conv, $X$ are the input patches and the
input channel $j$ appears once per kernel tap). For any positive vector $s$ over the input
channels,

$$
Y = \bigl(X \operatorname{diag}(s)^{-1}\bigr)\,\bigl(\operatorname{diag}(s)\,W\bigr),
$$

so dividing input channel $j$ by $s_j$ and multiplying the weights that read it by $s_j$
changes nothing in float arithmetic. SmoothQuant picks

$$
s_j = \frac{\max|X_j|^{\alpha}}{\max|W_{:,j}|^{1-\alpha}},
$$

with $\max|X_j|$ over the calibration images (train split) and every spatial position, and
$\max|W_{:,j}|$ over the output channels and kernel taps. The *migration strength*
$\alpha\in[0,1]$ moves quantization difficulty from the activations ($\alpha=0$: only the
weights set $s$) to the weights ($\alpha=1$: every input channel gets the same range,
$\max|X_j|/s_j = 1$). With $\alpha=\tfrac12$ the smoothed activation and weight ranges of a
channel are equal, $\max|X_j|/s_j = \max|W_{:,j}|\,s_j = \sqrt{\max|X_j|\max|W_{:,j}|}$.

## Folding $s$ away: BatchNorm and the residual stream

The division $X\operatorname{diag}(s)^{-1}$ must cost nothing at run time, so it is folded
into the op that *produces* $X$. In a ResNet block, conv2 reads
$\mathrm{ReLU}(\mathrm{BN}_1(\cdot))$; since $\mathrm{ReLU}(x/s) = \mathrm{ReLU}(x)/s$ for
$s>0$, the division goes into BN$_1$'s affine parameters, $\gamma_j \leftarrow \gamma_j/s_j$,
$\beta_j \leftarrow \beta_j/s_j$. The block's conv1, the downsample conv and the classifier
read the *residual stream* $h_{k+1} = \mathrm{ReLU}(h_k + F(h_k))$, written by several ops.
Two choices (`qlib.fold`):

* **`"bn"`** — leave the residual-stream consumers unsmoothed (only each block's conv2 is
  smoothed);
* **`"shared"`** — one scale per stage, shared by every consumer of the stream and divided out
  of *every* producer: the stem BN, each block's BN$_2$ and the downsample BN (the identity
  shortcut, the sum, ReLU, max-pool and average pooling all commute with it).

"shared" smooths every layer but the stem conv; its price is a compromise scale, the max
over all consumers of a stage. The chapter measures both.

## The quantizers

*Fake quant* (simulation): weights per output channel, symmetric, $b_w$ bits; every conv/linear
input per tensor, asymmetric, $b_a$ bits, range = min/max over the calibration images.
*Real int8*: `qlib.int8.convert` folds BN, fuses conv+ReLU and runs torch's x86 engine with
per-channel symmetric int8 weights and per-tensor uint8 activations (7-bit range, torch's
default x86 qconfig; histogram observer), residual additions quantized. For W4A8 and W2A8 the
BN-folded weights are quantized by GPTQ (`GPTQSettings(fold_bn=True)`) and the engine is given
exactly those codes and scales: it runs 4-bit (2-bit) codes in int8 containers, while the file
on disk is the packed 4-bit (2-bit) export.
"""),
params("""
data = None
image_size = None
split = None
seed = None
smoke = None
alphas = [0.0, 0.25, 0.5, 0.75, 1.0]   # the alpha grid of the fake-quant sweeps
act_bits_list = [8, 4]
sweep_limit = 1000      # fidelity images for the sweeps (the headline rows use all of them)
observer = "histogram"  # activation observer of the int8 engine (torch's default for x86)
latency_runs = 10
"""),
code("""
import copy, os, tempfile
import numpy as np
import pandas as pd
import torch
from IPython.display import display, Markdown
from qlib import Config, data as qdata, models, measure, results, plots, plots_ptq, calib, fold, gptq, int8, export, quant, widgets
from qlib import smoothquant as sq

plots.style()
torch.set_num_threads(2)
cfg = Config.from_env(data=data, image_size=image_size, split=split, seed=seed, smoke=smoke)
splits = qdata.load(cfg)
plots.header(cfg, splits)
fp, _ = models.baseline(cfg, splits)
calib_x, calib_idx = calib.sample(splits, cfg.calib_size, cfg.seed)
if cfg.smoke:  # the same cells on fewer settings
    alphas, act_bits_list, latency_runs, sweep_limit = [0.0, 1.0], [8, 4], 2, 200
ref_s = measure.Reference(fp, splits, fidelity_limit=sweep_limit)
stats = calib.input_stats(fp, calib_x)
print(f"FP32 test accuracy {ref_s.fp['accuracy']:.2%}; {len(calib_x)} calibration images (train split)")
"""),
md("""
## Smoothing does not change the float model

For both folding modes, the smoothed model's logits against the baseline's on calibration
images, and how many conv/linear layers each mode leaves unsmoothed.
"""),
code("""
def rel_err(m, x=calib_x[:64]):
    a, b = calib.run(fp, x, keep=True), calib.run(m, x, keep=True)
    return float((a - b).norm() / a.norm())

fold_rows = []
for mode in fold.MODES:
    for a in (0.5, 1.0):
        sc = sq.search(fp, calib_x, sq.SmoothSettings(a, mode), stats)
        fold_rows.append({"mode": mode, "alpha": a, "relative logit error": rel_err(sq.apply(fp, sc)),
                          "smoothed layers": sum(len(c) for c in sc.consumers.values()),
                          "unsmoothed layers": ", ".join(fold.unscaled_layers(fp, mode))})
fold_df = pd.DataFrame(fold_rows)
display(fold_df)
"""),
md("""
## Activation outliers before and after

The per-channel $\\max|X_j|$ of a few layers' inputs (channels in their original order, each row
normalised by its median channel), before and after smoothing with $\\alpha=0.5$ ("shared").
Then the outlier ratio (largest / median channel) of every layer, before and after, for both modes.
"""),
code("""
sc_half = sq.search(fp, calib_x, sq.SmoothSettings(0.5, "shared"), stats)
show = [n for n in ("layer1.0.conv2", "layer2.0.conv1", "layer3.1.conv1", "layer4.0.conv2", "layer4.1.conv2", "fc") if n in stats]
fig = plots_ptq.smoothing_heatmaps(stats, sc_half, show)
ratios = pd.DataFrame({"before": sq.outlier_ratios(stats),
                       **{f"after ({m}, a=0.5)": sq.outlier_ratios(stats, sq.search(fp, calib_x, sq.SmoothSettings(0.5, m), stats)) for m in fold.MODES}})
display(ratios.round(1).T)
"""),
code("""
display(Markdown(
    f"Median outlier ratio over the {len(ratios)} layers: **{ratios['before'].median():.1f}x** before, "
    f"**{ratios['after (bn, a=0.5)'].median():.1f}x** after \\"bn\\" and **{ratios['after (shared, a=0.5)'].median():.1f}x** "
    f"after \\"shared\\" smoothing (largest before: {ratios['before'].max():.1f}x in `{ratios['before'].idxmax()}`). "
    + ("An LLM's activations reach ~100x on this measure (max|X|, SmoothQuant paper); this network's ratios stay below 10x, "
       "so there is less for SmoothQuant to fix." if round(ratios['before'].max(), 1) < 10 else
       "An LLM's activations reach ~100x on this measure (max|X|, SmoothQuant paper); this network's largest is "
       + ("below that, but an order of magnitude above its median channel." if round(ratios['before'].max(), 1) < 100 else "as large."))))
"""),
md("""
## Accuracy and agreement vs $\\alpha$ (fake quant)

W8A8 and W8A4, without smoothing and with smoothing at each $\\alpha$ of the grid, in both
folding modes. Accuracy is on the full test split; agreement with FP32 on a subsample of the
fidelity set (`sweep_limit` validation and test images).
"""),
code("""
base_rows, sweep_rows = [], []
for a_bits in act_bits_list:
    base_rows.append({"act_bits": a_bits, **ref_s.row(sq.fake_quant_model(fp, calib_x, 8, a_bits))})
    for mode in fold.MODES:
        for a in alphas:
            sc = sq.search(fp, calib_x, sq.SmoothSettings(a, mode), stats)
            m = sq.fake_quant_model(sq.apply(fp, sc), calib_x, 8, a_bits)
            sweep_rows.append({"act_bits": a_bits, "mode": mode, "alpha": a, **ref_s.row(m)})
base_df, sweep_df = pd.DataFrame(base_rows), pd.DataFrame(sweep_rows)
fig = plots_ptq.alpha_sweep(sweep_df, base_df, ref_s.fp["accuracy"], modes=("shared", "bn"))
"""),
code("""
best = sweep_df.sort_values(["agreement", "accuracy"], ascending=False).groupby(["act_bits", "mode"]).head(1)
cmp = best.pivot(index="act_bits", columns="mode", values=["agreement", "accuracy", "alpha"])
cmp[("agreement", "no smoothing")] = base_df.set_index("act_bits")["agreement"]
cmp[("accuracy", "no smoothing")] = base_df.set_index("act_bits")["accuracy"]
display(cmp.sort_index(axis=1).sort_index(ascending=False).round(4))
gain = {m: float((cmp[("agreement", m)] - cmp[("agreement", "no smoothing")]).mean()) for m in fold.MODES}
mode = max(gain, key=gain.get)
a8 = best[(best.act_bits == 8) & (best["mode"] == mode)].iloc[0]
alpha = float(a8["alpha"])
"""),
code("""
# Signed figures print with Python's "z" option ("{:+z.2f}", PEP 682): one that rounds to zero reads +0.00, not -0.00.
lines = []
for b in sorted(act_bits_list, reverse=True):
    d = {m: cmp.loc[b, ("agreement", m)] - cmp.loc[b, ("agreement", "no smoothing")] for m in fold.MODES}
    lines.append(f"W8A{b}: best smoothing changes agreement by {d['bn']*100:+z.2f} points (\\"bn\\") and "
                 f"{d['shared']*100:+z.2f} points (\\"shared\\") over plain per-tensor PTQ")
# the verdict compares the gains as printed (points, 2 decimals): "+0.50" is not more than half a point
helps = [b for b in act_bits_list if max(round((cmp.loc[b, ("agreement", m)] - cmp.loc[b, ("agreement", "no smoothing")]) * 100, 2) for m in fold.MODES) > 0.5]
display(Markdown("; ".join(lines) + ". " + (
    "Smoothing clearly beats plain per-tensor PTQ (by more than half a point of agreement) at "
    + ", ".join(f"**A{b}**" for b in sorted(helps, reverse=True))
    + (" (every activation bit width measured)." if len(helps) == len(act_bits_list) else " only.")
    if helps else "Smoothing does **not** beat plain per-tensor PTQ by more than half a point of agreement at any of these bit widths on this network.")
    + f" Mode chosen: **\\"{mode}\\"** (mean agreement gain {gain[mode]*100:+z.2f} points vs {gain[min(gain, key=gain.get)]*100:+z.2f}); "
    f"α for the int8 rows: **{alpha:g}**, the best W8A8 agreement of that mode on the sweep."))
"""),
md("""
## Explore: migration strength and activation bits

In a live kernel, move $\\alpha$ and the activation bit width: the panel recomputes the
fake-quant accuracy on a subset of the test split with and without smoothing, the outlier ratio of
every layer before and after, and one layer's per-channel range. The static book shows the first
setting; the sweep figure above is the same content precomputed.
"""),
code("""
sub = torch.randperm(len(splits.test), generator=torch.Generator().manual_seed(0))[:256 if not cfg.smoke else 64]
widgets.smoothquant_panel(fp, calib_x, qdata.to_float(splits.test.images[sub]), splits.test.labels[sub], mode=mode);
"""),
md("""
## Real int8 execution

Every variant on torch's x86 int8 engine (activations per tensor, observer below), beside FP32.
The **int8 PTQ** row is what a practitioner gets from PyTorch's default static post-training
quantization: no smoothing, histogram observer, 256 calibration images. **SmoothQuant W8A8** is the
same engine after smoothing. **W4A8** and **W2A8** are the smoothed model's BN-folded weights
quantized by GPTQ (act-order, 1% dampening) to 4 and 2 bits per output channel, run as codes by the engine. Accuracy and
agreement use the full fidelity set; size is the real file; latency follows the measurement protocol
(`measure.latencies`: batch 64, 2 threads, median of `latency_runs` rounds, the variants interleaved
within each round so that drift of the machine hits them alike). On a loaded machine the timings are
noisy; chapter 08 re-times every saved variant of the book in one such benchmark.
"""),
code("""
ref = measure.Reference(fp, splits)
sc = sq.search(fp, calib_x, sq.SmoothSettings(alpha, mode), stats)
smooth = sq.apply(fp, sc)
engine = {"int8_ptq": int8.convert(fp, calib_x, observer=observer),
          "sq_w8a8": int8.convert(smooth, calib_x, observer=observer)}
packed = {}
for bits in (4, 2):
    g, _ = gptq.quantize_model(smooth, calib_x, gptq.GPTQSettings(quant=quant.QuantSettings(bits=bits), fold_bn=True, act_order=True), progress=False)
    packed[f"w{bits}a8"] = g
    engine[f"w{bits}a8"] = int8.convert(g, calib_x, observer=observer, weight_codes=True)
"""),
code("""
files = {}
for name, q in engine.items():
    files[name] = str(int8.save(q, results.variant_path(cfg, name, ".int8.pt")))
for name, g in packed.items():
    files[name + " (packed)"] = export.save(g, results.variant_path(cfg, name))
fp_file = os.path.join(tempfile.mkdtemp(), "fp32.pt"); torch.save(fp.state_dict(), fp_file)
reloaded = int8.load(files["sq_w8a8"])
assert torch.equal(reloaded(calib_x[:8]), engine["sq_w8a8"](calib_x[:8])), "the saved int8 file must load and run identically"
display(pd.Series({k: measure.file_size_mb(v) for k, v in {"fp32": fp_file, **files}.items()}, name="file size (MB)").round(2).to_frame().T)
"""),
code("""
lat = measure.latencies({"fp32": fp, **engine}, cfg.image_size, 64, threads=2, warmup=3, runs=latency_runs)
labels = {"fp32": "FP32", "int8_ptq": "int8 PTQ (torch default, no smoothing)", "sq_w8a8": "SmoothQuant W8A8",
          "w4a8": "GPTQ W4A8 (int8 engine)", "w2a8": "GPTQ W2A8 (int8 engine)"}
size = {"fp32": measure.file_size_mb(fp_file), "int8_ptq": measure.file_size_mb(files["int8_ptq"]),
        "sq_w8a8": measure.file_size_mb(files["sq_w8a8"]), "w4a8": measure.file_size_mb(files["w4a8 (packed)"]),
        "w2a8": measure.file_size_mb(files["w2a8 (packed)"])}
real = pd.DataFrame([{"variant": labels[k], "name": k, **(ref.fp if k == "fp32" else ref.row(engine[k])), "size_mb": size[k],
                      "ms_per_batch": lat[k]["ms_per_batch"], "images_per_s": lat[k]["images_per_s"], "spread": lat[k]["spread"],
                      "speedup": lat["fp32"]["ms_per_batch"] / lat[k]["ms_per_batch"]} for k in labels]).set_index("name")
display(real[["variant", "accuracy", "agreement", "kl", "size_mb", "ms_per_batch", "images_per_s", "speedup", "spread"]].round(4))
"""),
code("""
colour = {"fp32": "fp32", "sq_w8a8": "smoothquant", "int8_ptq": "int8"}  # the low-bit GPTQ models: "gptq"
fig = plots_ptq.size_speed(real.assign(color=[colour.get(k, "gptq") for k in real.index]),
                           xlabel=f"file size (MB, log; GPTQ W4A8 / W2A8: packed export, timed from {measure.file_size_mb(files['w4a8']):.1f} MB int8 files)")
"""),
code("""
f, w4, w2, s8, p8 = (real.loc[k] for k in ("fp32", "w4a8", "w2a8", "sq_w8a8", "int8_ptq"))
both = w4["size_mb"] < f["size_mb"] / 4 and w4["speedup"] > 1.5
w4_engine_mb = measure.file_size_mb(files["w4a8"])   # the int8-engine file that was timed (4-bit codes in int8 containers)
display(Markdown(
    f"**Size or speed, not both?** W4A8 stores the model in **{w4['size_mb']:.2f} MB** as the packed 4-bit export "
    f"({f['size_mb'] / w4['size_mb']:.1f}x smaller than FP32's {f['size_mb']:.1f} MB); the same codes on the int8 engine, "
    f"loaded from an int8 file of {w4_engine_mb:.2f} MB (activation parameters included), run at "
    f"**{w4['images_per_s']:.0f} images/s**, {w4['speedup']:.1f}x FP32's {f['images_per_s']:.0f}, at "
    f"{(w4['accuracy'] - f['accuracy']) * 100:+z.2f} points of accuracy, {w4['agreement']:.2%} agreement and KL {w4['kl']:.4f}. "
    f"W2A8: {w2['size_mb']:.2f} MB packed ({measure.file_size_mb(files['w2a8']):.2f} MB on the engine), {w2['speedup']:.1f}x, "
    f"{(w2['accuracy'] - f['accuracy']) * 100:+z.2f} points of accuracy, {w2['agreement']:.2%} agreement and KL {w2['kl']:.4f}. "
    f"SmoothQuant W8A8: {s8['size_mb']:.2f} MB, {s8['speedup']:.1f}x, {(s8['accuracy'] - f['accuracy']) * 100:+z.2f} points, "
    f"{s8['agreement']:.2%} agreement (torch's default PTQ: {(p8['accuracy'] - f['accuracy']) * 100:+z.2f} points, {p8['agreement']:.2%}). "
    + ("So the seed's conclusion does not hold here: once the activations are integers too, the same quantized weights are "
       "both small and fast — small as the packed low-bit export, fast as the same codes run by the int8 engine — though the "
       f"engine's own file stores them in int8 containers ({w4_engine_mb:.2f} MB)." if both else
       "On these measurements the seed's conclusion stands: the variant that is much smaller is not also much faster.")))
"""),
md("""
## What must hold
"""),
code("""
assert (fold_df["relative logit error"] <= 1e-4).all(), fold_df      # smoothing is an exact transform
g4 = packed["w4a8"]
codes = {n: m.qweight.codes for n, m in g4.named_modules() if hasattr(m, "qweight")}
eng = int8.weight_codes_of(engine["w4a8"])
assert set(codes) <= set(eng) and all(torch.equal(eng[n], codes[n]) for n in codes), "W4A8 engine codes != GPTQ codes"
assert max(int(c.abs().max()) for c in codes.values()) <= 8                # really 4-bit codes
assert measure.file_size_mb(files["sq_w8a8"]) <= 11.5 and measure.file_size_mb(files["int8_ptq"]) <= 11.5
assert size["w4a8"] <= 6.0, size
assert cfg.smoke or (real.loc["sq_w8a8", "agreement"] >= 0.99 and real.loc["w4a8", "accuracy"] >= ref.fp["accuracy"] - 0.03), real
print("ok")
"""),
code("""
rows = []
specs = {"int8_ptq": ("int8-ptq", 8, {"observer": observer, "smoothing": None}),
         "sq_w8a8": ("smoothquant", 8, {"observer": observer, "alpha": alpha, "mode": mode}),
         "w4a8": ("gptq", 4, {"observer": observer, "alpha": alpha, "mode": mode, "fold_bn": True, "smoothing": "smoothquant"}),
         "w2a8": ("gptq", 2, {"observer": observer, "alpha": alpha, "mode": mode, "fold_bn": True, "smoothing": "smoothquant"})}
for k, (method, bits, st) in specs.items():
    r = real.loc[k]
    rows.append({"method": method, "label": r["variant"], "bits": bits, "act_bits": 8, "granularity": "channel",
                 **{c: float(r[c]) for c in ("accuracy", "acc_lo", "acc_hi", "agreement", "kl", "test_agreement", "size_mb", "ms_per_batch",
                                             "images_per_s")},
                 **{c: int(r[c]) for c in ("n_test", "n_fidelity")},  # the images the agreement was counted on
                 "engine": "int8", "variant_file": k, "calib_seed": cfg.seed, "settings": st})
for r in sweep_rows + [{**b, "mode": None, "alpha": None} for b in base_rows]:
    rows.append({"method": "smoothquant" if r["mode"] else "int8-ptq", "label": f"W8A{r['act_bits']} fake quant " + (f"{r['mode']} a={r['alpha']:g}" if r["mode"] else "no smoothing"),
                 "bits": 8, "act_bits": r["act_bits"], "granularity": "channel", "engine": "float", "sweep": True,
                 **{c: r[c] for c in ("accuracy", "acc_lo", "acc_hi", "agreement", "kl", "n_fidelity")}, "calib_seed": cfg.seed,
                 "settings": {"mode": r["mode"], "alpha": r["alpha"], "observer": "minmax", "fake_quant": True}})
results.record("06_smoothquant", rows, cfg, data=splits.source);  # ';': the cell shows nothing (record returns the file's path)
"""),
]
write(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "notebooks", "06_smoothquant.ipynb"), cells)
