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
the others; `range="mse"` searches $c$ per channel to minimise $\sum |w-\hat w|^{2.4}$.

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
md("""
## The quantizer as a figure

A 3-bit quantizer, symmetric and asymmetric: the staircase $\\hat w(w)$ and its error in units of
the step. Inside the range the error stays within half a step; past the range it grows
linearly (clipping).
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

Every `Conv2d` and `Linear` quantized with RTN, per-channel and per-tensor, at 8, 6, 4, 3 and 2
bits; and the common variant that keeps the first conv and the classifier at 8 bits. Size is
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
        sweep.append({"method": "rtn", "variant": variant, "bits": bits, "granularity": gran,
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
    f"**{max(ratios):.1f}x** (`{ratio_df.loc[int(np.argmax(ratios)), 'layer']}`); {len(big)} of {len(ratios)} layers "
    f"reach 20x. In an LLM the ratio is ~100x in the layers that matter."))
"""),
md("""
## Explore: one layer under the quantizer

In JupyterLab, pick a layer, the bits, the granularity and the range; the panel draws the
layer's weight histogram with the levels of its first output channel and prints the error. In
the static book, the figure after it shows the same thing precomputed for every layer.
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
import seaborn as sns
g = sns.relplot(data=err_df, x="bits", y="error", hue="layer", col="granularity", kind="line", height=3.2, aspect=1.4, legend=False)
g.set(yscale="log"); g.set_axis_labels("bits", "relative weight error"); g.fig.suptitle("Precomputed: every layer's error vs bits", y=1.03);
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
rows = [{**{k: v for k, v in r.items() if k not in ("variant",)}, "variant": r["variant"],
         "settings": {"granularity": r["granularity"], "keep_8bit": r["keep_8bit"], "range": "minmax"}}
        for r in sweep]
results.record("03_basics", rows, cfg, data=splits.source);  # ';': the cell shows nothing (record returns the file's path)
"""),
]
write(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "notebooks", "03_basics.ipynb"), cells)
