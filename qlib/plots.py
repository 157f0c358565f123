"""The book's shared figure style, the helpers its figures share, and the figures that
compare across chapters (``bits_sweep``, chapter 08's ``tradeoff``).

Every figure function returns the matplotlib Figure (and draws it in a notebook). The
chapters' own figures are in ``plots_data`` (01, 02), ``plots_ptq`` (03-06) and ``plots_qat``
(07). ``save`` writes a PNG atomically for the README.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from adjustText import adjust_text
from matplotlib.patches import Patch

from . import atomic

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
    with atomic.replacing(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


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


def bits_sweep(df, y="agreement", hue="method", title=None, ax=None, ylim=None):
    """A metric vs weight bits per method/variant (DataFrame with columns bits, y, hue); with
    ``hue="method"`` each method in its colour and set a twentieth of a bit apart from the
    next, so methods that tie stay visible. ``y="disagreement"`` plots 1 - agreement on a log
    scale, which spreads the variants that agree nearly everywhere (a variant that changes no
    answer is drawn at the axis' floor, half the smallest share drawn, and said so)."""
    import seaborn as sns

    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.6))
    else:
        fig = ax.figure
    d = df.copy()
    if y == "disagreement":
        d[y] = (1.0 - d["agreement"]) * 100
        positive = d[y][d[y] > 0]
        none = int((d[y] <= 0).sum())
        floor = positive.min() / 2 if len(positive) else 0.01
        d[y] = d[y].clip(lower=floor)
        if none:
            ax.text(0.01, 0.01, f"{none} changing no answer, drawn at the bottom", transform=ax.transAxes, fontsize=7,
                    color="#555555")
    d[y] = d[y] * 100 if y in ("agreement", "accuracy", "test_agreement") else d[y]
    ticks = sorted(d["bits"].unique())
    palette = None
    if hue == "method":  # methods from different chapters often tie: set each a little apart, in its colour as in tradeoff
        names = sorted(d[hue].unique())
        palette = {m: _method_color(m) for m in names}
        d["bits"] = d["bits"] + d[hue].map({m: 0.05 * (i - (len(names) - 1) / 2) for i, m in enumerate(names)})
    sns.lineplot(data=d, x="bits", y=y, hue=hue, marker="o", ax=ax, palette=palette)
    ax.set_xticks(ticks)
    ax.set_xlabel("weight bits")
    ax.set_ylabel({"agreement": "top-1 agreement with FP32 (%)", "accuracy": "test accuracy (%)",
                   "kl": "KL(FP32 || quantized)",
                   "disagreement": "answers that differ from FP32's (%, log)"}.get(y, y))
    if y in ("kl", "disagreement"):
        ax.set_yscale("log")
    if y == "disagreement":
        _plain_log_ticks(ax.yaxis)
    if ylim:
        ax.set_ylim(*ylim)
    if title:
        ax.set_title(title)
    return fig


# --------------------------------------------------------------------------------------
# Shared by the figures: method colours, the Pareto front, log ticks, keys and labels
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


def pareto_rows(df, x: str, y: str, front: str = "min"):
    """The rows of ``df`` (those with both ``x`` and ``y``) on the Pareto front, in order of ``x``:
    larger ``y`` is better, and smaller ``x`` (``front="min"``, e.g. size) or larger
    (``front="max"``, e.g. throughput). The front ``tradeoff`` draws and numbers."""
    if front not in ("min", "max"):
        raise ValueError(f"front={front!r}: expected 'min' (smaller {x} is better) or 'max' (larger is better)")
    d = df.dropna(subset=[x, y]).reset_index(drop=True)
    xs = d[x].to_numpy() if front == "min" else -d[x].to_numpy()
    return d.iloc[pareto_front(xs, d[y].to_numpy())].sort_values(x)


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


def key_below(fig, ax, ncol: int) -> None:
    """Draw ``ax``'s key for the whole figure, below its panels, in at most ``ncol`` columns
    (``fig`` uses constrained layout, which makes room for it); the figure grows by the key's
    rows, so the panels keep their height."""
    handles, labels = ax.get_legend_handles_labels()
    ncol = max(1, min(len(labels), ncol))
    fig.set_figheight(fig.get_figheight() + 0.22 * -(-len(labels) // ncol))
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=7)


def spread_labels(ax, texts, x, y, expand, markers=()) -> None:
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
                               arrowprops=dict(arrowstyle="-", color="gray", lw=0.5), iter_lim=1000, **kw)
        if not any(t.get_window_extent(renderer).overlaps(b) for t in texts for b in shown):
            break


def tradeoff(df, x: str, y: str = "accuracy", xlabel: str = "", logx: bool = True, title: str = "",
             fp_y=None, front: str = "min"):
    """Every variant a point (colour: method), with the Pareto front drawn through the best;
    the front's points are numbered at the point and named in a key beside the axes (names at
    the points would collide where the front is dense). ``fp_y`` (accuracy, or 1.0 for
    agreement) zooms on the variants within 12 points of FP32 (down to the lowest of them, less a
    point); a front point below that range is named in the key only."""
    d = df.dropna(subset=[x, y]).reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(11, 5.2))
    hidden, floor = 0, -np.inf
    if fp_y is not None and y in ("accuracy", "agreement"):  # zoom on the variants that work
        top = fp_y if y == "accuracy" else 1.0  # FP32's accuracy, or full agreement
        floor = top - 0.12
        hidden = int((d[y] < floor).sum())
        bottom = max(floor, d[y].min() - 0.01)  # no emptier than the range needs
        ax.set_ylim(bottom * 100, max(d[y].max(), top) * 100 + 1.0)
    groups = sorted(d.groupby("method"), key=lambda mg: -len(mg[1]))  # small groups drawn on top
    for z, (method, g) in enumerate(groups):
        ax.scatter(g[x], g[y] * 100, color=_method_color(method), label=method, s=28, alpha=0.85,
                   edgecolor="white", linewidth=0.5, zorder=2 + z)
    fr = pareto_rows(d, x, y, front)
    ax.plot(fr[x], fr[y] * 100, color="k", lw=1, ls="--", label="Pareto front")
    key, numbers = [], []
    for i, (_, r) in enumerate(fr.iterrows(), 1):
        below = r[y] < floor  # a number drawn outside the axes would stretch the figure's layout
        if not below:
            numbers.append(ax.text(r[x], r[y] * 100, str(i), fontsize=7, fontweight="bold", zorder=20))
        value = (f"{r[x]:.2f} MB" if "mb" in x else f"{r[x]:,.0f} images/s" if "per_s" in x else f"{r[x]:.3g}")
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
    spread_labels(ax, numbers, shown[x].to_numpy(), shown[y].to_numpy() * 100, expand=(1.6, 1.8))
    return fig


def latency_bars(rows, title: str = ""):
    """The benchmark's rows (``qlib.bench.run``): per variant its median time per batch warm
    (the weights still in the CPU's cache from the batch before) and cold (the first batch after
    the other variants), fastest at the top, with the speed-up over FP32 of each."""
    import pandas as pd

    d = pd.DataFrame(rows).sort_values("ms_per_batch", ascending=False).reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(d) + 1.4))
    y = np.arange(len(d))
    ax.barh(y + 0.2, d["ms_cold"], height=0.4, color="#bbbbbb")
    int8 = d["engine"] == "int8 engine"
    ax.barh(y - 0.2, d["ms_per_batch"], height=0.4, color=[PALETTE["int8"] if e else PALETTE["fp32"] for e in int8])
    handles = [Patch(color=PALETTE[k], label=f"warm, {name}: batches 2, 3, ... back to back")
               for k, name, present in (("int8", "int8 engine", int8.any()), ("fp32", "float32", (~int8).any())) if present]
    handles.append(Patch(color="#bbbbbb", label="cold: first batch after the other variants"))
    for i, r in d.iterrows():
        if pd.notna(r.get("speedup_vs_fp32")):
            ax.text(r["ms_cold"], i + 0.2, f" {r['speedup_cold']:.1f}x", va="center", fontsize=7, color="#555555")
            ax.text(r["ms_per_batch"], i - 0.2, f" {r['speedup_vs_fp32']:.1f}x", va="center", fontsize=7)
    ax.set_yticks(y, [f"{v} ({e})" for v, e in zip(d["variant"], d["engine"])], fontsize=8)
    ax.set_xlabel("ms per batch of 64 images (median); labels: speed-up over FP32 in the same run")
    ax.set_xlim(0, d[["ms_cold", "ms_per_batch"]].max().max() * 1.15)
    ax.set_title(title)
    ax.legend(handles=handles, fontsize=7, loc="upper right")  # the fastest, shortest bars are at the top
    fig.tight_layout()
    return fig


def timeline(tl: dict, ref: str = "fp32", title: str = "", loaded_ms: float | None = None):
    """``measure.timeline``: left, each model's time per batch and the probe's over the seconds
    of the run (log scale); right, each round's speed-up over ``ref`` against the probe's time in
    that round, so a reader sees whether the speed-up falls when the machine is loaded; with
    ``loaded_ms`` (``measure.timeline_speedups``' threshold) a line where the loaded rounds begin."""
    if ref not in tl["ms"]:
        raise ValueError(f"ref={ref!r}: expected one of the timeline's models {sorted(tl['ms'])}")
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.9), gridspec_kw={"width_ratios": [1.5, 1]})
    t, probe = np.asarray(tl["t"]), np.asarray(tl["probe_ms"])
    others = [k for k in tl["ms"] if k != ref]
    colors = dict(zip(others, plt.cm.tab10(np.arange(len(others)) % 10)))
    ax.plot(t, tl["ms"][ref], color=PALETTE["fp32"], lw=1.2, label=f"{ref} (reference)")
    for k in others:
        ax.plot(t, tl["ms"][k], color=colors[k], lw=0.9, label=k)
    ax.plot(t, probe, color="#999999", lw=1, ls="--", label=f"probe: 5 FP32 products {tl['probe_size']}²")
    ax.set_yscale("log")
    _plain_log_ticks(ax.yaxis)
    ax.set_xlabel("seconds since the start of the run")
    ax.set_ylabel(f"ms (median of {tl['per_round']} batches of {tl['batch_size']})")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.2), ncol=3, frameon=False)
    r = np.asarray(tl["ms"][ref])
    for k in others:
        bx.scatter(probe, r / np.asarray(tl["ms"][k]), s=12, color=colors[k], alpha=0.7, label=k)
    if loaded_ms is not None:
        bx.axvline(loaded_ms, color="#999999", lw=1, ls="--")
        bx.text(loaded_ms, 0.02, " loaded rounds →", transform=bx.get_xaxis_transform(), fontsize=7, color="#555555")
    bx.set_xlabel("probe's time in the round (ms): the machine's load")
    bx.set_ylabel(f"speed-up over {ref} in the round")
    bx.set_ylim(bottom=0)
    fig.suptitle(title or "The machine's speed over one run", fontweight="bold")
    fig.tight_layout()
    return fig
