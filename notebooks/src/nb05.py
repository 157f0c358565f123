import sys; import os; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbbuild import md, code, params, write

cells = [
md(r"""
# 5. AWQ: activation-aware weight quantization, for convolutions

AWQ (Lin et al., MLSys 2024) starts from an observation about large language models: a small
fraction of the *input channels* of a linear layer carry much larger activations than the rest,
and the weight columns that multiply them matter most. Quantizing those columns with a finer
effective step protects the output. AWQ does it without mixed precision: it scales the
columns up before quantization and scales the input down by the same factor.

## The equivalence transform

For a layer $Y = W X$ (a conv is the same with $X$ unfolded into patches) and any positive
per-input-channel vector $s \in \mathbb{R}^{C_\text{in}}$,

$$
Y = W X = \big(W \operatorname{diag}(s)\big)\big(\operatorname{diag}(s)^{-1} X\big).
$$

AWQ quantizes the *scaled* weight and keeps the division by $s$ in float:

$$
\hat Y = Q\big(W \operatorname{diag}(s)\big)\,\operatorname{diag}(s)^{-1} X .
$$

The division costs nothing at inference: it is folded offline into the op that *produces*
$X$. In a ResNet block, $\text{conv2}$ reads $\operatorname{relu}(\text{bn1}(\cdot))$; since
$\operatorname{relu}(z)/s = \operatorname{relu}(z/s)$ for $s>0$, dividing bn1's affine weight and
bias by $s$ does it exactly (`qlib.fold`, mode `"bn"`). Before quantization the transformed
float model computes **the same function** — we assert it below.

## Why it helps a salient channel

With per-output-channel quantization of step $\Delta$, the rounding error of a weight is
$\approx$ uniform in $[-\Delta/2, \Delta/2]$. Scaling column $j$ by $s_j > 1$ (and leaving the
row's maximum, hence $\Delta$, roughly unchanged) divides that column's effective error by
$s_j$: the output error contributed by channel $j$ is
$\;\approx \tfrac{\Delta}{s_j}\,\mathbb{E}|X_j|$. Channels with large $\mathbb{E}|X_j|$ (salient)
gain; the others lose a little as $\Delta$ grows. This pays only if a few channels are much
larger than the rest.

## The search

Per layer (or group of layers sharing an input), with the calibration statistic
$\bar x_j = \operatorname{mean}|X_j|$ over images and positions (train split),

$$
s(\alpha) = \frac{\bar x^{\alpha}}{\sqrt{\max_j \bar x_j^{\alpha} \cdot \min_j \bar x_j^{\alpha}}},
\qquad
\alpha^\star = \arg\min_{\alpha \in \{0, \tfrac{1}{20}, \dots, \tfrac{19}{20}\}}
\frac{\big\|Q(W \operatorname{diag}(s))\operatorname{diag}(s)^{-1}X - WX\big\|^2}{\|WX\|^2}.
$$

$\alpha = 0$ gives $s = 1$, plain RTN, so the chosen error is never above RTN's.
Then the **clipping search**: per output channel $i$, shrink the quantization range by a ratio
$c \in [0.5, 1]$ and keep the $c$ with the smallest error of that channel's *output*
$\|(\hat W_{i,:} - W_{i,:}) X\|^2$ — not of the weights. (Chapter 03's `range="mse"` clips to
minimise the *weight* error; it is the natural "RTN + clipping" baseline here.)
"""),
params("""
data = None
image_size = None
split = None
seed = None
smoke = None
bits_list = [4, 3, 2]        # per-channel settings
group_setting = [2, 64]      # (bits, group size); conv1 (147 columns) stays at 8 bits there
fidelity_limit = None        # agreement / KL on this many fidelity images (None: all)
seed_limit = 500             # the seed's (alpha, s) grid: on this many fidelity images
"""),
code("""
import copy, time, dataclasses
import numpy as np
import pandas as pd
import torch
from IPython.display import display, Markdown
from qlib import Config, data as qdata, models, measure, results, plots, plots_ptq, quant, rtn, calib, widgets, awq, gptq, export

plots.style()
torch.set_num_threads(2)
t_start = time.time()
cfg = Config.from_env(data=data, image_size=image_size, split=split, seed=seed, smoke=smoke)
splits = qdata.load(cfg)
plots.header(cfg, splits)
fp, _ = models.baseline(cfg, splits)
calib_x, calib_idx = calib.sample(splits, cfg.calib_size, cfg.seed)
held_x = qdata.to_float(splits.val.images[torch.randperm(len(splits.val), generator=torch.Generator().manual_seed(1))[:256]])
ref = measure.Reference(fp, splits, fidelity_limit=fidelity_limit)
print(f"FP32: test accuracy {ref.fp['accuracy']:.2%}; fidelity set {ref.fp['n_fidelity']} images; held-out (val) {len(held_x)}")
"""),
md(r"""
## Does a CNN have salient input channels?

The premise, measured: for the input of every conv and of the classifier, the per-channel
$\operatorname{mean}|X_j|$ (AWQ's salience statistic) on the calibration images, as the ratio of
the largest channel to the median one. The "~100x" often quoted for LLM activations is another
statistic: the per-channel $\max|X_j|$ measured in the SmoothQuant paper (Xiao et al.; dashed line
in the bar chart). For a like-with-like comparison, the text below also gives this network's
$\max|X_j|$ ratio.
"""),
code("""
stats = calib.input_stats(fp, calib_x)
fig = plots_ptq.outlier_heatmap(stats, "absmean")
fig, ratios = plots_ptq.outlier_ratio(stats, "absmean")
spread = pd.Series({n: float(np.percentile(v["absmean"], 99) / max(np.median(v["absmean"]), 1e-12)) for n, v in stats.items()})
max_ratios = [float(np.max(v) / max(np.median(v), 1e-12)) for v in (np.asarray(st["absmax"], dtype=float) for st in stats.values())]
salient = round(max(ratios), 1) >= 10   # a channel an order of magnitude above the median: something for AWQ to protect
display(Markdown(f"mean|X| largest / median channel: median over layers **{np.median(ratios):.1f}x**, largest "
                 f"**{max(ratios):.1f}x** (`{list(stats)[int(np.argmax(ratios))]}`); the 99th-percentile channel is "
                 f"at most **{spread.max():.1f}x** the median. The same ratio for max|X|, the statistic of the LLMs' ~100x: "
                 f"median over layers {np.median(max_ratios):.1f}x, largest {max(max_ratios):.1f}x. "
                 + ("No layer has a mean|X| channel even 10x its median: no isolated salient channels, so AWQ's scaling "
                    "has little to protect." if not salient else
                    f"{sum(round(r, 1) >= 10 for r in ratios)} layer(s) have a mean|X| channel at least 10x the median: salient "
                    "channels that AWQ's scaling can protect.")))
"""),
md("""
## The search on the baseline

One AWQ search per setting (the scales are searched per group; the clipping ratios per output
channel). Layers AWQ cannot scale without changing the function — the stem conv (it reads the
image) and the readers of the residual stream (each block's conv1, the downsample convs, fc)
in mode `"bn"` — get RTN with the same output-error clipping search.
"""),
code("""
settings = [(b, 0) for b in bits_list] + [tuple(group_setting)]
if cfg.smoke:
    settings = [(4, 0), tuple(group_setting)]   # smoke mode: the same cells on fewer settings
grid = dict(n_grid=4, n_clip=3) if cfg.smoke else {}   # smoke: a coarse alpha / clip grid (0 stays in it)
def qset(bits, group):
    return quant.QuantSettings(bits=bits, granularity="group" if group else "channel", group_size=group or 128)
def tag(bits, group):
    return f"W{bits} " + (f"g{group}" if group else "per-channel")
searches, search_s = {}, {}
for b, g in settings:
    t = time.time()
    searches[(b, g)] = awq.search(fp, calib_x, awq.AWQSettings(quant=qset(b, g), keep_8bit=("conv1",) if g else (), **grid))
    search_s[(b, g)] = time.time() - t
display(pd.DataFrame({tag(*k): r.alpha for k, r in searches.items()}).T.rename_axis("chosen α").round(2))
"""),
md(r"""
## The paper's Figure 1, done as an equivalence transform

One scaled layer (the one with the largest chosen $\alpha$ at the lowest per-channel bit width):
(a) its input statistic and the scale; (b) each weight column's range before and after
$W\operatorname{diag}(s)$; (c) the error each input channel contributes to the output, for RTN
and for AWQ's effective weight $Q(W\operatorname{diag}(s))\operatorname{diag}(s)^{-1}$. The
float model with the scales folded into bn1 is checked to be the baseline.
"""),
code("""
lowest = min(k for k in searches if k[1] == 0)
res_low = searches[lowest]
layer = max(res_low.alpha, key=lambda k: res_low.alpha[k] or 0)
w = fp.get_submodule(layer).weight
fig = plots_ptq.awq_scaling(w, res_low.scales[layer], stats[layer]["absmean"], qset(*lowest), layer)
scaled_fp = awq.apply_scales(fp, res_low)
with torch.no_grad():
    y0, y1 = fp(calib_x[:64]), scaled_fp(calib_x[:64])
equiv_err = float((y1 - y0).norm() / y0.norm())
display(Markdown(f"`{layer}`: chosen α = {res_low.alpha[layer]:.2f}, s in [{res_low.scales[layer].min():.2f}, "
                 f"{res_low.scales[layer].max():.2f}]. Transformed float model vs baseline: relative logit error **{equiv_err:.1e}**."))
"""),
md("""
## The α search, per layer

The search result is data: for every scaled layer, the output error at each $\\alpha$ divided by
the error at $\\alpha = 0$ (RTN). Below 1: scaling helps that layer.
"""),
code("""
fig = plots_ptq.awq_alpha_curves({tag(*k): r for k, r in searches.items()})
dec = pd.DataFrame([{"setting": tag(*k), "layer": n, "RTN": r.rtn_error[n], "scaled": r.scaled_error[n], "scaled+clip": r.final_error[n]}
                    for k, r in searches.items() for n in r.layers])
gain = dec.assign(scale_gain=dec.RTN / dec.scaled, clip_gain=dec.scaled / dec["scaled+clip"]).groupby("setting", sort=False)[["scale_gain", "clip_gain"]].median()
display(gain.rename(columns={"scale_gain": "median error ratio RTN / scaled", "clip_gain": "median ratio scaled / scaled+clip"}).round(3))
"""),
md("""
## Accuracy, agreement and KL vs bits

Six variants on the same quantizer (symmetric, min-max, per output channel or per group):
**RTN**; **RTN + clip** (`range="mse"`, clipping on the weight error); **AWQ** (scale
search + output-error clipping search), and **AWQ scales only** (no clipping search) to
separate the two; **GPTQ** (chapter 04's settings: act-order, 1% dampening); **AWQ + GPTQ** (AWQ's scales folded, then GPTQ).
Agreement and KL on the fidelity set, accuracy on the test split.
"""),
code("""
sweep, models_by = [], {}
for b, g in settings:
    q, keep, res = qset(b, g), (("conv1",) if g else ()), searches[(b, g)]
    gs = gptq.GPTQSettings(quant=q, keep_8bit=keep, act_order=True, static_groups=bool(g))
    cands = {("rtn", "RTN"): lambda: rtn.quantize_model(fp, q, keep),
             ("rtn", "RTN+clip (mse)"): lambda: rtn.quantize_model(fp, dataclasses.replace(q, range="mse"), keep),
             ("awq", "AWQ scales only"): lambda: awq.apply(fp, res, dataclasses.replace(res.settings, clip=False)),
             ("awq", "AWQ"): lambda: awq.apply(fp, res),
             ("gptq", "GPTQ"): lambda: gptq.quantize_model(fp, calib_x, gs, progress=False)[0],
             ("awq+gptq", "AWQ+GPTQ"): lambda: awq.awq_then_gptq(fp, calib_x, res, gs, progress=False)[0]}
    for (method, name), make in cands.items():
        t = time.time(); m = make(); secs = time.time() - t
        models_by[(name, b, g)] = m
        sweep.append({"method": method, "variant": name, "label": f"{name} {tag(b, g)}", "bits": b, "group": g,
                      "granularity": "group" if g else "channel", **ref.row(m), "quantize_s": secs})
df = pd.DataFrame(sweep)
display(df[["label", "accuracy", "agreement", "kl", "quantize_s"]].round(4))
"""),
code("""
import matplotlib.pyplot as plt
pc = df[df.group == 0]
fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
for ax, y in zip(axes, ("agreement", "accuracy", "kl")):
    plots.bits_sweep(pc, y=y, hue="variant", ax=ax, title=f"per-channel: {y}")
axes[1].axhline(ref.fp["accuracy"] * 100, color="k", ls=":", label="FP32")
handles, names = axes[1].get_legend_handles_labels()
for ax in axes:   # one key beside the panels, off the lines
    if ax.get_legend() is not None:
        ax.get_legend().remove()
fig.tight_layout()
fig.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, title="variant")
gt = df[df.group > 0]
display(Markdown(f"**{tag(*settings[-1])}** (conv1 at 8 bits):") if len(gt) else None)
display(gt[["label", "accuracy", "agreement", "kl"]].round(4) if len(gt) else None)
"""),
md("""
## Per-layer error: calibration and held-out inputs

The search minimises each layer's output error on the calibration images; the same errors on
256 held-out images (validation split) check that the choice generalises.
"""),
code("""
rows = []
for (b, g), res in searches.items():
    held_rtn = awq.layer_errors(fp, models_by[("RTN", b, g)], held_x)
    held_awq = awq.layer_errors(fp, models_by[("AWQ", b, g)], held_x, scaled_fp=awq.apply_scales(fp, res))
    rows += [{"setting": tag(b, g), "layer": n, "rtn": res.rtn_error[n], "awq": res.final_error[n],
              "rtn_held": held_rtn[n], "awq_held": held_awq[n]} for n in res.layers]
lerr = pd.DataFrame(rows)
worse_held = lerr[lerr.awq_held > lerr.rtn_held * (1 + 1e-6)]
display(Markdown(f"AWQ's error is below RTN's on **{(lerr.awq <= lerr.rtn).mean():.0%}** of (layer, setting) pairs on the "
                 f"calibration inputs and **{(lerr.awq_held <= lerr.rtn_held).mean():.0%}** on held-out inputs "
                 f"({len(worse_held)} pairs worse held-out" + (f", at most {(worse_held.awq_held / worse_held.rtn_held).max():.3f}x RTN)." if len(worse_held) else ").")))
"""),
md("""
## Explore: one α for every layer

In JupyterLab, move $\\alpha$, the bits and the group size: the panel folds $s(\\alpha)$ into
every scaled layer, quantizes with RTN (no clipping search) and shows every layer's output
error against $\\alpha = 0$, with the chosen layer starred, and the accuracy on 300 test images.
In the static book, the precomputed figure after it shows the searched result for every
setting of this chapter.
"""),
code("""
sub = splits.test.subset(torch.randperm(len(splits.test), generator=torch.Generator().manual_seed(0))[:300])
widgets.awq_panel(fp, calib_x[:64], sub, default_layer=layer);
"""),
code("""
fig = plots_ptq.awq_layer_errors(lerr, kept8={tag(*k): ["conv1"] for k in settings if k[1]})   # conv1 stays at 8 bits with groups
"""),
md(r"""
## The seed paper's "AWQ", as an ablation

The seed paper applied something it called AWQ to this kind of classifier: per layer, every
**output** channel of the weight multiplied by its activation magnitude$^\alpha$, the top 1%
of weights by magnitude multiplied by a factor $s$, then per-tensor int8 — with nothing
compensating either change. Its grid: $\alpha \in \{0.1,\dots,0.5\}$,
$s \in \{1.25, \dots, 2.0\}$. Neither step is an equivalence transform: the *float* model is
already a different function before any rounding. Below, each of the 20 settings is evaluated
twice, after int8 and as a float model, by agreement with the baseline on a subset of the
fidelity set (`seed_limit` images); beside them, the correct method's α grid (per layer, error
relative to $\alpha = 0$), whose float model is the baseline at every α.
"""),
code("""
act = awq.output_absmean(fp, calib_x)
ref_seed = measure.Reference(fp, splits, fidelity_limit=seed_limit)
alphas, ss = (awq.SEED_ALPHAS, awq.SEED_S) if not cfg.smoke else ((0.1, 0.5), (1.25, 2.0))
agree = lambda m: measure.fidelity(models.predict(m, ref_seed.fid_set), ref_seed.fp_fid)["agreement"]
seed_q = pd.DataFrame([[agree(awq.seed_paper_awq(fp, act, a, s)) for s in ss] for a in alphas], index=alphas, columns=ss)
seed_fp = pd.DataFrame([[agree(awq.seed_paper_awq(fp, act, a, s, quantize=False)) for s in ss] for a in alphas], index=alphas, columns=ss)
fig = plots_ptq.awq_grids(seed_q, seed_fp, searches[lowest])
with torch.no_grad():  # the mildest seed setting, as a float model, against the baseline
    y_seed = awq.seed_paper_awq(fp, act, min(alphas), min(ss), quantize=False)(calib_x[:64])
seed_float_err = float((y_seed - y0).norm() / y0.norm())
"""),
code("""
a_best, s_best = seed_q.stack().idxmax()
seed_row = ref.row(awq.seed_paper_awq(fp, act, a_best, s_best))
int8_row = ref.row(awq.seed_paper_awq(fp, act, 0.0, 1.0))   # alpha = 0, s = 1: plain per-tensor int8 RTN
display(Markdown(
    f"Seed transform as a float model, agreement with the baseline: **{seed_fp.values.min():.1%}–{seed_fp.values.max():.1%}** "
    f"over the grid ({len(ref_seed.fp_fid)} images); relative logit error of its mildest setting (α={min(alphas)}, s={min(ss)}) before any rounding: "
    f"**{seed_float_err:.1e}**, against {equiv_err:.0e} for the correct AWQ's float model. "
    f"The seed's best setting (α={a_best}, s={s_best}) after int8: accuracy **{seed_row['accuracy']:.2%}**, agreement "
    f"**{seed_row['agreement']:.2%}**, KL {seed_row['kl']:.4f}; plain per-tensor int8 RTN (α=0, s=1): accuracy "
    f"**{int8_row['accuracy']:.2%}**, agreement **{int8_row['agreement']:.2%}**, KL {int8_row['kl']:.4f}. "
    + (f"The ablation does not quantize better: its best setting is further from the baseline than plain int8 RTN "
       f"(agreement {seed_row['agreement']:.2%} vs {int8_row['agreement']:.2%})"
       + (", although its test accuracy is higher" if round(seed_row['accuracy'], 4) > round(int8_row['accuracy'], 4) else "")
       + "; it changes the network." if round(seed_row['agreement'], 4) < round(int8_row['agreement'], 4) else
       "Its best setting agrees with the baseline at least as well as plain int8 RTN here, but the float-model agreement above "
       "shows that it changes the network before any rounding.")))
"""),
md("""
## What it comes to
"""),
code("""
g = lambda v, b, gr=0: df[(df.variant == v) & (df.bits == b) & (df.group == gr)].iloc[0]
lines = []
for b in sorted({k[0] for k in settings if k[1] == 0}, reverse=True):
    r, c, a, ao, gp, ag = (g(v, b) for v in ("RTN", "RTN+clip (mse)", "AWQ", "AWQ scales only", "GPTQ", "AWQ+GPTQ"))
    lines.append(f"| W{b} | {r.agreement:.2%} | {c.agreement:.2%} | {ao.agreement:.2%} | {a.agreement:.2%} | {gp.agreement:.2%} | {ag.agreement:.2%} | {a.accuracy:.2%} |")
b2 = min(k[0] for k in settings if k[1] == 0)
r2, a2 = g("RTN", b2), g("AWQ", b2)
rec = (a2.agreement - r2.agreement) / max(1 - r2.agreement, 1e-9)
display(Markdown("| bits | RTN | RTN+clip (mse) | AWQ scales only | AWQ | GPTQ | AWQ+GPTQ | AWQ accuracy |\\n|---|---|---|---|---|---|---|---|\\n" + "\\n".join(lines) +
    f"\\n\\nAgreement with FP32 ({ref.fp['n_fidelity']} fidelity images); FP32 test accuracy {ref.fp['accuracy']:.2%}. "
    f"At W{b2}, AWQ alone recovers **{rec:.0%}** of RTN's lost agreement; AWQ+GPTQ {'beats' if g('AWQ+GPTQ', b2).agreement > g('GPTQ', b2).agreement else 'does not beat'} GPTQ alone "
    f"({g('AWQ+GPTQ', b2).agreement:.2%} vs {g('GPTQ', b2).agreement:.2%})."
    + "".join(f" With groups ({tag(b, gr)}), AWQ {'keeps' if g('AWQ', b, gr).agreement >= g('RTN', b, gr).agreement else '**loses to RTN**:'} "
              f"{g('AWQ', b, gr).agreement:.2%} vs RTN {g('RTN', b, gr).agreement:.2%}"
              + ("" if g('AWQ', b, gr).agreement >= g('RTN', b, gr).agreement else
                 " although its error is below RTN's on every layer (per-layer section above): a per-layer objective does not see how the "
                 "errors of successive layers compound") + "." for b, gr in settings if gr)))
"""),
code("""
# Signed figures print with Python's "z" option ("{:+z.2f}", PEP 682): one that rounds to zero reads +0.00, not -0.00.
# Verdicts compare the numbers as printed (points to 2 decimals, factors to 2 decimals), so a sentence and its number agree.
pcs = [b for b, gr in settings if gr == 0]   # the per-channel bit widths
sc_gain = gain["scale_gain"].median(); cl_gain = gain["clip_gain"].median()
so_vs_rtn = np.mean([g("AWQ scales only", b).agreement - g("RTN", b).agreement for b in pcs])
d_mse = {b: round((g("RTN+clip (mse)", b).agreement - g("RTN", b).agreement) * 100, 2) for b in pcs}
awq_vs_mse = [round((g("AWQ", b).agreement - g("RTN+clip (mse)", b).agreement) * 100, 2) for b in pcs]
mse_vs_rtn = np.mean(list(d_mse.values()))
# a collapsed row: agreement with FP32 below 25% (the model no longer follows its input); its share of the most predicted class
collapsed = [(b, gr) for b, gr in settings if g("RTN+clip (mse)", b, gr).agreement < 0.25]
def top_share(m):
    p = models.predict(m, ref.fid_set).argmax(1)
    return float(torch.bincount(p).max()) / len(p)
coll_pc = [b for b, gr in collapsed if gr == 0]
rest = [d_mse[b] for b in pcs if b not in coll_pc]
n_worse, n_better = sum(v < 0 for v in d_mse.values()), sum(v > 0 for v in d_mse.values())
verdict = ("gets worse, not better, at every per-channel bit width" if n_worse == len(pcs) else
           "gets better at every per-channel bit width" if n_better == len(pcs) else
           f"gets worse at {n_worse} and better at {n_better} of the {len(pcs)} per-channel bit widths")
coll_txt = (" RTN+clip collapses (agreement below 25%) at " + " and ".join(
    f"{tag(b, gr)} (accuracy {g('RTN+clip (mse)', b, gr).accuracy:.2%}, agreement {g('RTN+clip (mse)', b, gr).agreement:.2%}; "
    f"one class for {top_share(models_by[('RTN+clip (mse)', b, gr)]):.0%} of the fidelity images)" for b, gr in collapsed) + "."
    if collapsed else "")
beat_span = results.span(awq_vs_mse, "{:+z.2f}", " to ")
n_beat = sum(v > 0 for v in awq_vs_mse)
beat = ("AWQ beats it at every per-channel bit width" if n_beat == len(pcs) else
        "AWQ beats it at none of the per-channel bit widths" if n_beat == 0 else
        f"AWQ beats it at {n_beat} of {len(pcs)} per-channel bit widths")
why = ("but look where AWQ's own gain comes from" if n_beat else "and its two searches show why")
display(Markdown(
    f"**Does AWQ beat RTN with clipping here?** With *weight-error* clipping (`range=\\"mse\\"`), RTN {verdict} "
    f"({mse_vs_rtn:+z.2f} points of agreement on average over them"
    + (f"; {np.mean(rest):+z.2f} without the collapsed " + ", ".join(f"W{b}" for b in coll_pc) if coll_pc and rest else "")
    + f").{coll_txt} {beat} ({beat_span} points of agreement); {why}. "
    + (f"The scale search alone lowers the median layer's output error by a factor {sc_gain:.2f}" if round(sc_gain, 2) > 1 else
       f"The scale search alone leaves the median layer's output error where RTN has it (ratio {sc_gain:.2f})")
    + f" and moves agreement by {so_vs_rtn * 100:+z.2f} points on average — the largest mean|X| channel is "
    f"{np.median(ratios):.1f}x the median one in the median layer (at most {max(ratios):.1f}x), "
    + ("so there are no salient channels to protect. " if not salient else "so there are salient channels to protect. ")
    + (f"The output-error clipping search then lowers the error by a factor {cl_gain:.2f}" if round(cl_gain, 2) > 1 else
       f"The output-error clipping search then leaves the error unchanged (ratio {cl_gain:.2f})")
    + (": on this CNN, AWQ is essentially **clipping, chosen on the layer's output rather than on its weights**"
       + (" — as published CNN results suggest when there are no salient outlier channels." if not salient else ".")
       if cl_gain >= 1.1 and sc_gain < 1.1 else
       ": here the scale search does most of the work." if sc_gain >= 1.1 and cl_gain < 1.1 else
       ": both steps contribute." if sc_gain >= 1.1 else ": neither step changes much on this CNN.")))
"""),
md("""
## What must hold

Properties of the method are asserted (the chapter stops if one fails). The study's targets for
AWQ are measured and reported below, met or missed: they depend on the trained baseline, and
a retraining of it on the CPU (not bit-reproducible) moves them by a few images.
"""),
code("""
assert equiv_err <= 1e-4, equiv_err                       # AWQ's transform leaves the float model unchanged
for k, r in searches.items():                              # alpha = 0 is in the grid: never worse than RTN, per layer
    assert 0.0 in r.alphas
    for n in r.layers:
        assert r.final_error[n] <= r.rtn_error[n] * (1 + 1e-6), (k, n, r.final_error[n], r.rtn_error[n])
        assert r.final_error[n] <= r.scaled_error[n] * (1 + 1e-6), (k, n)   # clipping never increases it
assert seed_float_err > 1e-3, seed_float_err                 # the seed's transform changes the float model
print(f"ok ({time.time() - t_start:.0f} s for the chapter so far)")
"""),
code("""
n_fid, n_test = ref.fp["n_fidelity"], len(splits.test)
aw4, fp_acc = g("AWQ", 4), ref.fp["accuracy"]
msg = [f"AWQ W4 accuracy {aw4.accuracy:.2%} vs FP32 {fp_acc:.2%} ({(aw4.accuracy - fp_acc) * 100:+z.2f} points, "
       f"{round((aw4.accuracy - fp_acc) * n_test):+d} of {n_test:,} test images): "
       f"{'meets' if aw4.accuracy >= fp_acc - 0.005 else 'misses'} the target of at most 0.5 point below"]
for b in [b for b, gr in settings if gr == 0]:  # the per-channel settings this run measured
    a_, r_ = g("AWQ", b), g("RTN", b)
    msg.append(f"W{b}: AWQ agreement {a_.agreement:.2%} vs RTN {r_.agreement:.2%} ({round((a_.agreement - r_.agreement) * n_fid):+d} "
               f"of {n_fid:,} images; KL {a_.kl:.4f} vs {r_.kl:.4f}): {'meets' if a_.agreement >= r_.agreement else 'misses'} "
               "the target of at least RTN's")
msg.append("per-layer output error not above RTN's: on every layer with the calibration inputs (asserted above), and on "
           f"{(lerr.awq_held <= lerr.rtn_held * (1 + 1e-6)).mean():.0%} of (layer, setting) pairs with held-out inputs "
           f"({'meets' if worse_held.empty else 'misses'} the target)")
display(Markdown("**Targets (measured):** " + "; ".join(msg) + "."))
"""),
code("""
rows = []
for r in sweep:
    m, b, gr = models_by[(r["variant"], r["bits"], r["group"])], r["bits"], r["group"]
    row = {**r, "act_bits": 32, "engine": "float", "calib_seed": cfg.seed, "size_mb": measure.saved_size_mb(m),
           "settings": {"group_size": gr or None, "keep_8bit": ["conv1"] if gr else [],
                        **({"alpha": searches[(b, gr)].alpha, "search_s": search_s[(b, gr)]} if r["method"].startswith("awq") else {})}}
    if r["variant"] == "AWQ" and gr == 0 and b in (4, 3):
        row["variant_file"] = f"awq_w{b}"
        export.save(m, results.variant_path(cfg, row["variant_file"]))
    rows.append(row)
results.record("05_awq", rows, cfg, data=splits.source)
print(f"{len(rows)} rows; chapter time {time.time() - t_start:.0f} s")
"""),
]
write(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "notebooks", "05_awq.ipynb"), cells)
