"""SmoothQuant (Xiao et al., ICML 2023) for the convolutions of ResNet-18.

Activation outliers sit in a few input channels; weights are easy to quantize. SmoothQuant
moves difficulty from activations to weights with an equivalence transform:
``Y = (X diag(s)^-1) (diag(s) W)``, with per input channel ``j``

    s_j = max|X_j|^alpha / max|W_:,j|^(1-alpha)

(``max|X_j|`` over the calibration batch and spatial positions, ``max|W_:,j|`` over output
channels and kernel taps, and over every layer of a group that shares the input). The division
of ``X`` is folded into the BatchNorm that produces it (``qlib.fold``). Then
``fake_quant_model`` simulates W{w}A{a}: weights per output channel (symmetric), every
conv/linear input per tensor (asymmetric, range calibrated on the calibration images).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import calib, export, fold, quant

OBSERVERS = ("minmax", "percentile")


def _check_alpha(a, where="alpha") -> float:
    if isinstance(a, bool) or not isinstance(a, (int, float, np.floating, np.integer)) \
            or not 0.0 <= float(a) <= 1.0:
        raise ValueError(f"{where}={a!r}: expected a number in [0, 1] (SmoothQuant migration "
                         "strength: 0 leaves the difficulty on the activations, 1 moves it all "
                         "to the weights)")
    return float(a)


@dataclass(frozen=True)
class SmoothSettings:
    """alpha: migration strength in [0, 1] (one value, or {group key: value} as returned by
    ``search_alpha(per_layer=True)``). mode: "bn" (smooth the conv2 of each block) or "shared"
    (also the residual stream, one scale per stage; see ``qlib.fold``). min_scale: floor of s."""

    alpha: Union[float, Mapping[str, float]] = 0.5
    mode: str = "bn"
    min_scale: float = 1e-5

    def __post_init__(self):
        if isinstance(self.alpha, Mapping):
            for k, v in self.alpha.items():
                _check_alpha(v, f"alpha[{k!r}]")
        else:
            _check_alpha(self.alpha)
        if self.mode not in fold.MODES:
            raise ValueError(f"mode={self.mode!r}: expected one of {fold.MODES} "
                             "(SmoothSettings.mode)")
        if not isinstance(self.min_scale, (int, float)) or not 0 < self.min_scale < 1:
            raise ValueError(f"min_scale={self.min_scale!r}: expected a number in (0, 1) "
                             "(SmoothSettings.min_scale)")

    def alpha_for(self, key: str) -> float:
        if isinstance(self.alpha, Mapping):
            if key not in self.alpha:
                raise ValueError(f"alpha: no value for group {key!r} (SmoothSettings.alpha)")
            return float(self.alpha[key])
        return float(self.alpha)


@dataclass
class SmoothScales:
    """Result of ``search`` (plain data): per group key the scales ``s``, the alpha used, the
    per-channel activation max before and after (``act_max / s``) and the weight max before
    and after (``w_max * s``, max over the group's layers)."""

    mode: str
    consumers: Dict[str, Tuple[str, ...]] = field(default_factory=dict)
    scales: Dict[str, torch.Tensor] = field(default_factory=dict)
    alpha: Dict[str, float] = field(default_factory=dict)
    act_max_before: Dict[str, torch.Tensor] = field(default_factory=dict)
    act_max_after: Dict[str, torch.Tensor] = field(default_factory=dict)
    w_max_before: Dict[str, torch.Tensor] = field(default_factory=dict)
    w_max_after: Dict[str, torch.Tensor] = field(default_factory=dict)

    def ratio(self, key: str, after: bool = True) -> float:
        """max / median of the per-channel activation max of a group's input."""
        return outlier_ratio((self.act_max_after if after else self.act_max_before)[key])


def outlier_ratio(ch_max: torch.Tensor) -> float:
    """How outlier-dominated a per-channel max vector is: max / median."""
    med = float(ch_max.median())
    return float(ch_max.max()) / med if med > 0 else math.inf


def outlier_ratios(stats: dict, scales: Optional[SmoothScales] = None) -> Dict[str, float]:
    """Per Conv2d/Linear: max / median of its input's per-channel max |X| (``stats`` from
    ``calib.input_stats``), after smoothing with ``scales`` if given (``absmax / s``)."""
    absmax = {n: st["absmax"].float() for n, st in stats.items()}
    if scales is not None:
        for key, cons in scales.consumers.items():
            for c in cons:
                absmax[c] = absmax[c] / scales.scales[key]
    return {n: outlier_ratio(v) for n, v in absmax.items()}


def _scales(act_max, w_max, alpha, min_scale):
    s = act_max.clamp(min=1e-5).pow(alpha) / w_max.clamp(min=1e-5).pow(1 - alpha)
    s = s.clamp(min=min_scale)
    return torch.where(act_max > 0, s, torch.ones_like(s))  # never-active channel: left alone


def search(model: nn.Module, calib_x: torch.Tensor, settings: SmoothSettings = SmoothSettings(),
           stats: Optional[dict] = None) -> SmoothScales:
    """The smoothing scales of every group of ``fold.scalable_layers(model, settings.mode)``,
    from the per-channel max |X| on ``calib_x`` (train split). ``stats``: precomputed
    ``input_stats`` of ``model`` on ``calib_x`` (saves a forward pass in sweeps)."""
    if not isinstance(settings, SmoothSettings):
        raise ValueError(f"settings={settings!r}: expected a SmoothSettings")
    groups = fold.scalable_layers(model, settings.mode)
    if stats is None:
        stats = calib.input_stats(model, calib.check_x(calib_x, "smoothquant.search"))
    mods = dict(model.named_modules())
    out = SmoothScales(mode=settings.mode)
    for g in groups:
        a = settings.alpha_for(g.key)
        act = torch.stack([stats[c]["absmax"].float() for c in g.consumers]).amax(0)
        wmax = torch.stack([fold.weight_absmax_in(mods[c]) for c in g.consumers]).amax(0)
        s = _scales(act, wmax, a, settings.min_scale)
        out.consumers[g.key] = g.consumers
        out.scales[g.key] = s
        out.alpha[g.key] = a
        out.act_max_before[g.key], out.act_max_after[g.key] = act, act / s
        out.w_max_before[g.key], out.w_max_after[g.key] = wmax, wmax * s
    return out


def apply(model: nn.Module, scales: SmoothScales) -> nn.Module:
    """A smoothed copy of ``model`` (same float function): ``fold.apply_scales``."""
    return fold.apply_scales(model, scales.scales)


# --------------------------------------------------------------------------------------
# Fake-quant simulation of W{w}A{a}
# --------------------------------------------------------------------------------------

def _check_bits(b, name):
    if b is None:
        return None
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 2 <= b <= 8:
        raise ValueError(f"{name}={b!r}: expected an integer in 2..8 or None (no quantization)")
    return int(b)


def act_qparams(lo: float, hi: float, bits: int) -> dict:
    """Per-tensor asymmetric parameters of the range [min(lo, 0), max(hi, 0)]: unsigned codes
    0..2^b-1, float32 scale, integer zero point (0 for post-ReLU inputs, so 0.0 is exact)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    levels = 2 ** bits - 1
    scale = (hi - lo) / levels if hi > lo else 1.0
    scale = float(np.float32(scale))
    zero = float(min(max(round(-lo / scale), 0), levels))
    return {"scale": scale, "zero": zero, "qmin": 0, "qmax": levels, "bits": bits,
            "lo": lo, "hi": hi}


@torch.no_grad()
def _forward(model: nn.Module, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Outputs of ``model`` on ``x`` in eval mode (its train/eval flag restored)."""
    return calib.run(model, x, batch_size, keep=True)


def _fake_quant_input(module, args):
    p = module.input_quant
    return (quant.fake_quant(args[0], p["scale"], p["zero"], p["qmin"], p["qmax"]),) + args[1:]


@torch.no_grad()
def input_ranges(model: nn.Module, x: torch.Tensor, observer: str = "minmax",
                 percentile: float = 99.99, batch_size: int = 64, max_values: int = 2 ** 20
                 ) -> Dict[str, Tuple[float, float]]:
    """(lo, hi) of the input of every Conv2d/Linear on ``x``: the min/max ("minmax"), or the
    (100-p)th and p-th percentiles of a seeded subsample of the values ("percentile")."""
    if observer not in OBSERVERS:
        raise ValueError(f"observer={observer!r}: expected one of {OBSERVERS}")
    if not 50.0 < percentile <= 100.0:
        raise ValueError(f"percentile={percentile!r}: expected a number in (50, 100]")
    names = calib.layer_names(model)
    mods = dict(model.named_modules())
    acc = {n: [] for n in names}
    g = torch.Generator().manual_seed(0)
    per_batch = max(1, max_values // max(1, math.ceil(len(x) / batch_size)))

    def hook(m, a, n):
        v = a[0].detach().float().reshape(-1).cpu()
        if observer == "minmax":
            acc[n].append(torch.stack([v.min(), v.max()]))
        else:
            if v.numel() > per_batch:
                v = v[torch.randint(v.numel(), (per_batch,), generator=g)]
            acc[n].append(v)

    hooks = [mods[n].register_forward_pre_hook(lambda m, a, n=n: hook(m, a, n)) for n in names]
    try:
        _forward(model, x, batch_size)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for n, v in acc.items():
        if observer == "minmax":
            mm = torch.stack(v)
            out[n] = (float(mm[:, 0].min()), float(mm[:, 1].max()))
        else:
            vals = torch.cat(v).numpy()
            out[n] = (float(np.percentile(vals, 100 - percentile)),
                      float(np.percentile(vals, percentile)))
    return out


@torch.no_grad()
def fake_quant_model(model: nn.Module, calib_x: torch.Tensor, w_bits: Optional[int] = 8,
                     a_bits: Optional[int] = 8, observer: str = "minmax",
                     percentile: float = 99.99) -> nn.Module:
    """A copy of ``model`` that simulates W{w_bits}A{a_bits}: every Conv2d/Linear weight
    quantized per output channel, symmetric (``export.attach``: exports packed), and every
    Conv2d/Linear input fake-quantized per tensor, asymmetric (``act_qparams``) with the range
    observed on ``calib_x`` with the float weights. ``None`` bits: that side stays float.
    The input parameters are in ``module.input_quant`` (a reference for the int8 engine)."""
    w_bits, a_bits = _check_bits(w_bits, "w_bits"), _check_bits(a_bits, "a_bits")
    calib_x = calib.check_x(calib_x, "smoothquant.fake_quant_model")
    model = copy.deepcopy(model).eval()
    ranges = input_ranges(model, calib_x, observer, percentile) if a_bits else {}
    mods = dict(model.named_modules())
    for name in calib.layer_names(model):
        m = mods[name]
        if w_bits:
            s = quant.QuantSettings(bits=w_bits, symmetric=True, granularity="channel")
            export.attach(m, quant.quantize(m.weight, s))
        if a_bits:
            m.input_quant = act_qparams(*ranges[name], a_bits)
            m.register_forward_pre_hook(_fake_quant_input)
    return model


# --------------------------------------------------------------------------------------
# Choice of alpha
# --------------------------------------------------------------------------------------

def _nmse(y, ref) -> float:
    return float((y - ref).pow(2).sum() / ref.pow(2).sum().clamp(min=1e-30))


def _layer_out(m: nn.Module, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if isinstance(m, nn.Conv2d):
        return F.conv2d(x, w, None, m.stride, m.padding, m.dilation, m.groups)
    return F.linear(x, w)


def _layer_error(m, x, x_ref_out, s, w_bits, a_bits, observer, percentile):
    """NMSE of one layer's output with input x/s fake-quantized per tensor and weight W*s
    fake-quantized per channel (s None: no smoothing)."""
    w = m.weight.detach().float()
    if s is not None:
        shape = (1, -1, 1, 1) if x.dim() == 4 else (1, -1)
        x, w = x / s.view(shape), w * s.view(shape)
    if a_bits:
        v = x.reshape(-1)
        if observer == "minmax":
            lo, hi = float(v.min()), float(v.max())
        else:
            sub = v[torch.randint(v.numel(), (min(v.numel(), 2 ** 20),),
                                  generator=torch.Generator().manual_seed(0))].numpy()
            lo, hi = np.percentile(sub, 100 - percentile), np.percentile(sub, percentile)
        p = act_qparams(lo, hi, a_bits)
        x = quant.fake_quant(x, p["scale"], p["zero"], p["qmin"], p["qmax"])
    if w_bits:
        w = quant.fake_quant_weight(w, quant.QuantSettings(bits=w_bits, granularity="channel"))
    return _nmse(_layer_out(m, x, w), x_ref_out)


@torch.no_grad()
def search_alpha(model: nn.Module, calib_x: torch.Tensor, grid=np.linspace(0, 1, 11),
                 w_bits: Optional[int] = 8, a_bits: Optional[int] = 8, per_layer: bool = False,
                 mode: str = "bn", observer: str = "minmax", percentile: float = 99.99):
    """The alpha minimising the fake-quantized output error on ``calib_x``.

    per_layer=False: one alpha for the model, minimising the normalised squared error
    (NMSE) of the logits of ``fake_quant_model(apply(model, search(alpha)))`` vs FP.
    per_layer=True: one alpha per group, minimising the summed NMSE of the group's layer
    outputs (each layer alone: FP input, smoothed, input and weight fake-quantized).
    Returns ``(best, curve)``: best is a float or {group key: float}; curve is plain data:
    {"alpha": grid, "error": [...] or {key: [...]}, "unsmoothed": error without smoothing}.
    """
    grid = [round(_check_alpha(a, "grid value"), 12)  # linspace's 0.6000000000000001 -> 0.6
            for a in np.atleast_1d(np.asarray(grid, dtype=float))]
    if not grid:
        raise ValueError("grid=[]: expected at least one alpha in [0, 1]")
    w_bits, a_bits = _check_bits(w_bits, "w_bits"), _check_bits(a_bits, "a_bits")
    calib_x = calib.check_x(calib_x, "smoothquant.search_alpha")
    groups = fold.scalable_layers(model, mode)
    stats = calib.input_stats(model, calib_x)
    if not per_layer:
        ref = _forward(model, calib_x)

        def err(m):
            return _nmse(_forward(fake_quant_model(m, calib_x, w_bits, a_bits, observer,
                                                   percentile), calib_x), ref)

        curve = [err(apply(model, search(model, calib_x, SmoothSettings(a, mode), stats)))
                 for a in grid]
        best = grid[int(np.argmin(curve))]
        return best, {"alpha": grid, "error": curve, "unsmoothed": err(model)}
    mods = dict(model.named_modules())
    names = [c for g in groups for c in g.consumers]
    inputs = calib.layer_inputs(model, calib_x, names)
    errors, unsmoothed, best = {}, {}, {}
    for g in groups:
        act = torch.stack([stats[c]["absmax"].float() for c in g.consumers]).amax(0)
        wmax = torch.stack([fold.weight_absmax_in(mods[c]) for c in g.consumers]).amax(0)
        refs = {c: _layer_out(mods[c], inputs[c], mods[c].weight.detach().float())
                for c in g.consumers}
        curve = []
        for a in grid:
            s = _scales(act, wmax, a, 1e-5)
            curve.append(sum(_layer_error(mods[c], inputs[c], refs[c], s, w_bits, a_bits,
                                          observer, percentile) for c in g.consumers))
        errors[g.key] = curve
        unsmoothed[g.key] = sum(_layer_error(mods[c], inputs[c], refs[c], None, w_bits, a_bits,
                                             observer, percentile) for c in g.consumers)
        best[g.key] = grid[int(np.argmin(curve))]
    return best, {"alpha": grid, "error": errors, "unsmoothed": unsmoothed}
