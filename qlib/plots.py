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
from adjustText import adjust_text

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
    """The first lines of every executed chapter: data source, split, image size, commit, and
    the machine it ran on (its times are this machine's; see ``models.machine``)."""
    from IPython.display import Markdown, display

    from .models import describe_machine, machine
    from .results import git_commit

    text = (f"**Data:** {splits.source}  \n**Split:** `{cfg.split}` — train {len(splits.train):,} / "
            f"val {len(splits.val):,} / test {len(splits.test):,} images  \n"
            f"**Image size:** {cfg.image_size}x{cfg.image_size} · **seed** {cfg.seed} · "
            f"**git commit** `{git_commit()}`  \n"
            f"**Machine:** {describe_machine(machine())}" + ("  \n**Smoke mode** (CI): tiny synthetic run, "
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


# --------------------------------------------------------------------------------------
# Chapter 08: results
# --------------------------------------------------------------------------------------

# methods of the results rows that have a colour of their own (the rest match a PALETTE key)
METHOD_COLORS = {"awq+gptq": "#17becf", "lsq": "#bcbd22"}


def _method_color(m: str) -> str:
    m = str(m).lower()
    if m in METHOD_COLORS:
        return METHOD_COLORS[m]
    for key in ("gptq", "awq", "smoothquant", "qat", "int8", "rtn", "fp32"):
        if key in m:
            return PALETTE[key]
    return "#555555"


def pareto_front(x, y):
    """Indices of the points not dominated by another (smaller x and larger y are better)."""
    order = np.lexsort((-np.asarray(y), np.asarray(x)))
    front, best = [], -np.inf
    for i in order:
        if y[i] > best:
            front.append(i)
            best = y[i]
    return front


def _plain_log_ticks(axis) -> None:
    """Label a log axis with plain numbers (3, not 3x10^0): every decade, and the 2, 3 and 5
    minor ticks."""
    axis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "235" else ""))


def _marker_boxes(ax, collections) -> list:
    """The drawn extent of each marker of ``collections`` (scatters), as boxes in data
    coordinates (what adjustText's ``objects`` takes): a marker of size ``s`` (points^2) spans
    about sqrt(s) points."""
    from matplotlib.transforms import Bbox

    to_data, boxes = ax.transData.inverted(), []
    for c in collections:
        sizes = c.get_sizes()
        for k, xy in enumerate(c.get_offsets()):
            cx, cy = ax.transData.transform(xy)
            half = np.sqrt(sizes[k % len(sizes)]) / 2 * ax.figure.dpi / 72
            boxes.append(Bbox(to_data.transform([(cx - half, cy - half), (cx + half, cy + half)])))
    return boxes


def _key_below(fig, ax, ncol: int) -> None:
    """Draw ``ax``'s key for the whole figure, below its panels, in at most ``ncol`` columns
    (``fig`` uses constrained layout, which makes room for it); the figure grows by the key's
    rows, so the panels keep their height."""
    handles, labels = ax.get_legend_handles_labels()
    ncol = max(1, min(len(labels), ncol))
    fig.set_figheight(fig.get_figheight() + 0.22 * -(-len(labels) // ncol))
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=7)


def _spread_labels(ax, texts, x, y, expand, markers=()) -> None:
    """Move ``texts`` off the points ``(x, y)``, off the drawn ``markers`` (scatters) and off
    each other (adjustText), each tied to where it started by a thin line. Call it once the
    figure's layout is final (after ``tight_layout``, or a draw that fixes a constrained
    layout): it works in display space. The markers push harder than adjustText's
    default and a label may travel as far as it must: with the defaults, labels beside a large
    marker stayed on it. Further passes (at most two) run while a label still covers a marker."""
    boxes = _marker_boxes(ax, markers)
    kw = dict(force_static=(0.3, 0.6), max_move=None) if boxes else {}
    lines, start = [], np.array([t.get_position() for t in texts]).reshape(-1, 2)  # where each label points
    renderer, shown = ax.figure.canvas.get_renderer(), [b.transformed(ax.transData) for b in boxes]
    for _ in range(3):
        for line in lines:  # the second pass draws its own lines, from where the labels end to the points
            line.remove()
        _, lines = adjust_text(texts, x=x, y=y, target_x=start[:, 0], target_y=start[:, 1], objects=boxes or None, ax=ax, expand=expand,
                               arrowprops=dict(arrowstyle="-", color="gray", lw=0.5), **kw)
        if not any(t.get_window_extent(renderer).overlaps(b) for t in texts for b in shown):
            break


def tradeoff(df, x: str, y: str = "accuracy", xlabel: str = "", logx: bool = True, title: str = "",
             fp_y=None, front: str = "min"):
    """Every variant a point (colour: method), with the Pareto front drawn through the best;
    the front's points are numbered at the point and named in a key beside the axes (names at
    the points would collide where the front is dense). ``fp_y`` (accuracy, or 1.0 for
    agreement) zooms on the variants within 12 points of FP32; a front point below that range
    is named in the key only."""
    d = df.dropna(subset=[x, y]).reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(11, 5.2))
    hidden, floor = 0, -np.inf
    if fp_y is not None and y in ("accuracy", "agreement"):  # zoom on the variants that work
        floor = (fp_y if y == "accuracy" else 1.0) - 0.12
        hidden = int((d[y] < floor).sum())
        ax.set_ylim(floor * 100, max(d[y].max(), fp_y if y == "accuracy" else 1.0) * 100 + 1.0)
    groups = sorted(d.groupby("method"), key=lambda mg: -len(mg[1]))  # small groups drawn on top
    for z, (method, g) in enumerate(groups):
        ax.scatter(g[x], g[y] * 100, color=_method_color(method), label=method, s=28, alpha=0.85,
                   edgecolor="white", linewidth=0.5, zorder=2 + z)
    xs = d[x].to_numpy() if front == "min" else -d[x].to_numpy()
    idx = pareto_front(xs, d[y].to_numpy())
    fr = d.iloc[idx].sort_values(x)
    ax.plot(fr[x], fr[y] * 100, color="k", lw=1, ls="--", label="Pareto front")
    key, numbers = [], []
    for i, (_, r) in enumerate(fr.iterrows(), 1):
        below = r[y] < floor  # a number drawn outside the axes would stretch the figure's layout
        if not below:
            numbers.append(ax.text(r[x], r[y] * 100, str(i), fontsize=7, fontweight="bold", zorder=20))
        value = f"{r[x]:.2f} MB" if "mb" in x else f"{r[x]:.3g}"
        key.append(f"{i}  {r.get('label', r['method'])}  ({value}, {r[y]:.1%})" + ("  below the range" if below else ""))
    ax.text(1.02, 1.0, "Pareto front\n" + "\n".join(key), transform=ax.transAxes, fontsize=7,
            va="top", ha="left", family="monospace")
    if fp_y is not None:
        ax.axhline(fp_y * 100, color=PALETTE["fp32"], lw=0.8, ls=":", label="FP32")
    if logx:
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis)
    if hidden:
        ax.text(0.01, 0.01, f"{hidden} variants lie below this range (see the chapters)", transform=ax.transAxes,
                fontsize=7, color="#555555")
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel({"accuracy": "test accuracy (%)", "agreement": "top-1 agreement with FP32 (%)"}.get(y, y))
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    shown = d[d[y] >= floor]  # the front is dense near the smallest files
    _spread_labels(ax, numbers, shown[x].to_numpy(), shown[y].to_numpy() * 100, expand=(1.6, 1.8))
    return fig


# --------------------------------------------------------------------------------------
# Chapter 07: quantization-aware training
# --------------------------------------------------------------------------------------

def qat_curves(curves: dict, starts: dict | None = None, title: str = "QAT training curves",
               relative_loss: bool = False):
    """``curves``: label -> history of ``qat.fit`` (per epoch: steps, train_loss, val_acc);
    ``starts``: label -> validation accuracy at step 0 (the PTQ starting point). Validation
    accuracy and training loss against optimizer steps. The loss is on a log axis (losses of
    different configurations differ by orders of magnitude); ``relative_loss`` divides each
    curve by its first epoch's value instead, for runs trained on different losses, whose
    levels cannot be compared but whose changes can."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    for i, (label, h) in enumerate(curves.items()):
        color = plt.cm.tab10(i % 10)
        steps = np.cumsum(h["steps"])
        xs, ys = list(steps), [v * 100 for v in h["val_acc"]]
        if starts and label in starts:
            xs, ys = [0] + xs, [starts[label] * 100] + ys
        a.plot(xs, ys, marker="o", color=color, label=label)
        loss = np.asarray(h["train_loss"], dtype=float)
        b.plot(steps, loss / loss[0] if relative_loss else loss, marker="o", color=color, label=label)
    a.set_xlabel("optimizer steps")
    a.set_ylabel("val accuracy (%)")
    a.set_title("validation accuracy (step 0: the PTQ start)", fontsize=9)
    b.set_xlabel("optimizer steps")
    if relative_loss:
        b.axhline(1.0, color="gray", lw=0.8)
        b.set_ylabel("training loss / first epoch's")
        b.set_title("training loss, each relative to its first epoch", fontsize=9)
    else:
        b.set_yscale("log")
        b.set_ylabel("training loss (epoch mean, log)")
        b.set_title("training loss", fontsize=9)
    a.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def recovery_curves(curves: dict, draws: dict | None = None, target: float = 0.5,
                    budget_min: float | None = None, band: tuple | None = None,
                    title: str = "Recovery of PTQ's agreement loss against training time"):
    """``curves``: label -> rows of ``lsq.lsq_curve`` (step 0 = the PTQ model; ``train_seconds``,
    ``agreement``, ``kl``, ``recovered``). Left: the share of PTQ's agreement loss won back
    (``measure.recovery``) against minutes of training, with the ``target`` share dashed and
    ``draws`` (label -> list of ``(minutes, recovery)``: short runs with other seeds) as open
    markers. Right: KL to FP relative to PTQ's. ``budget_min`` draws the time limit. ``band``
    ``(label, low, high)``: a range of recoveries shaded across the left panel (a null: what
    untrained changes of the same size reach)."""
    if band is not None and not (len(band) == 3 and band[1] <= band[2]):
        raise ValueError(f"band={band!r}: expected (label, low, high) with low <= high")
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    if band is not None:
        a.axhspan(band[1] * 100, band[2] * 100, color="gray", alpha=0.18, lw=0, label=band[0])
    for i, (label, rows) in enumerate(curves.items()):
        color = plt.cm.tab10(i % 10)
        a0, k0 = rows[0]["agreement"], rows[0]["kl"]
        mins = [r["train_seconds"] / 60 for r in rows]
        rec = [r["recovered"] * 100 for r in rows]
        a.plot(mins, rec, marker="o", color=color, label=f"{label} (PTQ {a0:.2%})")
        b.plot(mins, [r["kl"] / max(k0, 1e-12) for r in rows], marker="o", color=color)
        for j, (m, r) in enumerate((draws or {}).get(label, [])):
            a.scatter([m], [r * 100], s=40, facecolors="none", edgecolors=[color], zorder=3,
                      label=f"{label}: short runs, one per seed" if j == 0 else None)
    a.axhline(target * 100, ls="--", color="black", lw=1, label=f"target: {target:.0%} of the loss")
    a.axhline(0, color="gray", lw=0.8)
    b.axhline(1, color="gray", lw=0.8)
    for ax in (a, b):
        if budget_min is not None:
            ax.axvline(budget_min, ls=":", color="gray", lw=1)
            ax.annotate(f"{budget_min:g}-min limit", (budget_min, 0.02), xycoords=("data", "axes fraction"),
                        ha="right", va="bottom", fontsize=7, color="gray", rotation=90)
        ax.set_xlabel("minutes of training (measurements excluded)")
    a.set_ylabel("recovered share of PTQ's loss (%)")
    a.set_title("agreement with FP32 on the held-out images", fontsize=9)
    b.set_ylabel("KL to FP32 / PTQ's KL")
    b.set_title("KL to FP32 (1 = the PTQ start)", fontsize=9)
    # One key for both panels (the curves share their colours): inside a panel, a key of this
    # length covers the target line and the curves.
    _key_below(fig, a, ncol=2)
    fig.suptitle(title)
    return fig


def qat_vs_ptq(df, title: str = "What training buys: agreement with FP32, PTQ vs QAT"):
    """Grouped bars: ``df`` with columns config, kind ("PTQ"/"QAT"), agreement; each bar is the
    loss in agreement (1 - agreement, in %) that QAT must win back, on a linear axis from 0 so
    that bar lengths compare."""
    configs = list(dict.fromkeys(df["config"]))
    kinds = list(dict.fromkeys(df["kind"]))
    fig, ax = plt.subplots(figsize=(7, 3.4))
    w = 0.8 / len(kinds)
    colors = {"PTQ": PALETTE["gptq"], "QAT": PALETTE["qat"]}
    for j, k in enumerate(kinds):
        vals = [float(df[(df.config == c) & (df.kind == k)]["agreement"].iloc[0]) for c in configs]
        xs = np.arange(len(configs)) + (j - (len(kinds) - 1) / 2) * w
        ax.bar(xs, [(1 - v) * 100 for v in vals], w, label=k, color=colors.get(k))
        for x, v in zip(xs, vals):
            ax.annotate(f"{v:.2%}", (x, (1 - v) * 100), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(configs)), configs)
    ax.set_ylabel("disagreement with FP32 (%)")
    ax.set_ylim(0, None)
    ax.margins(y=0.12)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def disagreement_confidence(fp_prob, masks: dict, title: str = "Where the quantized models "
                            "disagree with FP32: FP32's own confidence there"):
    """Cumulative distribution of FP32's top-1 probability ``fp_prob`` (held-out images) over
    all images and over the images where each model of ``masks`` ({label: bool mask of its
    disagreements}) picks another class. Disagreements piled up at low FP32 confidence sit on
    FP32's own decision boundary."""
    fig, ax = plt.subplots(figsize=(7, 3.4))
    p = np.asarray(fp_prob, dtype=float)
    curves = {"all held-out images": np.ones_like(p, dtype=bool), **{k: np.asarray(v, bool) for k, v in masks.items()}}
    for i, (label, m) in enumerate(curves.items()):
        v = np.sort(p[m])
        if not len(v):
            continue
        ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post",
                label=f"{label} (n={len(v):,})", color="black" if i == 0 else None,
                lw=2 if i == 0 else 1.3, ls="--" if i == 0 else "-")
    ax.set_xlabel("FP32's top-1 probability")
    ax.set_ylabel("share of images at or below")
    ax.set_xlim(0, 1.0)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def scale_vs_margins(kl_df, ref_margin, errors: dict, bin_width: float = 0.5, min_images: int = 20,
                     title: str = "What the fine-tune changes: the logits' scale, not the margins"):
    """Two panels. Left: each model's KL to FP32 (``kl_df``: columns model, kl, kl_at_tau) as it
    is and after dividing its logits by its best single temperature — the part a temperature
    removes changes no answer. Right: the root-mean-square error of each model's margin
    (``errors``: {"<config> PTQ" or "<config> QAT": per-image error, from
    ``measure.margin_error``}; one colour per config, PTQ dashed) in bins of FP32's own
    margin ``ref_margin`` (bins of ``bin_width`` holding at least ``min_images`` images), with the
    line where the error equals the margin: images whose error
    goes below minus their margin change answer, so a model flips images where its curve is
    near or above that line."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [1, 1.3]})
    ys = np.arange(len(kl_df))
    a.barh(ys + 0.2, kl_df["kl"], 0.4, label="KL", color=PALETTE["gptq"])
    a.barh(ys - 0.2, kl_df["kl_at_tau"], 0.4, label="KL at its best temperature", color=PALETTE["rtn"])
    a.set_yticks(ys, kl_df["model"])
    a.invert_yaxis()
    a.set_xlabel("KL(FP32 || model), held-out images")
    a.legend(fontsize=7, loc="upper right")
    m = np.asarray(ref_margin, dtype=float)
    edges = np.arange(0.0, np.ceil(m.max() / bin_width) * bin_width + bin_width, bin_width)
    idx = np.digitize(m, edges) - 1
    full = [i for i in range(len(edges) - 1) if (idx == i).sum() >= min_images]
    mids = [(edges[i] + edges[i + 1]) / 2 for i in full]
    colors, highest = {}, 0.0
    for label, err in errors.items():
        e = np.asarray(err, dtype=float)
        rms = [float(np.sqrt(np.mean(e[idx == i] ** 2))) for i in full]
        highest = max([highest, *rms])
        config = label.rsplit(" ", 1)[0]
        colors.setdefault(config, f"C{len(colors)}")
        b.plot(mids, rms, marker="o", ms=3, lw=1.3, color=colors[config],
               ls="--" if label.endswith("PTQ") else "-", label=label)
    top = max(mids) if mids else 1.0
    b.plot([0, top], [0, top], color="black", lw=0.8, ls=":", label="error = FP32's margin")
    b.set_xlabel(f"FP32's margin (top-1 minus top-2 logit), bins of {bin_width:g} "
                 f"(with at least {min_images} images)")
    b.set_ylabel("RMS error of the model's margin")
    b.set_xlim(0, None)
    b.set_ylim(0, max(1.8 * highest, 0.5))  # the diagonal runs on above: only its crossing matters
    b.legend(fontsize=7, ncol=3, loc="upper right")
    fig.suptitle(title, fontsize=10, fontweight="bold")
    fig.tight_layout()
    return fig


def noise_and_flips(df, sd_needed: dict | None = None,
                    title: str = "Disagreement follows the spread of the margin error"):
    """Two panels from ``df`` (one row per model: model, a_bits, kind "PTQ"/"QAT", w_bits, sd,
    predicted, disagreements; from ``measure.noise_model``). Left: the spread of the margin
    error against activation bits, PTQ as lines (one per weight width), QAT as markers, and the
    spread each config would need to win back half of PTQ's loss (``sd_needed``: {label: sd}),
    as dashed lines named in the key below the panels. Right: the disagreements the spread
    predicts against those measured, with the diagonal."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.4), layout="constrained")
    colors = {}
    for w, d in df.groupby("w_bits", sort=True):
        colors[w] = f"C{len(colors)}"
        p = d[d.kind == "PTQ"].sort_values("a_bits")
        a.plot(p.a_bits, p.sd, marker="o", color=colors[w], label=f"PTQ W{w}")
        q = d[d.kind == "QAT"]
        a.scatter(q.a_bits, q.sd, marker="*", s=120, color=colors[w], edgecolor="black", zorder=3,
                  label=f"LSQ fine-tune W{w}")
    for i, (label, sd) in enumerate((sd_needed or {}).items()):  # named in the legend: targets can lie on one line
        a.axhline(sd, color="gray", ls=(0, (4, 2 + i)), lw=1, label=label)
    a.set_xticks(sorted(df.a_bits.unique()))
    a.set_xlabel("activation bits")
    a.set_ylabel("sd of the margin error (FP32 unsure)")
    a.set_ylim(0, None)
    top = 1.1 * float(max(df.disagreements.max(), df.predicted.max(), 1))
    texts, marks = [], []
    for _, r in df.iterrows():
        qat_ = r.kind == "QAT"
        marks.append(b.scatter(r.disagreements, r.predicted, color=colors[r.w_bits], marker="*" if qat_ else "o",
                               s=110 if qat_ else 30, edgecolor="black" if qat_ else None, zorder=3))
        texts.append(b.text(r.disagreements, r.predicted, r.model, fontsize=6.5))
    b.plot([0, top], [0, top], color="black", lw=0.8, ls=":", label="predicted = measured")
    b.set_xlim(0, top)
    b.set_ylim(0, top)
    b.set_xlabel("held-out images that disagree with FP32 (measured)")
    b.set_ylabel("predicted from the spread alone")
    b.legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=10, fontweight="bold")
    _key_below(fig, a, ncol=4)  # the left panel's key: inside it, it hid points and lines
    fig.draw_without_rendering()  # the layout is final before the labels are placed in display space
    fig.set_layout_engine("none")
    _spread_labels(b, texts, df.disagreements.to_numpy(), df.predicted.to_numpy(), expand=(1.3, 1.6),  # the W2 cluster
                   markers=marks)
    return fig


# --------------------------------------------------------------------------------------
# Chapter 06: SmoothQuant
# --------------------------------------------------------------------------------------

def smoothing_heatmaps(stats: dict, scales, layers, max_channels: int = 512):
    """Per-channel input max|X| of a few layers before and after smoothing (``scales`` from
    ``smoothquant.search``), each row normalised by its median channel, channels in their
    original order: outlier channels are bright stripes; smoothing flattens them."""
    after = {n: stats[n]["absmax"].float().clone() for n in layers}
    for key, cons in scales.consumers.items():
        for c in cons:
            if c in after:
                after[c] = after[c] / scales.scales[key]
    fig, axes = plt.subplots(2, 1, figsize=(11, 1.0 + 0.45 * len(layers) * 2), sharex=True)
    for ax, (title, vals) in zip(axes, (("before", {n: stats[n]["absmax"].float() for n in layers}),
                                        ("after", after))):
        mat = np.full((len(layers), max_channels), np.nan)
        for i, n in enumerate(layers):
            v = vals[n].numpy().astype(float)[:max_channels]
            mat[i, :len(v)] = v / max(np.median(v), 1e-12)
        im = ax.imshow(np.log10(np.maximum(mat, 1e-2)), aspect="auto", cmap="magma", vmin=-1, vmax=1.5,
                       interpolation="nearest")
        ax.set_yticks(range(len(layers)), layers, fontsize=7)
        ax.set_title(f"{title} smoothing (alpha per layer: "
                     f"{', '.join(sorted({f'{a:g}' for a in scales.alpha.values()}))}, mode {scales.mode!r})",
                     fontsize=9)
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
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
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
    im2 = axes[2].imshow(np.log2(mat), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    axes[2].set_yticks(range(len(keys)), keys, fontsize=7)
    axes[2].set_xticks(range(len(result.alphas))[::2], [f"{a:.2f}" for a in result.alphas[::2]], fontsize=7)
    for i, k in enumerate(keys):
        if result.alpha[k] is not None:
            axes[2].plot(result.alphas.index(result.alpha[k]), i, "k*", ms=7)
    axes[2].set(xlabel=r"$\alpha$", title=f"correct AWQ W{result.settings.quant.bits}: error vs α\n(★ chosen)")
    axes[2].grid(False)
    fig.colorbar(im2, ax=axes[2], label=r"$\log_2$ error / error(α=0)")
    return fig


def awq_layer_errors(df):
    """Per layer, output error on the calibration inputs: RTN vs AWQ, one panel per setting
    (DataFrame columns: layer, setting, rtn, awq)."""
    settings = list(dict.fromkeys(df["setting"]))
    fig, axes = plt.subplots(1, len(settings), figsize=(3.6 * len(settings), 3.4), sharey=False, squeeze=False)
    for ax, st in zip(axes[0], settings):
        d = df[df["setting"] == st]
        x = np.arange(len(d))
        ax.plot(x, d["rtn"], "o-", ms=3, color=PALETTE["rtn"], label="RTN")
        ax.plot(x, d["awq"], "o-", ms=3, color=PALETTE["awq"], label="AWQ")
        ax.set_yscale("log")
        ax.set_xticks(x, d["layer"], rotation=90, fontsize=6)
        ax.set_title(st, fontsize=9)
    axes[0, 0].set_ylabel("output NMSE (calibration)")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Precomputed: per-layer output error, RTN vs AWQ", y=1.02)
    fig.tight_layout()
    return fig


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
