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
