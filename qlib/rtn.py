"""Round-to-nearest (RTN): every Conv2d/Linear weight quantized on its own, no data.

``W_hat = quantize(W)`` with the uniform quantizer of ``quant`` (per tensor / channel / group,
min-max or MSE range): the baseline that GPTQ and AWQ must beat. The codes are attached to
the layers (``export.attach``), so ``export.save`` writes a real low-bit file.
"""
from __future__ import annotations

import copy
from dataclasses import replace
from typing import Iterable

from torch import nn

from . import calib, export, quant
from .quant import QuantSettings


def eight_bit(settings: QuantSettings) -> QuantSettings:
    """The settings of a layer kept at 8 bits: same scheme at 8 bits, per channel if ``settings``
    is per group (the stem conv's 3*7*7 = 147 columns take no power-of-two group size)."""
    gran = "channel" if settings.granularity == "group" else settings.granularity
    return replace(settings, bits=8, granularity=gran)


def check_keep(model: nn.Module, keep_8bit: Iterable[str], who: str = "rtn") -> tuple:
    """``keep_8bit`` as a tuple of Conv2d/Linear names of ``model`` (ValueError otherwise)."""
    if isinstance(keep_8bit, str):
        raise ValueError(f"keep_8bit={keep_8bit!r}: expected a tuple of layer names, e.g. "
                         f"('conv1', 'fc') ({who})")
    keep = tuple(keep_8bit or ())
    names = calib.layer_names(model)
    unknown = [k for k in keep if k not in names]
    if unknown:
        raise ValueError(f"keep_8bit={keep!r}: {unknown} are not Conv2d/Linear layers of the model "
                         f"(layers: {names[0]}, ..., {names[-1]}) ({who})")
    return keep


def layer_settings(model: nn.Module, settings: QuantSettings, keep_8bit=(), who: str = "rtn"
                   ) -> dict:
    """``{layer name: QuantSettings}`` for every Conv2d/Linear; checks up front that a group
    size divides every layer's columns (ValueError naming the layer)."""
    if not isinstance(settings, QuantSettings):
        raise ValueError(f"settings={settings!r}: expected a quant.QuantSettings ({who})")
    keep = check_keep(model, keep_8bit, who)
    mods = dict(model.named_modules())
    out = {}
    for name in calib.layer_names(model):
        s = eight_bit(settings) if name in keep else settings
        cols = quant.weight_view(mods[name].weight).shape[1]
        if s.granularity == "group" and cols % s.group_size:
            raise ValueError(
                f"group_size={s.group_size} does not divide the {cols} columns of layer {name!r} "
                f"(weight {tuple(mods[name].weight.shape)}); pick a divisor of {cols}, or keep "
                f"the layer at 8 bits per channel with keep_8bit=({name!r}, ...) ({who})")
        out[name] = s
    return out


def quantize_model(model: nn.Module, settings: QuantSettings, keep_8bit=(),
                   fold_bn: bool = False) -> nn.Module:
    """A copy of ``model`` with every Conv2d/Linear weight rounded to nearest and attached as a
    ``qweight`` (the input model is not changed).

    ``keep_8bit``: layer names kept at 8 bits (``("conv1", "fc")``: the stem and the
    classifier, see ``eight_bit``). ``fold_bn``: fold the BatchNorms into the convs first
    (``quant.fold_batchnorm``) and quantize the folded weights."""
    if not isinstance(fold_bn, bool):
        raise ValueError(f"fold_bn={fold_bn!r}: expected True or False (rtn)")
    per_layer = layer_settings(model, settings, keep_8bit, "rtn")
    model = quant.fold_batchnorm(model) if fold_bn else copy.deepcopy(model)
    mods = dict(model.named_modules())
    for name, s in per_layer.items():
        export.attach(mods[name], quant.quantize(mods[name].weight, s))
    return model.eval()
