"""Figures of chapters 01 (the data) and 02 (the FP32 baseline); the style is ``plots``'s."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from .plots import PALETTE


def short(name: str, n: int) -> str:
    """``name`` cut to at most ``n`` characters, an ellipsis marking a cut."""
    return name if len(name) <= n else name[:n - 1].rstrip() + "…"


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

    rows = [{"class": f"{c}: {short(splits.classes[c], 28)}", "split": name, "images": int(n)}
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
                yticklabels=[f"{i}: {short(c, 24)}" for i, c in enumerate(classes)])
    ax.tick_params(axis="y", labelsize=7)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel("predicted class")
    ax.set_title(title)
    return fig


def per_class_accuracy(per_class, classes, title="Per-class accuracy (test split)"):
    vals = np.asarray(per_class) * 100
    fig, ax = plt.subplots(figsize=(7.5, 6))
    order = np.argsort(vals)
    ax.barh([f"{i}: {short(classes[i], 28)}" for i in order], vals[order], color=PALETTE["rtn"])
    ax.set_xlim(max(0, vals.min() - 5), 100.5)
    ax.set_xlabel("top-1 accuracy (%)")
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title(title)
    return fig
