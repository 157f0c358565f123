"""The interactive panels of the chapters (ipywidgets).

Each panel recomputes on a small subset in a live kernel. In the static book the controls are
drawn from the saved widget state and show the first result; every chapter puts a precomputed
sweep figure beside its panel so the static page carries the same content.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from . import quant


def panel(controls: dict, update, title: str = ""):
    """Lay out ``controls`` (name -> widget) above an output area and call ``update(**values)``
    whenever one changes (and once now). Returns the VBox."""
    import ipywidgets as W
    from IPython.display import display

    out = W.interactive_output(update, controls)
    box = W.VBox([W.HTML(f"<b>{title}</b>")] if title else [])
    box.children += (W.HBox(list(controls.values()), layout=W.Layout(flex_flow="row wrap")), out)
    display(box)
    return box


def layer_names(model, types=(torch.nn.Conv2d, torch.nn.Linear)) -> list:
    return [n for n, m in model.named_modules() if isinstance(m, types)]


# --------------------------------------------------------------------------------------
# Chapter 03: one layer's weights under the quantizer
# --------------------------------------------------------------------------------------

def quantizer_panel(model, default_layer: str = "layer3.0.conv2"):
    """Bits, granularity and range for a chosen layer -> its weight histogram with the
    quantization levels of its first output channel, and the relative error."""
    import ipywidgets as W

    modules = dict(model.named_modules())
    names = layer_names(model)

    def update(layer, bits, granularity, rng):
        w = modules[layer].weight.detach()
        cols = quant.weight_view(w).shape[1]
        gs = 64 if cols % 64 == 0 else cols
        s = quant.QuantSettings(bits=bits, granularity=granularity, group_size=gs, range=rng)
        qt = quant.quantize(w, s)
        wq = qt.dequantize()
        err = ((w - wq).norm() / w.norm()).item()
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.hist(w.flatten().numpy(), bins=200, color="#999999", label="FP32 weights")
        levels = quant.dequantize_codes(torch.arange(qt.qmin, qt.qmin + 2 ** bits).reshape(1, -1).to(torch.int16),
                                        qt.scale.reshape(-1)[:1].reshape(1, 1), qt.zero.reshape(-1)[:1].reshape(1, 1))
        for v in levels.flatten().tolist():
            ax.axvline(v, color="#d62728", lw=0.5, alpha=0.6)
        ax.set_title(f"{layer} {tuple(w.shape)}: {bits}-bit {granularity}, {rng} — relative error {err:.4f}")
        ax.set_xlabel("weight value (red: the levels of output channel 0)")
        ax.set_yscale("log")
        plt.show()

    return panel({
        "layer": W.Dropdown(options=names, value=default_layer if default_layer in names else names[0], description="layer"),
        "bits": W.IntSlider(value=4, min=2, max=8, description="bits"),
        "granularity": W.Dropdown(options=["tensor", "channel", "group"], value="channel", description="granularity"),
        "rng": W.Dropdown(options=["minmax", "mse"], value="minmax", description="range"),
    }, update, "Quantize one layer")


# --------------------------------------------------------------------------------------
# Chapter 07: a short live LSQ fine-tune
# --------------------------------------------------------------------------------------

def qat_panel(fp, splits, calib_x, settings, n_train: int = 256, n_val: int = 256,
              steps_per_epoch: int = 4, batch_size: int = 64, seed: int = 0):
    """Bits and epochs -> an LSQ fine-tune of the FP model with the chapter's recipe
    ``settings`` (a ``qat.QATSettings``: optimizer, learning rates, distillation, 8-bit layers;
    its bits, epochs and steps are the panel's), from an RTN/MSE start, on ``n_train`` train
    images for ``epochs x steps_per_epoch`` steps, with its curve of accuracy on ``n_val`` val
    images. Seconds, not minutes: a toy version of the chapter's runs."""
    import dataclasses

    import ipywidgets as W
    import numpy as np

    from . import lsq, models, qat

    if not isinstance(settings, qat.QATSettings):
        raise ValueError(f"settings={settings!r}: expected a qat.QATSettings (the chapter's LSQ recipe)")
    g = torch.Generator().manual_seed(seed)
    tr = torch.randperm(len(splits.train), generator=g)[:n_train]
    va = torch.randperm(len(splits.val), generator=g)[:n_val]
    small = dataclasses.replace(splits, train=splits.train.subset(tr), val=splits.val.subset(va))
    cx = calib_x[:64]
    fp_acc = models.evaluate(fp, small.val)["accuracy"]

    def update(bits, epochs):
        w, a = lsq.parse_config(bits)
        s = dataclasses.replace(settings, epochs=epochs, w_bits=w, a_bits=a, batch_size=batch_size,
                                max_steps=epochs * steps_per_epoch, seed=seed)
        start = models.evaluate(lsq.lsq_model(fp, s, calib_x=cx), small.val)["accuracy"]
        _, h = lsq.lsq_train(fp, small, s, calib_x=cx, progress=False)
        fig, ax = plt.subplots(figsize=(6, 2.8))
        curve = [start * 100] + [v * 100 for v in h["val_acc"]]
        ax.plot([0] + list(np.cumsum(h["steps"])), curve, marker="o", color="#ff7f0e",
                label=f"LSQ {bits}")
        ax.axhline(fp_acc * 100, color="#222222", ls=":", label="FP32")
        ax.set_xlabel("optimizer steps")
        ax.set_ylabel(f"accuracy on {len(va)} val images (%)")
        # at least a 10-point window: on a few hundred images one image is ~0.4 points, and
        # an axis fitted to the curve would draw a one-image change as a cliff
        ys = curve + [fp_acc * 100]
        mid = (max(ys) + min(ys)) / 2
        half = max(5.0, (max(ys) - min(ys)) / 2 + 1)
        ax.set_ylim(max(0.0, min(mid - half, 100 - 2 * half)), min(100.0, max(mid + half, 2 * half)))
        ax.set_title(f"{bits}: {start:.1%} at step 0 -> {h['val_acc'][-1]:.1%} after "
                     f"{sum(h['steps'])} steps ({h['total_seconds']:.0f} s)", fontsize=9)
        ax.legend(fontsize=7)
        plt.show()

    return panel({
        "bits": W.Dropdown(options=["W4A4", "W2A4", "W2A8", "W4A8", "W8A4"], value="W4A4",
                           description="bits"),
        "epochs": W.IntSlider(value=2, min=1, max=5, description="epochs"),
    }, update, "A short LSQ fine-tune on a small subset")


# --------------------------------------------------------------------------------------
# Chapter 06: SmoothQuant, alpha and activation bits
# --------------------------------------------------------------------------------------

def smoothquant_panel(model, calib_x, x, y, mode: str = "shared", layer: str = "layer4.0.conv1"):
    """alpha, activation bits and folding mode -> W8A{bits} fake-quant accuracy on the subset
    (x, y) with and without smoothing, the per-layer outlier ratio (max / median channel of
    each input) before and after, and one layer's smoothed per-channel range."""
    import ipywidgets as W
    import numpy as np
    from . import calib, smoothquant as sq

    stats = calib.input_stats(model, calib_x)
    names = list(stats)
    plain = {}

    def acc(m):
        return float((calib.run(m, x, keep=True).argmax(1) == y).float().mean())

    def update(alpha, a_bits, mode, layer):
        sc = sq.search(model, calib_x, sq.SmoothSettings(alpha, mode), stats)
        a_s = acc(sq.fake_quant_model(sq.apply(model, sc), calib_x, 8, a_bits))
        if a_bits not in plain:
            plain[a_bits] = acc(sq.fake_quant_model(model, calib_x, 8, a_bits))
        before, after = sq.outlier_ratios(stats), sq.outlier_ratios(stats, sc)
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.2))
        i = np.arange(len(names))
        axes[0].bar(i - 0.2, [before[n] for n in names], 0.4, color="#999999", label="before")
        axes[0].bar(i + 0.2, [after[n] for n in names], 0.4, color="#1f77b4", label="after")
        axes[0].set_xticks(i, names, rotation=90, fontsize=6)
        axes[0].set_yscale("log"); axes[0].set_ylabel("max / median channel"); axes[0].legend(fontsize=7)
        v = stats[layer]["absmax"].float()
        s = next((sc.scales[k] for k, c in sc.consumers.items() if layer in c), torch.ones_like(v))
        axes[1].plot(v.numpy(), color="#999999", lw=0.8, label="max|X_j| before")
        axes[1].plot((v / s).numpy(), color="#1f77b4", lw=0.8, label="max|X_j| / s_j after")
        axes[1].set_yscale("log"); axes[1].set_xlabel(f"{layer}: input channel"); axes[1].legend(fontsize=7)
        fig.suptitle(f"W8A{a_bits}, alpha={alpha:.2f}, mode {mode}: accuracy on {len(y)} images "
                     f"{a_s:.2%} smoothed vs {plain[a_bits]:.2%} without smoothing", fontsize=10)
        fig.tight_layout()
        plt.show()

    return panel({
        "alpha": W.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="alpha"),
        "a_bits": W.IntSlider(value=6, min=3, max=8, description="act bits"),
        "mode": W.Dropdown(options=["bn", "shared"], value=mode, description="mode"),
        "layer": W.Dropdown(options=names, value=layer if layer in names else names[-1], description="layer"),
    }, update, "SmoothQuant: migration strength and activation bits")


# --------------------------------------------------------------------------------------
# Chapter 05: AWQ — alpha, bits, group size -> a layer's error and the model's accuracy
# --------------------------------------------------------------------------------------

def awq_panel(model, calib_x, subset, default_layer: str = "layer1.0.conv2"):
    """One alpha for every scaled layer (``fold.scalable_layers``), the bits and the group size
    -> the per-layer output error on ``calib_x`` (RTN vs scaled, chosen layer highlighted) and
    the accuracy on ``subset`` (a small Split) of the scaled, RTN-quantized model. No clipping
    search, no per-layer alpha: the live view of one point of AWQ's grid."""
    import ipywidgets as W
    import numpy as np

    from . import awq, calib, fold, models, rtn

    stats = calib.input_stats(model, calib_x)
    groups = fold.scalable_layers(model, "bn")
    names = layer_names(model)
    keys = [g.key for g in groups]
    cache = {}

    def quantized(alpha, bits, group):
        q = quant.QuantSettings(bits=bits, granularity="group" if group else "channel", group_size=group or 128)
        keep = ("conv1",) if group else ()
        scales = {g.key: awq.awq_scales(torch.stack([stats[c]["absmean"] for c in g.consumers]).mean(0), alpha)
                  for g in groups}
        scaled = fold.apply_scales(model, scales)
        return scaled, rtn.quantize_model(scaled, q, keep_8bit=keep)

    def errors(alpha, bits, group):
        k = (alpha, bits, group)
        if k not in cache:
            scaled, qm = quantized(alpha, bits, group)
            acc = models.evaluate(qm, subset)["accuracy"]
            cache[k] = (awq.layer_errors(model, qm, calib_x, scaled_fp=scaled), acc)
        return cache[k]

    def update(layer, alpha, bits, group):
        e0, acc0 = errors(0.0, bits, group)
        e, acc = errors(round(alpha, 2), bits, group)
        fig, ax = plt.subplots(figsize=(9, 3))
        x = np.arange(len(names))
        ax.plot(x, [e0[n] for n in names], "o-", ms=3, label=f"RTN (α=0): accuracy {acc0:.1%}")
        ax.plot(x, [e[n] for n in names], "o-", ms=3, label=f"α={alpha:.2f}: accuracy {acc:.1%}")
        i = names.index(layer)
        ax.plot(i, e[layer], "r*", ms=12)
        ax.set_xticks(x, names, rotation=90, fontsize=6)
        ax.set_yscale("log"); ax.set_ylabel("output NMSE"); ax.legend(fontsize=8)
        ax.set_title(f"{layer}: error {e0[layer]:.3g} (RTN) -> {e[layer]:.3g} (α={alpha:.2f}); "
                     f"{'scaled' if layer in keys else 'not scaled (reads the residual stream)'}", fontsize=9)
        plt.show()

    return panel({
        "layer": W.Dropdown(options=names, value=default_layer if default_layer in names else names[0], description="layer"),
        "alpha": W.FloatSlider(value=0.5, min=0.0, max=0.95, step=0.05, description="α"),
        "bits": W.IntSlider(value=3, min=2, max=8, description="bits"),
        "group": W.Dropdown(options=[("per-channel", 0), ("g16", 16), ("g32", 32), ("g64", 64)], value=0, description="group"),
    }, update, "AWQ: one α for every scaled layer (RTN after scaling, no clipping search)")


# --------------------------------------------------------------------------------------
# Chapter 04: GPTQ vs RTN on one layer, live
# --------------------------------------------------------------------------------------

def gptq_one_layer(fp_model, layer: str, H: torch.Tensor, nsamples: int, bits: int = 3,
                   group_size: int = 0, percdamp: float = 0.01, act_order: bool = False):
    """GPTQ on one layer of a copy of ``fp_model`` (the rest stays float) from a precomputed
    Hessian ``H``. Returns (model with the layer GPTQ-quantized, model with it RTN-quantized,
    relative output error of GPTQ, of RTN) on the calibration inputs. ``group_size=0``: per
    channel; a group size that does not divide the layer's columns falls back to per channel."""
    import copy

    from . import export, gptq

    out = []
    for method in ("gptq", "rtn"):
        m = copy.deepcopy(fp_model).eval()
        mod = dict(m.named_modules())[layer]
        cols = quant.weight_view(mod.weight).shape[1]
        gran = "group" if group_size and cols % group_size == 0 else "channel"
        s = quant.QuantSettings(bits=bits, granularity=gran, group_size=group_size or 128)
        g = gptq.GPTQ(mod, layer)
        g.H, g.nsamples = H.clone(), nsamples
        if method == "gptq":
            g.fasterquant(s, percdamp=percdamp, act_order=act_order,
                          static_groups=act_order and gran == "group")
        else:
            export.attach(mod, quant.quantize(g.W.reshape(mod.weight.shape), s))
        err = g.errors(mod.weight.detach())[0]
        out += [m, err]
    return out[0], out[2], out[1], out[3]


def layer_hessian(fp_model, x: torch.Tensor, layer: str):
    """H = 2 X X^T of one layer on the inputs ``x`` (float model) and the number of images."""
    from . import calib, gptq

    mod = dict(fp_model.named_modules())[layer]
    g = gptq.GPTQ(mod, layer)
    with calib.input_hooks(fp_model, {layer: g.add_batch}):
        calib.run(fp_model, x)
    return g.H, g.nsamples


def gptq_panel(fp_model, calib_x, test_split, n_eval: int = 300, default_layer: str = "layer4.0.conv2"):
    """Bits, group size, dampening and act-order -> the chosen layer's output error under GPTQ
    and RTN (on the calibration inputs) and the test accuracy on ``n_eval`` images with only
    that layer quantized."""
    import ipywidgets as W

    from . import models

    names = layer_names(fp_model)
    sub = test_split.subset(torch.arange(min(n_eval, len(test_split))))
    hess = {}

    def update(layer, bits, group_size, percdamp, act_order):
        if layer not in hess:
            hess[layer] = layer_hessian(fp_model, calib_x, layer)
        qg, qr, eg, er = gptq_one_layer(fp_model, layer, *hess[layer], bits=bits,
                                        group_size=group_size, percdamp=percdamp, act_order=act_order)
        acc = {k: (models.predict(m, sub).argmax(1) == sub.labels).float().mean().item()
               for k, m in (("GPTQ", qg), ("RTN", qr))}
        fig, ax = plt.subplots(figsize=(6, 2.6))
        ax.barh(["RTN", "GPTQ"], [er, eg], color=["#1f77b4", "#d62728"])
        ax.set_xscale("log")
        ax.set_xlabel(r"$\|WX-\hat WX\|^2/\|WX\|^2$ (calibration inputs)")
        ax.set_title(f"{layer}: RTN/GPTQ = {er / max(eg, 1e-12):.1f}x; accuracy on {len(sub)} test "
                     f"images RTN {acc['RTN']:.1%}, GPTQ {acc['GPTQ']:.1%}", fontsize=8)
        fig.tight_layout()
        plt.show()

    return panel({
        "layer": W.Dropdown(options=names, value=default_layer if default_layer in names else names[0], description="layer"),
        "bits": W.IntSlider(value=2, min=2, max=8, description="bits"),
        "group_size": W.Dropdown(options=[0, 32, 64, 128], value=0, description="group (0=ch.)"),
        "percdamp": W.FloatLogSlider(value=0.01, base=10, min=-4, max=0, description="dampening"),
        "act_order": W.Checkbox(value=False, description="act-order"),
    }, update, "GPTQ vs RTN on one layer (the rest of the network float)")
