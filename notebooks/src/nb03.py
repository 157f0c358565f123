import sys; import os; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbbuild import md, code, params, write

cells = [
md(r"""
# 3. Quantization basics: the quantizer, granularity, round-to-nearest, and where the outliers are

Every method in this book — GPTQ, AWQ, SmoothQuant, QAT — ends in the same place: a weight
$w$ replaced by one of $2^b$ evenly spaced levels. This chapter builds that quantizer, applies
it the naive way (round-to-nearest, RTN) to the baseline, and tests the premise the LLM methods
rest on: that a few input channels carry outliers far larger than the rest.

## The uniform quantizer

With a scale $\Delta$ and an integer zero point $z$, a weight becomes an integer code and back:

$$
q = \operatorname{clamp}\!\left(\left\lfloor \frac{w}{\Delta} \right\rceil + z,\; q_{\min},\; q_{\max}\right),
\qquad \hat w = (q - z)\,\Delta .
$$

*Symmetric* ($z=0$, signed codes $q \in [-2^{b-1}, 2^{b-1}-1]$):
$\Delta = 2\,\max|w| / (2^b - 1)$. *Asymmetric* (unsigned codes $q \in [0, 2^b-1]$):
$\Delta = (\max w - \min w)/(2^b-1)$ and $z = \lfloor -\min w / \Delta \rceil$. Inside the range
the rounding error is at most $\Delta/2$; outside it, values are clipped. Shrinking the range
(*clipping*, ratio $c<1$) trades clipping error on a few large weights for a finer step on all
the others; `range="mse"` searches $c$ per channel (or group, or tensor) to minimise
$\sum |w-\hat w|^{2.4}$, the exponent of GPTQ's reference quantizer (`qlib.quant.MSE_NORM`).

## Granularity

One $(\Delta, z)$ for the whole tensor (*per-tensor*), one per output channel (*per-channel*:
each row of the 2-D view $W \in \mathbb{R}^{C_\text{out} \times C_\text{in} k_h k_w}$), or one
per group of $g$ consecutive columns of a row (*per-group*). Finer granularity costs storage
(a float16 scale per channel or group) and buys a range fitted to each row.

## Round-to-nearest

RTN quantizes every weight independently with the rule above. It needs no data. Everything
later in the book is measured against it: a method that does not beat RTN is not worth its
calibration data.
"""),
params("""
data = None
image_size = None
split = None
seed = None
smoke = None
bits_list = [8, 6, 4, 3, 2]
fidelity_limit = None   # None: every validation and test image
"""),
code("""
import copy
import numpy as np
import pandas as pd
import torch
from IPython.display import display, Markdown
from qlib import Config, data as qdata, models, measure, results, plots, plots_ptq, quant, rtn, calib, widgets

plots.style()
torch.set_num_threads(2)
cfg = Config.from_env(data=data, image_size=image_size, split=split, seed=seed, smoke=smoke)
splits = qdata.load(cfg)
plots.header(cfg, splits)
fp, _ = models.baseline(cfg, splits)
calib_x, calib_idx = calib.sample(splits, cfg.calib_size, cfg.seed)
ref = measure.Reference(fp, splits, fidelity_limit=fidelity_limit)
print(f"FP32: test accuracy {ref.fp['accuracy']:.2%}; fidelity set (validation + test, held out) {ref.fp['n_fidelity']} images")
"""),
md(r"""
## The quantizer as a figure

A 3-bit quantizer, symmetric and asymmetric: the staircase $\hat w(w)$ and its error in units of
the step. Inside the range the error stays within half a step; past the range it grows
linearly (clipping). The symmetric levels are not centred on zero: the codes
$[-2^{b-1}, 2^{b-1}-1]$ hold one more negative level than positive ones, so with
$\Delta = 2\max|w|/(2^b-1)$ the 3-bit levels run from $-4\Delta = -\tfrac{8}{7}\max|w|$ to
$3\Delta = \tfrac{6}{7}\max|w|$; $\pm\max|w|$ both lie half a step from the outermost level.
"""),
code("""
fig = plots_ptq.quantizer_staircase(bits=3)
"""),
md("""
## Granularity on the baseline's real weights

The relative error $\\|W-Q(W)\\|_F / \\|W\\|_F$ of every layer at 4 bits, per tensor, per
output channel, and per group of 64 columns (layers whose columns 64 does not divide — the
first conv's $3 \\cdot 7 \\cdot 7 = 147$ — use per-channel).
"""),
code("""
rows = []
for name, m in fp.named_modules():
    if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
        w = m.weight.detach()
        cols = quant.weight_view(w).shape[1]
        for gran in ("tensor", "channel", "group"):
            g = "channel" if gran == "group" and cols % 64 else gran
            wq = quant.quantize(w, quant.QuantSettings(bits=4, granularity=g, group_size=64)).dequantize()
            rows.append({"layer": name, "granularity": gran, "error": ((w - wq).norm() / w.norm()).item()})
gran_err = pd.DataFrame(rows)
fig = plots_ptq.granularity_errors(gran_err)
display(gran_err.groupby("granularity")["error"].median().rename("median relative error at W4").to_frame().T)
"""),
md("""
## Round-to-nearest on the whole network

Every `Conv2d` and `Linear` quantized with RTN, per-channel and per-tensor, at each bit width
of the parameter `bits_list`; and the common variant that keeps the first conv and the classifier at 8 bits. Size is
the real file written by `qlib.export.save` (packed codes + float16 scales + the float BN
parameters). Accuracy is on the test split; agreement and KL are measured against the FP32
model on the *fidelity set*: the validation and test images. They are held out — the FP model
was not trained on them and no variant calibrates on them — and labels are not needed to compare
with FP, so the set is twice the test split. (Training images would flatter every variant: the FP
model has fitted them, and a quantized model agrees with it almost everywhere there.)
"""),
code("""
sweep = []
if cfg.smoke:
    bits_list = [8, 4, 2]  # smoke mode: the same cells on fewer settings
for bits in bits_list:
    for gran, keep in (("channel", ()), ("tensor", ()), ("channel", ("conv1", "fc"))):
        if keep and bits == 8:
            continue
        q = rtn.quantize_model(fp, quant.QuantSettings(bits=bits, granularity=gran), keep_8bit=keep)
        variant = f"RTN per-{gran}" + (" (conv1, fc at 8 bits)" if keep else "")
        label = f"RTN W{bits} per-{gran}" + (" (conv1, fc at 8 bits)" if keep else "")  # as chapters 04-07 name rows
        sweep.append({"method": "rtn", "variant": variant, "label": label, "bits": bits, "granularity": gran,
                      "keep_8bit": list(keep), **ref.row(q), "size_mb": measure.saved_size_mb(q)})
rtn_df = pd.DataFrame(sweep)
display(rtn_df[["variant", "bits", "accuracy", "agreement", "kl", "size_mb"]].round(4))
"""),
code("""
import matplotlib.pyplot as plt
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
plots.bits_sweep(rtn_df, y="agreement", hue="variant", ax=axes[0], title="RTN: agreement with FP32")
plots.bits_sweep(rtn_df, y="accuracy", hue="variant", ax=axes[1], title="RTN: test accuracy")
axes[1].axhline(ref.fp["accuracy"] * 100, color="k", ls=":", label="FP32"); axes[1].legend(fontsize=7)
fig.tight_layout()
"""),
code("""
plain = rtn_df[rtn_df.keep_8bit.str.len() == 0].pivot(index="bits", columns="granularity",
                                                       values=["accuracy", "agreement", "kl"])
low = sorted((b for b in plain.index if b <= 4), reverse=True) or sorted(plain.index, reverse=True)
def pair_txt(metric, b, fmt):
    return f"W{b}: {fmt(plain.loc[b, (metric, 'channel')])} vs {fmt(plain.loc[b, (metric, 'tensor')])}"
better = [b for b in low if plain.loc[b, ("agreement", "channel")] > plain.loc[b, ("agreement", "tensor")]]
kl_better = all(plain.loc[b, ("kl", "channel")] < plain.loc[b, ("kl", "tensor")] for b in low)
bits_txt = ", ".join(f"W{b}" for b in low)
if len(better) == len(low):
    lead = f"Per-channel scales keep more agreement with FP32 than one per-tensor scale at {bits_txt}"
elif better:
    lead = f"Per-channel scales keep more agreement with FP32 than one per-tensor scale at {', '.join(f'W{b}' for b in better)} only"
else:
    lead = f"Per-channel scales keep no more agreement with FP32 than one per-tensor scale at {bits_txt}"
text = (lead + " (per-channel vs per-tensor, " + "; ".join(pair_txt("agreement", b, lambda v: f"{v:.1%}") for b in low)
        + ")" + (", with a lower KL at each." if kl_better else "."))
half = (ref.fp["acc_hi"] - ref.fp["acc_lo"]) / 2
# where accuracy ranks the two granularities otherwise than agreement does
tensor_acc = {b: plain.loc[b, ("accuracy", "tensor")] > plain.loc[b, ("accuracy", "channel")] for b in low}
flip = [b for b in low if tensor_acc[b] == (b in better)]
small = [b for b in low if abs(plain.loc[b, ("accuracy", "tensor")] - plain.loc[b, ("accuracy", "channel")]) < half]
text += (f" Test accuracy {'ranks them the other way at ' + ', '.join(f'W{b}' for b in flip) if flip else 'ranks them the same way'} ("
         + "; ".join(pair_txt("accuracy", b, lambda v: f"{v:.2%}") for b in (flip or low)) + "). ")
text += (f"{'But the' if flip else 'The'} FP32 model's own 95% interval on the test split is ±{half * 100:.1f} points ({ref.fp['n_test']} "
         f"images, resampled by track): accuracy gaps smaller than that between two variants"
         + (f" — here at {', '.join(f'W{b}' for b in small)} —" if small else "") + " are not evidence. Agreement "
         f"and KL compare each variant with FP32's own predictions, image by image, on {ref.fp['n_fidelity']} held-out "
         "images: they are the metrics to read.")
display(Markdown(text))
"""),
md("""
## Weight distributions per layer

The spread of each layer's weights in units of its standard deviation. A heavy tail (a large
max/std ratio) is what hurts per-tensor quantization: one scale must cover the largest weight,
so the step is coarse for all the others.
"""),
code("""
fig = plots_ptq.weight_distributions(fp)
"""),
md(r"""
## Where are the outliers?

SmoothQuant and AWQ were designed for a specific pathology of large language models: in the
activations entering their linear layers, a few *channels* are consistently ~100x larger than
the median channel (the SmoothQuant paper, Fig. 4; LLM.int8() calls them emergent outlier
features). Per-tensor activation quantization then wastes almost all of its levels on those
channels, and AWQ's "salient weights" are the ones that multiply them.

Does a ResNet have them? Below: for the input of every conv and of the classifier, the
per-channel $\max|X_j|$ over the calibration images (train split) and all spatial positions,
each layer normalised by its median channel.
"""),
code("""
stats = calib.input_stats(fp, calib_x)
fig = plots_ptq.outlier_heatmap(stats, "absmax")
fig, ratios = plots_ptq.outlier_ratio(stats, "absmax")
ratio_df = pd.DataFrame({"layer": list(stats), "max/median (absmax)": ratios,
                         "max/median (absmean)": [float(v.max() / max(np.median(v), 1e-12)) for v in (s["absmean"].numpy() for s in stats.values())]})
display(ratio_df.set_index("layer").round(1).T)
"""),
code("""
big = ratio_df[ratio_df["max/median (absmax)"] >= 20]
display(Markdown(
    f"Largest channel / median channel: median over layers **{np.median(ratios):.1f}x**, largest "
    f"**{max(ratios):.1f}x** (`{ratio_df.loc[int(np.argmax(ratios)), 'layer']}`); "
    + (f"no layer of {len(ratios)} reaches 20x" if len(big) == 0 else
       f"{len(big)} of {len(ratios)} layers reach{'es' if len(big) == 1 else ''} 20x")
    + ". In an LLM the ratio is ~100x in the layers that matter."))
"""),
md("""
## Explore: one layer under the quantizer

In JupyterLab, pick a layer, the bits, the granularity and the range; the panel draws the
layer's weight histogram with the levels of its first output channel and prints the error. The
static book cannot run it; the figure after it gives a precomputed summary instead: each layer's
relative weight error against the bits, per tensor and per channel, naming the first conv, the
classifier, and the other layers with the largest and the smallest error at 4 bits per channel
(the rest in grey).
"""),
code("""
widgets.quantizer_panel(fp);
"""),
code("""
err_rows = []
for name, m in fp.named_modules():
    if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
        w = m.weight.detach()
        for bits in (2, 3, 4, 6, 8):
            for gran in ("tensor", "channel"):
                wq = quant.quantize(w, quant.QuantSettings(bits=bits, granularity=gran)).dequantize()
                err_rows.append({"layer": name, "bits": bits, "granularity": gran, "error": ((w - wq).norm() / w.norm()).item()})
err_df = pd.DataFrame(err_rows)
import matplotlib.pyplot as plt
w4 = err_df[(err_df.bits == 4) & (err_df.granularity == "channel")].set_index("layer")["error"]
mid = w4.drop(["conv1", "fc"], errors="ignore")
named = {"conv1": "conv1 (first conv)", mid.idxmax(): f"{mid.idxmax()} (largest W4 error)",
         mid.idxmin(): f"{mid.idxmin()} (smallest W4 error)", "fc": "fc (classifier)"}
named = {k: v for k, v in named.items() if k in w4.index}
fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), sharey=True)
for ax, gran in zip(axes, ("tensor", "channel")):
    d = err_df[err_df.granularity == gran]
    for layer, dl in d.groupby("layer", sort=False):
        if layer not in named:
            ax.plot(dl["bits"], dl["error"], color="0.75", lw=0.8, zorder=1)
    for i, (layer, label) in enumerate(named.items()):
        dl = d[d.layer == layer]
        ax.plot(dl["bits"], dl["error"], color=f"C{i}", lw=1.6, marker="o", ms=3, label=label, zorder=2)
    ax.set_yscale("log"); ax.set_xlabel("bits"); ax.set_title(f"per-{gran}")
    ax.set_xticks(sorted(err_df["bits"].unique()))  # the measured bit widths only
axes[0].set_ylabel("relative weight error")
axes[1].plot([], [], color="0.75", lw=0.8, label=f"the other {len(w4) - len(named)} layers")
axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
fig.suptitle("Precomputed: each layer's weight error vs bits")
fig.tight_layout()
plt.show()
# the straight lines' slope: the factor by which one more bit divides a layer's error, between measured bit widths,
# against the factor by which it shrinks the grid's step, 2 max|w| / (2^b - 1) (qlib.quant, symmetric)
pc = err_df[err_df.granularity == "channel"].pivot(index="layer", columns="bits", values="error")
steps = list(zip(pc.columns[:-1], pc.columns[1:]))
per_bit = {(a, b): float(np.median((pc[a] / pc[b]) ** (1 / (b - a)))) for a, b in steps}
step_bit = {(a, b): ((2 ** b - 1) / (2 ** a - 1)) ** (1 / (b - a)) for a, b in steps}
off = [(a, b) for a, b in steps if abs(per_bit[(a, b)] / step_bit[(a, b)] - 1) > 0.03]
display(Markdown(
    "Per channel, one more bit divides a layer's error by "
    + ", ".join(f"**{per_bit[k]:.2f}** from {k[0]} to {k[1]} bits" for k in steps)
    + " (medians over the layers), and the grid's step, 2·max|w| / (2ᵇ − 1), by "
    + ", ".join(f"{step_bit[k]:.2f}" for k in steps) + ": "
    + ("the error shrinks with the step, to within 3% at every width; rounding error is a fixed fraction of the step, "
       "whatever the bits." if not off else
       "the error shrinks with the step to within 3% except from " + ", ".join(f"{a} to {b} bits" for a, b in off) + ".")))
"""),
md("""
## What must hold
"""),
code("""
# per-channel is never worse than per-tensor on any layer (the per-tensor range covers every row)
pv = gran_err.pivot(index="layer", columns="granularity", values="error")
assert (pv["channel"] <= pv["tensor"] * (1 + 1e-6)).all(), pv[pv["channel"] > pv["tensor"]]
ch = rtn_df[(rtn_df.granularity == "channel") & (rtn_df.keep_8bit.str.len() == 0)].set_index("bits")
assert ch.loc[8, "agreement"] >= 0.99, ch.loc[8]       # W8 RTN is (near) lossless
assert ch.sort_index()["kl"].is_monotonic_decreasing or cfg.smoke  # fewer bits, more divergence (real data)
sizes = ch["size_mb"]
assert sizes.loc[4] < 6.0 and sizes.loc[8] < 11.5, sizes  # real packed files, not 8-bit containers
print("ok")
"""),
code("""
rows = [{**{k: v for k, v in r.items() if k != "variant"},
         "settings": {"granularity": r["granularity"], "keep_8bit": r["keep_8bit"], "range": "minmax"}}
        for r in sweep]
results.record("03_basics", rows, cfg, data=splits.source);  # ';': the cell shows nothing (record returns the file's path)
"""),
]
write(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "notebooks", "03_basics.ipynb"), cells)
