"""AWQ — activation-aware weight quantization (Lin et al., MLSys 2024) for Conv2d and Linear.

A few input channels carry large activations; the weights that multiply them matter most.
AWQ scales those weight columns up before quantizing (so they lose less to rounding) and
divides the input by the same scale, folded offline into the op that produces it
(``qlib.fold``): ``Y = (X diag(s)^-1) Q(W diag(s))``. Per group of layers sharing a scale:

1. statistic: ``x_j = mean |X_j|`` over the calibration batch and spatial positions;
2. ``s = x^alpha`` (weight-aware: ``x^alpha / mean|W_:,j|^(1-alpha)``), normalised by
   ``sqrt(max(s) min(s))``; for ``alpha`` in ``{0, 1/n, ..., (n-1)/n}`` quantize ``W diag(s)``,
   run the layer on ``X diag(s)^-1`` and keep the ``alpha`` with the smallest output error
   ``||Y_q - Y||^2 / ||Y||^2`` (``alpha = 0`` is plain RTN, so AWQ's error is never above it);
3. clipping: per output channel, shrink the quantization range by ratios in
   ``[clip_min, 1]`` and keep the ratio with the smallest error of that channel's output.

``search`` returns plain data (``AWQResult``); ``apply`` folds the scales and quantizes;
``apply_scales`` only folds (to hand the model to GPTQ: ``awq_then_gptq``).
``seed_paper_awq`` is the seed paper's transform, kept as an ablation.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import calib, export, fold, quant, rtn
from .quant import QTensor, QuantSettings


@dataclass(frozen=True)
class AWQSettings:
    """quant: how each weight is quantized (bits, granularity, ...). n_grid: number of alphas
    in [0, 1). weight_aware: divide by mean|W|^(1-alpha). clip: search a clipping ratio per
    output channel (n_clip ratios in [clip_min, 1]). mode: "bn" | "shared" (``qlib.fold``).
    keep_8bit: layer names quantized at 8 bits (``rtn.eight_bit``), e.g. ("conv1", "fc")."""

    quant: QuantSettings = QuantSettings(bits=4)
    n_grid: int = 20
    weight_aware: bool = False
    clip: bool = True
    mode: str = "bn"
    n_clip: int = 20
    clip_min: float = 0.5
    keep_8bit: tuple = ()

    def __post_init__(self):
        if not isinstance(self.quant, QuantSettings):
            raise ValueError(f"quant={self.quant!r}: expected a quant.QuantSettings "
                             "(AWQSettings.quant)")
        for name in ("n_grid", "n_clip"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1000:
                raise ValueError(f"{name}={v!r}: expected an integer in 1..1000 "
                                 f"(AWQSettings.{name})")
        for name in ("weight_aware", "clip"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r}: expected True or False "
                                 f"(AWQSettings.{name})")
        if self.mode not in fold.MODES:
            raise ValueError(f"mode={self.mode!r}: expected one of {fold.MODES} (AWQSettings.mode)")
        c = self.clip_min
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 < c <= 1:
            raise ValueError(f"clip_min={c!r}: expected a number in (0, 1] (AWQSettings.clip_min)")
        if isinstance(self.keep_8bit, str):
            raise ValueError(f"keep_8bit={self.keep_8bit!r}: expected a tuple of layer names, "
                             "e.g. ('conv1', 'fc') (AWQSettings.keep_8bit)")
        object.__setattr__(self, "keep_8bit", tuple(self.keep_8bit or ()))

    @property
    def alphas(self) -> List[float]:
        return [i / self.n_grid for i in range(self.n_grid)]

    @property
    def clip_ratios(self) -> List[float]:
        if not self.clip:
            return [1.0]
        return [float(r) for r in np.linspace(1.0, self.clip_min, self.n_clip)]


@dataclass
class AWQResult:
    """What ``search`` found (plain data). Per group key: ``scales`` (ones = unscaled),
    ``alpha`` (None: the weight-aware search fell back to no scaling), ``errors`` (summed
    output NMSE per alpha). Per layer: ``layer_errors`` (NMSE per alpha, grouped layers),
    ``rtn_error`` (plain RTN), ``scaled_error`` (scaled, before clipping), ``final_error``
    (after clipping), ``clip_ratios`` (per output channel, relative to ``quant.clip_ratio``),
    ``clip_curve`` (NMSE if every channel used the same ratio)."""

    settings: AWQSettings
    alphas: List[float]
    clip_grid: List[float]
    groups: Dict[str, fold.Group] = field(default_factory=dict)
    scales: Dict[str, torch.Tensor] = field(default_factory=dict)
    alpha: Dict[str, Optional[float]] = field(default_factory=dict)
    errors: Dict[str, List[float]] = field(default_factory=dict)
    layer_errors: Dict[str, List[float]] = field(default_factory=dict)
    rtn_error: Dict[str, float] = field(default_factory=dict)
    scaled_error: Dict[str, float] = field(default_factory=dict)
    final_error: Dict[str, float] = field(default_factory=dict)
    clip_ratios: Dict[str, torch.Tensor] = field(default_factory=dict)
    clip_curve: Dict[str, List[float]] = field(default_factory=dict)

    @property
    def layers(self) -> List[str]:
        return list(self.rtn_error)


# --------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------

def awq_scales(x_absmean: torch.Tensor, alpha: float, w_absmean: Optional[torch.Tensor] = None
               ) -> torch.Tensor:
    """``s = x^alpha`` (``/ w^(1-alpha)`` if ``w_absmean`` is given), divided by
    ``sqrt(max(s) min(s))``. ``alpha = 0`` without ``w_absmean`` gives exactly ones."""
    s = x_absmean.float().clamp(min=1e-4).pow(alpha)
    if w_absmean is not None:
        s = s / w_absmean.float().clamp(min=1e-4).pow(1 - alpha)
    return s / (s.max() * s.min()).sqrt()


def _out(m: nn.Module, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The layer's output without bias (the bias cancels in the error)."""
    if isinstance(m, nn.Conv2d):
        return F.conv2d(x, w, None, m.stride, m.padding, m.dilation, m.groups)
    return F.linear(x, w)


def _row_sq_err(yq: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared error per output channel, summed over batch and positions (float64)."""
    d = (yq - y).double().pow(2)
    return d.sum(dim=(0, 2, 3)) if d.dim() == 4 else d.sum(dim=0)


def _energy(y: torch.Tensor) -> float:
    return max(float(y.double().pow(2).sum()), 1e-30)


def _scale_cols(t: torch.Tensor, s: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    shape = (1, -1, 1, 1) if t.dim() == 4 else (1, -1)
    return t / s.view(shape) if inverse else t * s.view(shape)


def quantize_rows(w: torch.Tensor, q: QuantSettings, ratios: Optional[torch.Tensor] = None
                  ) -> QTensor:
    """``quant.quantize(w, q)`` with a clipping ratio per output channel (relative to
    ``q.clip_ratio``; one value for granularity "tensor"). ``ratios`` None or all ones:
    exactly ``quant.quantize(w, q)``."""
    if ratios is None or bool((ratios == 1).all()):
        return quant.quantize(w, q)
    w2d = quant.weight_view(w.detach().float())
    scale = zero = None
    for r in torch.unique(ratios).tolist():
        sc, z = quant.find_params(w2d, replace(q, clip_ratio=q.clip_ratio * r))
        rows = (ratios == r).view(-1, 1)
        scale = sc if scale is None else torch.where(rows, sc, scale)
        zero = z if zero is None else torch.where(rows, z, zero)
    codes = quant.quantize_with(w2d, scale, zero, q.bits, q.symmetric)
    return QTensor(codes=codes, scale=scale, zero=zero, bits=q.bits, symmetric=q.symmetric,
                   group_size=q.group_size if q.granularity == "group" else None,
                   shape=tuple(w.shape))


def _deq(w: torch.Tensor, q: QuantSettings) -> torch.Tensor:
    return quant.quantize(w, q).dequantize()


def _clip_search(m, x, w, y, q: QuantSettings, grid: List[float]):
    """Per output channel (one for granularity "tensor"), the clipping ratio of ``grid``
    (first = 1, kept unless another is strictly better) with the smallest output error.
    Returns (ratios, row errors at ratio 1, row errors at the chosen ratios, curve)."""
    best = first = ratios = None
    curve = []
    energy = _energy(y)
    per_tensor = q.granularity == "tensor"
    for r in grid:
        e = _row_sq_err(_out(m, x, _deq(w, replace(q, clip_ratio=q.clip_ratio * r))), y)
        curve.append(float(e.sum()) / energy)
        if per_tensor:
            e = e.sum().view(1)
        if best is None:
            first, best, ratios = e, e.clone(), torch.full_like(e, r, dtype=torch.float64)
            continue
        better = e < best
        best = torch.where(better, e, best)
        ratios = torch.where(better, torch.full_like(ratios, r), ratios)
    return ratios, first, best, curve


# --------------------------------------------------------------------------------------
# Search and apply
# --------------------------------------------------------------------------------------

@torch.no_grad()
def search(model: nn.Module, calib_x: torch.Tensor, settings: AWQSettings = AWQSettings()
           ) -> AWQResult:
    """AWQ's scale search (per group of ``fold.scalable_layers(model, settings.mode)``) and
    clipping search (every Conv2d/Linear), on the layer inputs of ``calib_x`` (train split).
    Layers in no group (the stem conv; the residual-stream readers in mode "bn") get RTN with
    the clipping search."""
    if not isinstance(settings, AWQSettings):
        raise ValueError(f"settings={settings!r}: expected an AWQSettings")
    calib_x = calib.check_x(calib_x, "awq.search")
    groups = fold.scalable_layers(model, settings.mode)
    qs = rtn.layer_settings(model, settings.quant, settings.keep_8bit, "awq")  # per layer
    names = list(qs)
    res = AWQResult(settings=settings, alphas=settings.alphas, clip_grid=settings.clip_ratios)
    mods = dict(model.named_modules())

    # 1. alpha per group, on the FP model's layer inputs
    xs = calib.layer_inputs(model, calib_x, names)
    refs = {}
    for n in names:
        w = mods[n].weight.detach().float()
        y = refs[n] = _out(mods[n], xs[n], w)
        yq = _out(mods[n], xs[n], _deq(w, qs[n]))
        res.rtn_error[n] = float(_row_sq_err(yq, y).sum()) / _energy(y)
    for g in groups:  # a residual-stream group: the consumers' mean |X| averaged
        x_mean = torch.stack([calib.channel_abs(xs[c]).mean(1) for c in g.consumers]).mean(0)
        w_mean = (torch.stack([fold.weight_absmean_in(mods[c]) for c in g.consumers]).mean(0)
                  if settings.weight_aware else None)
        per_layer = {c: [] for c in g.consumers}
        curve, cands = [], []
        for a in res.alphas:
            s = awq_scales(x_mean, a, w_mean)
            cands.append(s)
            for c in g.consumers:
                w = mods[c].weight.detach().float()
                wq = _deq(_scale_cols(w, s), qs[c])
                yq = _out(mods[c], _scale_cols(xs[c], s, inverse=True), wq)
                per_layer[c].append(float(_row_sq_err(yq, refs[c]).sum()) / _energy(refs[c]))
            curve.append(sum(per_layer[c][-1] for c in g.consumers))
        i = int(np.argmin(curve))
        chosen, alpha = cands[i], res.alphas[i]
        if settings.weight_aware and curve[i] >= sum(res.rtn_error[c] for c in g.consumers):
            chosen, alpha = torch.ones_like(chosen), None  # no candidate beats plain RTN
        res.groups[g.key] = g
        res.scales[g.key], res.alpha[g.key], res.errors[g.key] = chosen, alpha, curve
        res.layer_errors.update(per_layer)
    del xs, refs

    # 2. clipping, on the scaled model (exactly the weights that ``apply`` quantizes)
    scaled = fold.apply_scales(model, res.scales)
    smods = dict(scaled.named_modules())
    xs = calib.layer_inputs(scaled, calib_x, names)
    for n in names:
        m, x = smods[n], xs.pop(n)
        w = m.weight.detach().float()
        y = _out(m, x, w)
        ratios, first, best, curve = _clip_search(m, x, w, y, qs[n], res.clip_grid)
        res.scaled_error[n] = float(first.sum()) / _energy(y)
        res.final_error[n] = float(best.sum()) / _energy(y)
        res.clip_ratios[n], res.clip_curve[n] = ratios, curve
    return res


def apply_scales(model: nn.Module, result: AWQResult) -> nn.Module:
    """A copy of ``model`` with AWQ's scales folded (same float function), not quantized."""
    return fold.apply_scales(model, result.scales)


@torch.no_grad()
def apply(model: nn.Module, result: AWQResult, settings: Optional[AWQSettings] = None) -> nn.Module:
    """The AWQ-quantized copy of ``model``: scales folded, then every searched layer quantized
    with its clipping ratios and attached (``export.attach``: ``export.save`` packs it)."""
    settings = result.settings if settings is None else settings
    if (settings.quant, settings.keep_8bit) != (result.settings.quant, result.settings.keep_8bit):
        raise ValueError(f"apply: settings.quant={settings.quant}, keep_8bit={settings.keep_8bit} "
                         f"differ from the search's ({result.settings.quant}, "
                         f"{result.settings.keep_8bit}); search again with these settings")
    qs = rtn.layer_settings(model, settings.quant, settings.keep_8bit, "awq")
    model = apply_scales(model, result)
    mods = dict(model.named_modules())
    for n in result.layers:
        ratios = result.clip_ratios.get(n) if settings.clip else None
        export.attach(mods[n], quantize_rows(mods[n].weight, qs[n], ratios))
    return model.eval()


@torch.no_grad()
def layer_errors(fp_model: nn.Module, qmodel: nn.Module, x: torch.Tensor,
                 scaled_fp: Optional[nn.Module] = None) -> Dict[str, float]:
    """Per layer, the output NMSE of a quantized layer on its float input: ``qmodel``'s weight
    on the inputs of ``scaled_fp`` (the float model with the same scales folded; default
    ``fp_model``) vs the float layer of ``fp_model`` on its inputs. Use held-out ``x`` to check
    that the calibration result generalises."""
    names = calib.layer_names(fp_model)
    src = fp_model if scaled_fp is None else scaled_fp
    fx, sx = calib.layer_inputs(fp_model, x, names), calib.layer_inputs(src, x, names)
    fm, sm, qm = (dict(m.named_modules()) for m in (fp_model, src, qmodel))
    out = {}
    for n in names:
        y = _out(fm[n], fx[n], fm[n].weight.detach().float())
        yq = _out(sm[n], sx[n], qm[n].weight.detach().float())
        out[n] = float(_row_sq_err(yq, y).sum()) / _energy(y)
    return out


def awq_then_gptq(model: nn.Module, calib_x: torch.Tensor, result: AWQResult, gptq_settings,
                  **kw):
    """AWQ's scales (``apply_scales``, no quantization), then GPTQ on the scaled model:
    ``gptq.quantize_model(scaled, calib_x, gptq_settings, **kw) -> (model, report)``."""
    try:
        from . import gptq
    except ImportError:
        gptq = None
    fn = getattr(gptq, "quantize_model", None)
    if fn is None:
        raise NotImplementedError(
            "awq_then_gptq: qlib.gptq.quantize_model(model, calib_x, settings) is not available "
            "yet; awq.apply_scales(model, result) gives the scaled float model to hand to GPTQ")
    return fn(apply_scales(model, result), calib_x, gptq_settings, **kw)


# --------------------------------------------------------------------------------------
# The seed paper's "AWQ" (ablation): NOT an equivalence transform
# --------------------------------------------------------------------------------------

SEED_ALPHAS = (0.1, 0.2, 0.3, 0.4, 0.5)
SEED_S = (1.25, 1.5, 1.75, 2.0)


@torch.no_grad()
def output_absmean(model: nn.Module, x: torch.Tensor, batch_size: int = 64
                   ) -> Dict[str, torch.Tensor]:
    """mean |Y| per output channel of every Conv2d/Linear on ``x`` (the seed's statistic)."""
    acc: Dict[str, list] = {}
    mods = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]

    def hook(n, y):
        d = (0, 2, 3) if y.dim() == 4 else (0,)
        cnt = y.numel() // y.shape[1]
        acc.setdefault(n, []).append((y.detach().abs().double().sum(dim=d), cnt))

    calib.check_x(x, "awq.output_absmean")
    hooks = [m.register_forward_hook(lambda m, a, y, n=n: hook(n, y)) for n, m in mods]
    try:
        calib.run(model, x, batch_size)
    finally:
        for h in hooks:
            h.remove()
    return {n: (sum(s for s, _ in v) / sum(c for _, c in v)).float() for n, v in acc.items()}


@torch.no_grad()
def seed_paper_awq(model: nn.Module, act_absmean: Dict[str, torch.Tensor], alpha: float,
                   s: float, quantize: bool = True) -> nn.Module:
    """The seed paper's transform, as an ablation: per layer, every OUTPUT channel of the
    weight scaled by its activation magnitude^alpha (nothing compensates: the function
    changes), the top 1% weights by magnitude multiplied by ``s``, then per-tensor int8.
    ``quantize=False``: the transformed float model (to show it already differs from FP)."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha={alpha!r}: expected a number in [0, 1] (seed_paper_awq)")
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not s > 0:
        raise ValueError(f"s={s!r}: expected a number > 0 (seed_paper_awq)")
    model = copy.deepcopy(model)
    for n, m in model.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        a = act_absmean[n].float()
        if a.numel() != m.weight.shape[0]:
            raise ValueError(f"act_absmean[{n!r}] has {a.numel()} values; expected one per output "
                             f"channel ({m.weight.shape[0]}): see awq.output_absmean")
        w = m.weight.detach().float() * a.pow(alpha).view(-1, *[1] * (m.weight.dim() - 1))
        flat = w.reshape(-1)
        top = flat.abs().topk(max(1, int(0.01 * flat.numel()))).indices
        flat[top] *= s
        if quantize:
            export.attach(m, quant.quantize(w, QuantSettings(bits=8, granularity="tensor")))
        else:
            m.weight.data.copy_(w.view_as(m.weight))
    return model
