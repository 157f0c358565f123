"""Shared figure style and the figures of the chapters.

Every function returns the matplotlib Figure (and draws it in a notebook); chapter-specific
figures live in their own section below. ``save`` writes a PNG atomically for the README.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

PALETTE = {"fp32": "#222222", "rtn": "#1f77b4", "gptq": "#d62728", "awq": "#2ca02c",
           "smoothquant": "#9467bd", "int8": "#8c564b", "qat": "#ff7f0e", "seed": "#7f7f7f"}


def style():
    """The book's figure style (seaborn's whitegrid, compact)."""
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 120, "savefig.bbox": "tight",
                         "axes.titleweight": "bold", "figure.autolayout": False})


def save(fig, path) -> Path:
    """Write a figure as PNG atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".fig.", suffix=".png")
    os.close(fd)
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path


def header(cfg, splits) -> str:
    """The first lines of every executed chapter: data source, split, image size, commit."""
    from IPython.display import Markdown, display

    from .results import git_commit

    text = (f"**Data:** {splits.source}  \n**Split:** `{cfg.split}` — train {len(splits.train):,} / "
            f"val {len(splits.val):,} / test {len(splits.test):,} images  \n"
            f"**Image size:** {cfg.image_size}x{cfg.image_size} · **seed** {cfg.seed} · "
            f"**git commit** `{git_commit()}`" + ("  \n**Smoke mode** (CI): tiny synthetic run, "
                                                   "numbers are not results." if cfg.smoke else ""))
    display(Markdown(text))
    return text


# --------------------------------------------------------------------------------------
# Chapter 01: data
# --------------------------------------------------------------------------------------

def gallery(split, classes, per_class: int = 8, seed: int = 0, title: str | None = None):
    """One row of random samples per class."""
    rng = np.random.default_rng(seed)
    k = len(classes)
    fig, axes = plt.subplots(k, per_class + 1, figsize=(per_class * 0.8 + 2.6, k * 0.8),
                             gridspec_kw={"width_ratios": [3.2] + [1] * per_class})
    labels = split.labels.numpy()
    for c in range(k):
        idx = np.flatnonzero(labels == c)
        pick = rng.choice(idx, size=min(per_class, len(idx)), replace=False) if len(idx) else []
        axes[c, 0].text(1.0, 0.5, f"{c}: {classes[c]}", ha="right", va="center", fontsize=7,
                        transform=axes[c, 0].transAxes)
        for j in range(per_class + 1):
            axes[c, j].axis("off")
        for j, i in enumerate(pick):
            axes[c, j + 1].imshow(split.images[i].permute(1, 2, 0).numpy())
    fig.subplots_adjust(wspace=0.05, hspace=0.08)
    if title:
        fig.suptitle(title, y=1.0)
    return fig


def class_distribution(splits):
    """Images per class in each split (seaborn bar chart)."""
    import pandas as pd
    import seaborn as sns

    rows = [{"class": f"{c}: {splits.classes[c][:28]}", "split": name, "images": int(n)}
            for name, s in splits for c, n in enumerate(np.bincount(s.labels.numpy(), minlength=splits.num_classes))]
    fig, ax = plt.subplots(figsize=(7.5, 7))
    sns.barplot(data=pd.DataFrame(rows), y="class", x="images", hue="split", ax=ax, orient="h")
    ax.set_title("Images per class and split")
    ax.set_ylabel("")
    ax.tick_params(axis="y", labelsize=7)
    return fig


def leakage_bars(table):
    """Groups (tracks) shared between splits, for each splitting scheme: a DataFrame with
    columns scheme, pair, shared."""
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(6, 2.8))
    sns.barplot(data=table, x="pair", y="shared", hue="scheme", ax=ax)
    ax.set_ylabel("tracks in both splits")
    ax.set_xlabel("")
    ax.set_title("Leakage: physical signs seen in training and in evaluation")
    for cont in ax.containers:
        ax.bar_label(cont, fontsize=8)
    return fig


def image_grid(images, titles=None, ncols: int = 8, size: float = 1.1, title: str | None = None):
    """A grid of uint8 HWC images."""
    n = len(images)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * size + (0.3 if title else 0)))
    for i, ax in enumerate(np.atleast_1d(axes).ravel()):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i])
            if titles:
                ax.set_title(titles[i], fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------------------
# Chapter 02: baseline
# --------------------------------------------------------------------------------------

def training_curves(hist):
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(hist["epoch"], hist["train_loss"], marker="o", color=PALETTE["fp32"])
    a.set_xlabel("epoch")
    a.set_ylabel("training loss (label-smoothed CE)")
    b.plot(hist["epoch"], np.array(hist["train_acc"]) * 100, marker="o", label="train (augmented)")
    b.plot(hist["epoch"], np.array(hist["val_acc"]) * 100, marker="s", label="val (unseen tracks)")
    b.set_xlabel("epoch")
    b.set_ylabel("top-1 accuracy (%)")
    b.legend()
    fig.suptitle("Training the FP32 baseline")
    fig.tight_layout()
    return fig


def confusion(conf, classes, title="Confusion matrix (test split, rows: true class)"):
    import seaborn as sns

    conf = np.asarray(conf, dtype=float)
    norm = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(8, 7))
    sns.heatmap(norm * 100, ax=ax, cmap="Blues", vmin=0, vmax=100, square=True,
                cbar_kws={"label": "% of the true class"},
                xticklabels=[str(i) for i in range(len(classes))],
                yticklabels=[f"{i}: {c[:24]}" for i, c in enumerate(classes)])
    ax.tick_params(axis="y", labelsize=7)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel("predicted class")
    ax.set_title(title)
    return fig


def per_class_accuracy(per_class, classes, title="Per-class accuracy (test split)"):
    vals = np.asarray(per_class) * 100
    fig, ax = plt.subplots(figsize=(7.5, 6))
    order = np.argsort(vals)
    ax.barh([f"{i}: {classes[i][:28]}" for i in order], vals[order], color=PALETTE["rtn"])
    ax.set_xlim(max(0, vals.min() - 5), 100.5)
    ax.set_xlabel("top-1 accuracy (%)")
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title(title)
    return fig


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
        name = f"symmetric [-{amax:g}, {amax:g}]" if sym else f"asymmetric [{lo:g}, {amax:g}]"
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
    ax.set_yscale("log")
    ax.set_ylabel(r"$\|W - Q(W)\|_F / \|W\|_F$")
    ax.set_xlabel("")
    ax.tick_params(axis="x", rotation=90, labelsize=7)
    ax.set_title("Weight quantization error per layer and granularity")
    return fig


def bits_sweep(df, y="agreement", hue="method", title=None, ax=None, ylim=None):
    """A metric vs weight bits per method/variant (DataFrame with columns bits, y, hue)."""
    import seaborn as sns

    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.6))
    else:
        fig = ax.figure
    d = df.copy()
    d[y] = d[y] * 100 if y in ("agreement", "accuracy", "test_agreement") else d[y]
    sns.lineplot(data=d, x="bits", y=y, hue=hue, marker="o", ax=ax)
    ax.set_xticks(sorted(d["bits"].unique()))
    ax.set_xlabel("weight bits")
    ax.set_ylabel({"agreement": "top-1 agreement with FP32 (%)", "accuracy": "test accuracy (%)",
                   "kl": "KL(FP32 || quantized)"}.get(y, y))
    if y == "kl":
        ax.set_yscale("log")
    if ylim:
        ax.set_ylim(*ylim)
    if title:
        ax.set_title(title)
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


def outlier_heatmap(stats: dict, key: str = "absmax", max_channels: int = 512):
    """Per-channel input magnitude of every conv/linear, each layer normalised by its median
    channel, channels sorted: a bright stripe would be an outlier channel."""
    names = list(stats)
    mat = np.full((len(names), max_channels), np.nan)
    for i, n in enumerate(names):
        v = np.asarray(stats[n][key], dtype=float)
        v = np.sort(v / max(np.median(v), 1e-12))[::-1][:max_channels]
        mat[i, :len(v)] = v
    fig, ax = plt.subplots(figsize=(11, 5))
    im = ax.imshow(np.log10(np.maximum(mat, 1e-3)), aspect="auto", cmap="magma", vmin=-1, vmax=2)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("input channels, sorted by magnitude (largest left)")
    cb = fig.colorbar(im, ax=ax)
    cb.set_label(r"$\log_{10}$(channel max|X| / median channel)")
    ax.set_title("Where are the outliers? Input channel magnitude per layer (100x = 2 on this scale)")
    return fig


def outlier_ratio(stats: dict, key: str = "absmax", llm_ratio: float = 100.0):
    """Largest / median input channel per layer, beside the LLM case (a few channels ~100x)."""
    names = list(stats)
    r = [float(np.max(v) / max(np.median(v), 1e-12)) for v in (np.asarray(stats[n][key], dtype=float) for n in names)]
    fig, ax = plt.subplots(figsize=(11, 3.4))
    ax.bar(range(len(names)), r, color=PALETTE["smoothquant"])
    ax.axhline(llm_ratio, color=PALETTE["gptq"], ls="--", label=f"LLM activations (SmoothQuant paper): ~{llm_ratio:g}x")
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_ylabel("max channel / median channel")
    ax.set_title("Activation outlier ratio per layer: ResNet-18 on traffic signs vs an LLM")
    ax.legend()
    return fig, r
