"""Figures of the post-training chapters: 03 (quantization basics), 04 (GPTQ), 05 (AWQ) and
06 (SmoothQuant); the style is ``plots``'s."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from .plots import PALETTE, spread_labels


# --------------------------------------------------------------------------------------
# Chapter 03: quantization basics
# --------------------------------------------------------------------------------------

def quantizer_staircase(bits: int = 3, amax: float = 1.0):
    """The uniform quantizer as a function (symmetric and asymmetric) and its error."""
    from .quant import dequantize_codes, qrange
    import torch

    x = torch.linspace(-1.3 * amax, 1.3 * amax, 2001)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    for sym, color, lo in ((True, PALETTE["rtn"], -amax), (False, PALETTE["gptq"], -0.4 * amax)):
        qmin, qmax = qrange(bits, sym)
        scale = 2 * amax / (2 ** bits - 1) if sym else (amax - lo) / (2 ** bits - 1)
        zero = 0.0 if sym else round(-lo / scale)
        q = torch.clamp(torch.round(x / scale) + zero, qmin, qmax)
        y = dequantize_codes(q.reshape(-1, 1), torch.tensor([[scale]]), torch.tensor([[zero]])).flatten()
        # symmetric codes [-2^(b-1), 2^(b-1) - 1] hold one more negative level than positive ones,
        # so the levels run from -(2^(b-1)) * scale to (2^(b-1) - 1) * scale: name max|w|, not a range
        name = f"symmetric, max|w| = {amax:g}" if sym else f"asymmetric [{lo:g}, {amax:g}]"
        a.plot(x, y, color=color, label=name)
        b.plot(x, (y - x) / scale, color=color, label=name)
    a.plot(x, x, color="k", lw=0.6, ls=":")
    a.set_xlabel("w")
    a.set_ylabel("Q(w)")
    a.set_title(f"{bits}-bit uniform quantizer")
    a.legend(fontsize=8)
    b.axhline(0.5, color="k", lw=0.6, ls="--")
    b.axhline(-0.5, color="k", lw=0.6, ls="--")
    b.set_xlabel("w")
    b.set_ylabel("error / step")
    b.set_title("rounding error: at most half a step inside the range")
    fig.tight_layout()
    return fig


def granularity_errors(df):
    """Relative weight error per layer for each granularity (DataFrame: layer, granularity, error)."""
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(11, 3.6))
    sns.barplot(data=df, x="layer", y="error", hue="granularity", ax=ax)
    ax.set_ylim(bottom=0)  # bars from zero, so their heights compare
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)  # beside the bars
    ax.set_ylabel(r"$\|W - Q(W)\|_F / \|W\|_F$")
    ax.set_xlabel("")
    ax.tick_params(axis="x", rotation=90, labelsize=7)
    ax.set_title("Weight quantization error per layer and granularity")
    return fig


def weight_distributions(model, max_layers: int = 21):
    """Per layer: the weight distribution (box plot of w / std) and its max/std ratio."""
    import torch

    names, data, ratios = [], [], []
    for name, m in model.named_modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            w = m.weight.detach().flatten()
            names.append(name)
            data.append((w / w.std()).numpy())
            ratios.append((w.abs().max() / w.std()).item())
    names, data, ratios = names[:max_layers], data[:max_layers], ratios[:max_layers]
    fig, ax = plt.subplots(figsize=(11, 3.6))
    ax.boxplot(data, whis=(0.1, 99.9), showfliers=True, flierprops={"markersize": 1, "alpha": 0.3})
    ax.set_xticks(range(1, len(names) + 1), names, rotation=90, fontsize=7)
    ax.set_ylabel("w / std(w)")
    ax.set_title("Weight distributions per layer (whiskers: 0.1%–99.9%, dots: beyond)")
    ax2 = ax.twinx()
    ax2.plot(range(1, len(names) + 1), ratios, "o-", color=PALETTE["gptq"], ms=3)
    ax2.set_ylabel("max|w| / std(w)", color=PALETTE["gptq"])
    ax2.grid(False)
    return fig


def _stat_name(key: str) -> str:
    """How the figures name an ``input_stats`` key: "max|X|", "mean|X|"."""
    return {"absmax": "max|X|", "absmean": "mean|X|"}.get(key, key)


def outlier_heatmap(stats: dict, key: str = "absmax", max_channels: int = 512):
    """Per-channel input magnitude (``key`` of ``stats``) of every conv/linear, each layer
    normalised by its median channel, channels sorted: a bright stripe would be an outlier channel."""
    names = list(stats)
    mat = np.full((len(names), max_channels), np.nan)
    for i, n in enumerate(names):
        v = np.asarray(stats[n][key], dtype=float)
        v = np.sort(v / max(np.median(v), 1e-12))[::-1][:max_channels]
        mat[i, :len(v)] = v
    fig, ax = plt.subplots(figsize=(11, 5))
    im = ax.imshow(np.log10(np.maximum(mat, 1e-3)), aspect="auto", cmap="magma", vmin=-1, vmax=2,
                   interpolation="nearest")
    ax.grid(False)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("input channels, sorted by magnitude (largest left)")
    cb = fig.colorbar(im, ax=ax)
    cb.set_label(rf"$\log_{{10}}$(channel {_stat_name(key)} / median channel)")
    ax.set_title(f"Where are the outliers? Input channel {_stat_name(key)} per layer (100x = 2 on this scale)")
    return fig


def outlier_ratio(stats: dict, key: str = "absmax", llm_ratio: float = 100.0):
    """Largest / median input channel per layer, beside the LLM case (SmoothQuant paper: a few
    channels' max|X| ~100x the median)."""
    names = list(stats)
    r = [float(np.max(v) / max(np.median(v), 1e-12)) for v in (np.asarray(stats[n][key], dtype=float) for n in names)]
    fig, ax = plt.subplots(figsize=(11, 3.4))
    ax.bar(range(len(names)), r, color=PALETTE["smoothquant"], label=f"this network: {_stat_name(key)}")
    ax.axhline(llm_ratio, color=PALETTE["gptq"], ls="--", label=f"LLM activations, max|X| (SmoothQuant paper): ~{llm_ratio:g}x")
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_ylabel(f"largest / median channel\n({_stat_name(key)})")
    ax.set_title("Activation outlier ratio per layer: ResNet-18 on traffic signs vs an LLM")
    ax.legend()
    return fig, r


# --------------------------------------------------------------------------------------
# Chapter 04: GPTQ
# --------------------------------------------------------------------------------------

def _lighter(color, amount: float = 0.55):
    """``color`` blended towards white (held-out bars beside calibration bars)."""
    import matplotlib.colors as mcolors
    r, g, b = mcolors.to_rgb(color)
    return (r + (1 - r) * amount, g + (1 - g) * amount, b + (1 - b) * amount)


def gptq_layer_errors(df, title: str = ""):
    """Per layer: RTN and GPTQ output error on calibration and held-out inputs (top), and the
    ratio RTN/GPTQ on each (bottom). DataFrame columns: layer, inputs, method, error."""
    import seaborn as sns

    layers = list(dict.fromkeys(df["layer"]))
    sets = list(dict.fromkeys(df["inputs"]))
    fig, axes = plt.subplots(2, 1, figsize=(11, 6.4), sharex=True)
    d = df.assign(series=df["method"].str.upper() + ", " + df["inputs"])
    pal = {f"{m}, {s}": c for m, base in (("RTN", PALETTE["rtn"]), ("GPTQ", PALETTE["gptq"]))
           for s, c in zip(sets, (base, _lighter(base)))}
    sns.barplot(data=d, x="layer", y="error", hue="series", order=layers, palette=pal, ax=axes[0])
    axes[0].set_yscale("log")
    axes[0].set_ylabel(r"$\|WX-\hat WX\|^2/\|WX\|^2$")
    axes[0].legend(fontsize=7, ncol=4)
    axes[0].set_title(title or "Per-layer output error")
    p = df.pivot_table(index=["layer", "inputs"], columns="method", values="error").reset_index()
    p["ratio"] = p["rtn"] / p["gptq"].clip(lower=1e-12)
    sns.barplot(data=p, x="layer", y="ratio", hue="inputs", order=layers, hue_order=sets,
                palette=[PALETTE["gptq"], "#999999"], ax=axes[1])
    axes[1].axhline(1, color="k", lw=0.8)
    axes[1].set_yscale("log")
    axes[1].set_ylabel("RTN error / GPTQ error")
    axes[1].set_xlabel("")
    axes[1].tick_params(axis="x", rotation=90, labelsize=7)
    fig.tight_layout()
    return fig


def ablations(df, metric: str = "agreement", title: str = ""):
    """One panel per ablation (DataFrame columns: ablation, value, metric): the metric vs the
    setting (categorical x)."""
    groups = list(dict.fromkeys(df["ablation"]))
    fig, axes = plt.subplots(1, len(groups), figsize=(3.6 * len(groups), 3.2), sharey=True,
                             squeeze=False)
    for ax, g in zip(axes[0], groups):
        d = df[df["ablation"] == g]
        ax.plot([str(v) for v in d["value"]], d[metric] * 100, "o-", color=PALETTE["gptq"])
        ax.set_title(g, fontsize=9)
        ax.set_xlabel(g)
    axes[0][0].set_ylabel({"agreement": "top-1 agreement with FP32 (%)",
                           "accuracy": "test accuracy (%)"}.get(metric, metric))
    if title:
        fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------
# Chapter 05: AWQ
# --------------------------------------------------------------------------------------

def awq_scaling(w, s, x_absmean, settings, layer: str = ""):
    """The AWQ paper's Figure 1 as an equivalence transform, for one layer: (a) mean|X_j| and
    the scale s_j per input channel; (b) the per-column range max|W_:,j| before and after
    W diag(s); (c) the error each input channel contributes to the output,
    mean|X_j| * ||W_hat_:,j - W_:,j||, for RTN and for AWQ (W_hat = Q(W diag(s)) diag(s)^-1)."""
    from . import quant
    w = w.detach().float()
    shape = (1, -1) + (1,) * (w.dim() - 2)
    ws = w * s.view(shape)
    rtn_hat = quant.quantize(w, settings).dequantize()
    awq_hat = quant.quantize(ws, settings).dequantize() / s.view(shape)
    col = lambda t: t.transpose(0, 1).reshape(t.shape[1], -1)  # noqa: E731
    x = x_absmean.float().numpy()
    order = np.argsort(-x)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    axes[0].plot(x[order], color=PALETTE["fp32"], label="mean|X_j|")
    ax2 = axes[0].twinx()
    ax2.plot(s.numpy()[order], color=PALETTE["awq"], label="s_j")
    ax2.set_ylabel("s_j", color=PALETTE["awq"]); ax2.grid(False)
    axes[0].set(xlabel="input channel (sorted by mean|X|)", ylabel="mean|X_j|", title=f"{layer}: activation and scale")
    axes[1].scatter(x, col(w).abs().amax(1).numpy(), s=6, color=PALETTE["rtn"], label="W")
    axes[1].scatter(x, col(ws).abs().amax(1).numpy(), s=6, color=PALETTE["awq"], label="W diag(s)")
    axes[1].set(xlabel="mean|X_j|", ylabel="max_i |W_ij|", title="column range before / after scaling")
    axes[1].legend(fontsize=8)
    e_rtn = (x * col(rtn_hat - w).norm(dim=1).numpy())
    e_awq = (x * col(awq_hat - w).norm(dim=1).numpy())
    axes[2].scatter(x, e_rtn, s=6, color=PALETTE["rtn"], label=f"RTN (sum {e_rtn.sum():.3g})")
    axes[2].scatter(x, e_awq, s=6, color=PALETTE["awq"], label=f"AWQ (sum {e_awq.sum():.3g})")
    axes[2].set(xlabel="mean|X_j|", ylabel="mean|X_j| * ||dW_:,j||", title=f"error per input channel, W{settings.bits}")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    return fig


def awq_alpha_curves(results: dict, ncols: int = 4):
    """Per scaled group: output error vs alpha relative to alpha = 0 (plain RTN), one line per
    setting in ``results`` ({label: AWQResult}); dots: the chosen alpha."""
    keys = list(next(iter(results.values())).errors)
    nrows = int(np.ceil(len(keys) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.4 * nrows), sharex=True, squeeze=False)
    for ax, k in zip(axes.flat, keys):
        for i, (label, r) in enumerate(results.items()):
            e = np.asarray(r.errors[k]) / max(r.errors[k][0], 1e-30)
            line, = ax.plot(r.alphas, e, label=label, color=plt.cm.viridis(i / max(len(results) - 1, 1)))
            a = r.alpha[k]
            if a is not None:
                ax.plot(a, e[r.alphas.index(a)], "o", color=line.get_color(), ms=5)
        ax.axhline(1, color="k", lw=0.6, ls=":")
        ax.set_title(k, fontsize=9)
    for ax in axes.flat[len(keys):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel(r"$\alpha$")
    for ax in axes[:, 0]:
        ax.set_ylabel("error / error(α=0)")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("AWQ's α search per layer: output error relative to RTN (dot: chosen α)", y=1.0)
    fig.tight_layout()
    return fig


def awq_grids(seed_q, seed_fp, result, seed_label: str = "agreement with FP32 (%)"):
    """Heat maps side by side: the seed's (alpha, s) grid after int8 and as a float model
    (DataFrames indexed by alpha, columns s), and the correct method's alpha grid
    (per layer, output error relative to alpha = 0, from an AWQResult)."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2), gridspec_kw={"width_ratios": [1, 1, 1.8]},
                             layout="constrained")
    vmin = min(seed_q.values.min(), seed_fp.values.min()) * 100
    for ax, df, t in ((axes[0], seed_q, "seed's AWQ\nafter per-tensor int8"),
                      (axes[1], seed_fp, "seed's transform\nas a float model (no rounding)")):
        im = ax.imshow(df.values * 100, cmap="viridis", vmin=vmin, vmax=100, aspect="auto")
        for (i, j), v in np.ndenumerate(df.values * 100):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=7, color="w" if v < (vmin + 100) / 2 else "k")
        ax.set_xticks(range(df.shape[1]), [f"{c:g}" for c in df.columns])
        ax.set_yticks(range(df.shape[0]), [f"{a:g}" for a in df.index])
        ax.set(xlabel="s (top-1% weights multiplied)", ylabel=r"$\alpha$", title=t)
        ax.grid(False)
    fig.colorbar(im, ax=axes[:2].tolist(), label=seed_label, shrink=0.9)
    keys = list(result.errors)
    mat = np.array([np.asarray(result.errors[k]) / max(result.errors[k][0], 1e-30) for k in keys])
    lg = np.log2(np.maximum(mat, 1e-30))
    lim = max(float(np.nanmax(np.abs(lg[np.isfinite(lg)]), initial=0.0)), 0.05)  # colours scaled to the data, 0 (= RTN) white
    im2 = axes[2].imshow(lg, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
    axes[2].set_yticks(range(len(keys)), keys, fontsize=7)
    axes[2].set_xticks(range(len(result.alphas))[::2], [f"{a:.2f}" for a in result.alphas[::2]], fontsize=7)
    for i, k in enumerate(keys):
        if result.alpha[k] is not None:
            axes[2].plot(result.alphas.index(result.alpha[k]), i, "k*", ms=7)
    axes[2].set(xlabel=r"$\alpha$", title=f"correct AWQ W{result.settings.quant.bits}: error vs α\n(★ chosen)")
    axes[2].grid(False)
    fig.colorbar(im2, ax=axes[2], label=r"$\log_2$ error / error(α=0)")
    return fig


def awq_layer_errors(df, kept8: dict | None = None):
    """Per layer, output error on the calibration inputs: RTN vs AWQ, one panel per setting
    (DataFrame columns: layer, setting, rtn, awq). ``kept8``: {setting: layers kept at 8 bits},
    drawn as hollow markers and left out of that panel's y range (their error is orders of
    magnitude below the rest)."""
    settings = list(dict.fromkeys(df["setting"]))
    kept8 = kept8 or {}
    fig, axes = plt.subplots(1, len(settings), figsize=(3.6 * len(settings), 3.6), sharey=False, squeeze=False)
    for ax, st in zip(axes[0], settings):
        d = df[df["setting"] == st]
        x = np.arange(len(d))
        k8 = d["layer"].isin(list(kept8.get(st, ()))).to_numpy()
        for col, name in (("rtn", "RTN"), ("awq", "AWQ")):
            y = d[col].to_numpy(dtype=float)
            ax.plot(x, np.where(k8, np.nan, y), "o-", ms=3, color=PALETTE[col], label=name)
        ax.set_yscale("log")
        if k8.any() and (~k8).any():
            lo, hi = np.nanmin(d.loc[~k8, ["rtn", "awq"]].to_numpy(dtype=float)), np.nanmax(d.loc[~k8, ["rtn", "awq"]].to_numpy(dtype=float))
            ax.set_ylim(lo / 1.6, hi * 1.6)
            for i in np.flatnonzero(k8):  # the 8-bit layers: a hollow marker at the bottom edge, off the scale
                ax.plot(x[i], lo / 1.45, "v", ms=5, mfc="none", color="#555555")
            ax.set_title(f"{st}\n({', '.join(d.loc[k8, 'layer'])} at 8 bits: hollow, off scale)", fontsize=9)
        else:
            ax.set_title(st, fontsize=9)
        ax.set_xticks(x, d["layer"], rotation=90, fontsize=7)
        ax.tick_params(axis="y", labelsize=8)
    axes[0, 0].set_ylabel("output NMSE (calibration)")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Precomputed: per-layer output error, RTN vs AWQ", y=1.02)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------
# Chapter 06: SmoothQuant
# --------------------------------------------------------------------------------------

def smoothing_heatmaps(stats: dict, scales, layers, max_channels: int = 512):
    """Per-channel input max|X| of a few layers before and after smoothing (``scales`` from
    ``smoothquant.search``), each row normalised by its median channel, channels in their
    original order: outlier channels are bright stripes; smoothing flattens them. One colour
    scale for both panels, symmetric around the median (0) and scaled to the data."""
    after = {n: stats[n]["absmax"].float().clone() for n in layers}
    for key, cons in scales.consumers.items():
        for c in cons:
            if c in after:
                after[c] = after[c] / scales.scales[key]
    alphas = ", ".join(sorted({f"{a:g}" for a in scales.alpha.values()}))
    panels = (("before smoothing: the baseline's inputs", {n: stats[n]["absmax"].float() for n in layers}),
              (f"after smoothing (alpha {alphas}, mode {scales.mode!r})", after))
    mats = []
    for _, vals in panels:
        mat = np.full((len(layers), max_channels), np.nan)
        for i, n in enumerate(layers):
            v = vals[n].numpy().astype(float)[:max_channels]
            mat[i, :len(v)] = v / max(np.median(v), 1e-12)
        mats.append(np.log10(np.maximum(mat, 1e-2)))
    finite = np.concatenate([m[np.isfinite(m)] for m in mats])
    lim = max(float(np.abs(finite).max(initial=0.0)), 0.05)
    fig, axes = plt.subplots(2, 1, figsize=(11, 1.0 + 0.45 * len(layers) * 2), sharex=True)
    for ax, (title, _), mat in zip(axes, panels, mats):
        im = ax.imshow(mat, aspect="auto", cmap="magma", vmin=-lim, vmax=lim, interpolation="nearest")
        ax.grid(False)
        ax.set_yticks(range(len(layers)), layers, fontsize=7)
        ax.set_title(title, fontsize=9)
    axes[-1].set_xlabel("input channel (original order)")
    cb = fig.colorbar(im, ax=list(axes))
    cb.set_label(r"$\log_{10}$(channel max|X| / median)")
    return fig


def alpha_sweep(df, baseline, fp_acc: float, modes=("shared",)):
    """Accuracy and agreement vs alpha, one line per activation bit width (``df`` rows with
    act_bits, alpha, mode, accuracy, agreement); dashed: no smoothing (``baseline`` rows)."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 3.8))
    colors = dict(zip(sorted(df["act_bits"].unique(), reverse=True), ("#1f77b4", "#ff7f0e", "#d62728", "#2ca02c")))
    for ax, y in zip(axes, ("accuracy", "agreement")):
        for (a_bits, mode), g in df[df["mode"].isin(modes)].groupby(["act_bits", "mode"]):
            g = g.sort_values("alpha")
            ax.plot(g["alpha"], g[y] * 100, "o-" if mode == modes[0] else "s:", color=colors[a_bits],
                    label=f"W8A{a_bits} smoothed ({mode})", ms=4)
        for _, r in baseline.iterrows():
            ax.axhline(r[y] * 100, color=colors[r["act_bits"]], ls="--", lw=0.9,
                       label=f"W8A{int(r['act_bits'])} no smoothing")
        if y == "accuracy":
            ax.axhline(fp_acc * 100, color="k", ls=":", lw=0.8, label="FP32")
        ax.set_xlabel(r"migration strength $\alpha$")
        ax.set_ylabel({"accuracy": "test accuracy (%)", "agreement": "top-1 agreement with FP32 (%)"}[y])
    key = {}  # one key for both panels: the FP32 line is drawn on the accuracy panel only
    for ax in axes[::-1]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            key.setdefault(lab, h)
    axes[1].legend(list(key.values()), list(key), fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    fig.tight_layout()
    return fig


def size_speed(df, title: str | None = None, xlabel: str = "file size (MB, log)"):
    """Each int8-engine variant at its file size (log) and throughput, labelled with its name and
    test accuracy, and its agreement with FP32 where ``df`` has an ``agreement`` column (``df``:
    rows with variant, size_mb, images_per_s, accuracy, and a colour key in ``color``). The
    labels are spread off the points and each other: the 11 MB int8 variants lie on top of one
    another."""
    agr = "agreement" in df.columns
    if title is None:
        title = "Size and speed on the int8 engine (label: test accuracy" + (", agreement with FP32)" if agr else ")")
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    marks = [ax.scatter(r["size_mb"], r["images_per_s"], s=60, color=PALETTE.get(r["color"], "#555555"), zorder=3)
             for _, r in df.iterrows()]
    texts = [ax.text(r["size_mb"], r["images_per_s"],
                     f"{r['variant']}\n" + (f"acc. {r['accuracy']:.2%}, agr. {r['agreement']:.2%}" if agr else f"{r['accuracy']:.2%}"),
                     fontsize=7)
             for _, r in df.iterrows()]
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.set_xticks([2, 3, 5, 10, 20, 45])
    lo, hi = df["images_per_s"].min(), df["images_per_s"].max()
    ax.set_ylim(lo - 0.25 * (hi - lo), hi + 0.3 * (hi - lo))  # room for the labels inside the axes
    ax.set_xlabel(xlabel)
    ax.set_ylabel("images / s (batch 64, 2 threads)")
    ax.set_title(title)
    fig.tight_layout()
    spread_labels(ax, texts, df["size_mb"].to_numpy(), df["images_per_s"].to_numpy(), expand=(1.2, 1.4), markers=marks)
    return fig
