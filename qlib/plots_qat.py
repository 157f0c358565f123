"""Figures of chapter 07 (quantization-aware training); the style is ``plots``'s."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from .plots import PALETTE, key_below, spread_labels


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
    """``curves``: label -> rows of ``lsq_curve.run`` (step 0 = the PTQ model; ``train_seconds``,
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
    key_below(fig, a, ncol=2)
    fig.suptitle(title)
    return fig


def qat_vs_ptq(df, title: str = "What training buys: disagreement with FP32 (lower is better), PTQ vs QAT"):
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
            ax.annotate(f"{1 - v:.2%}", (x, (1 - v) * 100), ha="center", va="bottom", fontsize=7)  # what the bar shows
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
    key_below(fig, a, ncol=4)  # the left panel's key: inside it, it hid points and lines
    fig.draw_without_rendering()  # the layout is final before the labels are placed in display space
    fig.set_layout_engine("none")
    spread_labels(b, texts, df.disagreements.to_numpy(), df.predicted.to_numpy(), expand=(1.3, 1.6),  # the W2 cluster
                   markers=marks)
    return fig


def reconstruction(history: dict, recovered: dict, target: float = 0.5,
                   title: str = "Block-wise reconstruction of the steps and biases"):
    """``history``: config -> ``lsq.reconstruct``'s per-unit errors; ``recovered``: config ->
    {run label: share of PTQ's agreement loss won back}. Left: the share of each unit's output
    error (on the reconstruction images) that the reconstruction removed; right: the held-out
    recoveries side by side, with the target."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [3, 2]})
    for i, (c, h) in enumerate(history.items()):
        removed = [100 * (1 - u["mse_after"] / u["mse_before"]) if u["mse_before"] > 0 else 0.0 for u in h]
        a.plot(range(len(h)), removed, marker="o", color=plt.cm.tab10(i % 10), label=c)
    units = [u["unit"] for u in next(iter(history.values()), [])]
    a.axhline(0, color="gray", lw=0.8)
    a.set_xticks(range(len(units)), units, rotation=45, ha="right", fontsize=8)
    a.set_ylabel("unit output error removed (%)")
    a.set_title("on the reconstruction images (training split)", fontsize=9)
    a.legend(fontsize=8)
    configs = list(recovered)
    runs = list(dict.fromkeys(k for v in recovered.values() for k in v))
    width = 0.8 / max(len(runs), 1)
    for j, run in enumerate(runs):
        xs = [i + (j - (len(runs) - 1) / 2) * width for i in range(len(configs))]
        b.bar(xs, [100 * recovered[c].get(run, np.nan) for c in configs], width, label=run, color=plt.cm.Set2(j % 8))
    b.axhline(100 * target, color="black", ls="--", lw=1, label=f"target ({target:.0%})")
    b.axhline(0, color="gray", lw=0.8)
    b.set_xticks(range(len(configs)), configs)
    b.set_ylabel("PTQ's agreement loss won back (%)")
    b.set_title("on the held-out images", fontsize=9)
    b.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
