"""The uniform quantizer: integer codes, scales and zero points of a weight tensor.

Conventions (every method in qlib uses these, and ``export`` stores them):

* A weight of shape ``[C_out, C_in, kh, kw]`` (conv) or ``[C_out, C_in]`` (linear) is
  quantized through its 2-D view ``[C_out, C_in*kh*kw]`` (``weight_view``): rows are output
  channels, columns are the inputs of one output.
* Granularity: ``"tensor"`` one (scale, zero) for the whole tensor (shape ``[1, 1]``);
  ``"channel"`` one per output channel (``[C_out, 1]``); ``"group"`` one per row and group
  of ``group_size`` consecutive columns (``[C_out, C_in*kh*kw // group_size]``).
* ``w_hat = (q - zero) * scale``, ``q = clamp(round(w / scale) + zero, qmin, qmax)``,
  rounding half to even (``torch.round``).
* Symmetric (GPTQ's convention): signed codes ``q`` in ``[-2^(b-1), 2^(b-1)-1]``,
  ``zero = 0``, ``scale = 2*amax / (2^b - 1)`` with ``amax = clip * max|w|``: a finer step
  than the restricted ``amax / (2^(b-1)-1)``; ``+-amax`` lie half a step beyond the levels
  ``+-(2^(b-1)-1)``, so every ``|w| <= amax`` is within half a step of its level, and the
  extra code ``-2^(b-1)`` only receives values clipped below ``-amax``.
* Asymmetric: unsigned codes in ``[0, 2^b - 1]``; the range ``[min(w, 0), max(w, 0)]``
  (times ``clip``) gives ``scale = (max - min) / (2^b - 1)`` and an *integer* zero point
  ``zero = round(-min / scale)`` in ``[0, 2^b - 1]`` (so 0.0 is represented exactly).
* Scales are rounded *up* to the next float16-representable value at quantize time (and
  clamped to ``[2^-24, 65504]``; an all-zero row gets scale 1). A file that stores them as
  float16 therefore reproduces the in-memory model bit for bit, and rounding up (never
  down) keeps every value of the clipping range within half a step of its level.
* ``range="mse"`` searches ``MSE_GRID`` clipping ratios in ``[MSE_MIN_RATIO, 1] * clip_ratio``
  per row/group/tensor and keeps the one minimising ``sum |w - w_hat|^MSE_NORM`` (as GPTQ's
  reference quantizer does); ratio 1 is a candidate, so it is never worse than minmax.
* Storage: ``pack`` takes *unsigned* codes ``u = q - qmin`` (signed symmetric codes are
  offset by ``2^(b-1)``) and writes their low ``b`` bits as one dense bit stream,
  most-significant bit first; ``n`` codes take ``ceil(n*b/8)`` bytes.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch
from torch import nn

GRANULARITIES = ("tensor", "channel", "group")
RANGES = ("minmax", "mse")
MSE_GRID = 100          # number of clipping ratios tried by range="mse"
MSE_MIN_RATIO = 0.2     # smallest ratio tried
MSE_NORM = 2.4          # exponent p of the reconstruction error |w - w_hat|^p (GPTQ's choice)
FP16_TINY, FP16_MAX = 2.0 ** -24, 65504.0


@dataclass(frozen=True)
class QuantSettings:
    """How to quantize one weight tensor (see the module docstring for the conventions).

    bits: 2..8. symmetric: signed codes with zero 0, else unsigned codes + integer zero point.
    granularity: "tensor" | "channel" (per output channel) | "group" (``group_size``
    consecutive input columns of the 2-D weight view). range: "minmax" | "mse" (search of the
    clipping ratio). clip_ratio: fixed shrink of the range, in (0, 1].
    """

    bits: int = 4
    symmetric: bool = True
    granularity: str = "channel"
    group_size: int = 128
    range: str = "minmax"
    clip_ratio: float = 1.0

    def __post_init__(self):
        b = self.bits
        if isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= 8:
            raise ValueError(f"bits={b!r}: expected an integer in 2..8 (QuantSettings.bits)")
        if not isinstance(self.symmetric, bool):
            raise ValueError(f"symmetric={self.symmetric!r}: expected True or False "
                             "(QuantSettings.symmetric)")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity={self.granularity!r}: expected one of "
                             f"{GRANULARITIES} (QuantSettings.granularity)")
        g = self.group_size
        if isinstance(g, bool) or not isinstance(g, int) or g < 1:
            raise ValueError(f"group_size={g!r}: expected an integer >= 1 "
                             "(QuantSettings.group_size)")
        if self.range not in RANGES:
            raise ValueError(f"range={self.range!r}: expected one of {RANGES} "
                             "(QuantSettings.range)")
        c = self.clip_ratio
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0.0 < c <= 1.0:
            raise ValueError(f"clip_ratio={c!r}: expected a number in (0, 1] "
                             "(QuantSettings.clip_ratio)")


def qrange(bits: int, symmetric: bool) -> Tuple[int, int]:
    """(qmin, qmax) of the integer codes."""
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)


@dataclass
class QTensor:
    """A quantized weight: ``codes`` [C_out, cols] (int16), ``scale`` and ``zero``
    [C_out or 1, n_groups or 1] (float32; scale float16-representable, zero integer-valued),
    ``shape`` the original weight shape."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    symmetric: bool
    group_size: Optional[int]
    shape: Tuple[int, ...]

    def dequantize(self) -> torch.Tensor:
        return dequantize_codes(self.codes, self.scale, self.zero).reshape(self.shape)

    @property
    def qmin(self) -> int:
        return qrange(self.bits, self.symmetric)[0]

    def nbytes(self) -> int:
        """Bytes in an export: packed codes + float16 scales (+ uint8 zeros if asymmetric)."""
        n = math.ceil(self.codes.numel() * self.bits / 8) + 2 * self.scale.numel()
        return n + (0 if self.symmetric else self.zero.numel())


def weight_view(w: torch.Tensor) -> torch.Tensor:
    """The 2-D view [C_out, C_in*kh*kw] that the quantizer works on."""
    return w.reshape(w.shape[0], -1)


def _grouped(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor):
    """Make per-group parameters [R, G] broadcast against a 2-D [R, cols] tensor: view it as
    [R, G, cols // G] and the parameters as [R, G, 1]. Other shapes are returned as they are."""
    cols = w.shape[-1]
    if scale.dim() < 2 or scale.shape[-1] in (1, cols):
        return w, scale, zero
    g = scale.shape[-1]
    return w.reshape(w.shape[0], g, cols // g), scale.unsqueeze(-1), zero.unsqueeze(-1)


def _fp16_up(s: torch.Tensor) -> torch.Tensor:
    """Round positive scales up to the next float16-representable value."""
    s = torch.where(s > 0, s, torch.ones_like(s)).clamp(FP16_TINY, FP16_MAX)
    h = s.half()
    h = torch.where(h.float() < s, torch.nextafter(h, torch.full_like(h, float("inf"))), h)
    return h.float()


def _minmax_params(xmin, xmax, bits, symmetric):
    """scale, zero for rows whose (clipped) range is [xmin, xmax] (xmin <= 0 <= xmax)."""
    levels = 2 ** bits - 1
    if symmetric:
        scale = _fp16_up(2 * torch.maximum(-xmin, xmax) / levels)
        return scale, torch.zeros_like(scale)
    scale = _fp16_up((xmax - xmin) / levels)
    zero = torch.round(-xmin / scale).clamp(0, levels) + 0.0  # + 0.0: no -0.0
    return scale, zero


def _check_groups(cols: int, settings: QuantSettings, shape) -> None:
    if settings.granularity == "group" and cols % settings.group_size:
        raise ValueError(
            f"group_size={settings.group_size} does not divide the {cols} input columns of a "
            f"weight of shape {tuple(shape)} (2-D view [{shape[0]}, {cols}]); pick a divisor of "
            f"{cols} or granularity='channel' for this layer (QuantSettings.group_size)")


def find_params(w2d: torch.Tensor, settings: QuantSettings) -> Tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) of a 2-D weight [R, cols]: shapes [1, 1] (tensor), [R, 1] (channel) or
    [R, cols // group_size] (group). GPTQ calls it on a block of columns with "channel"."""
    w2d = w2d.detach().float()
    rows, cols = w2d.shape
    _check_groups(cols, settings, w2d.shape)
    if settings.granularity == "tensor":
        x, out_shape = w2d.reshape(1, -1), (1, 1)
    elif settings.granularity == "channel":
        x, out_shape = w2d, (rows, 1)
    else:
        n_groups = cols // settings.group_size
        x, out_shape = w2d.reshape(rows * n_groups, settings.group_size), (rows, n_groups)
    xmin = x.amin(dim=1, keepdim=True).clamp(max=0) if x.numel() else x.new_zeros(len(x), 1)
    xmax = x.amax(dim=1, keepdim=True).clamp(min=0) if x.numel() else x.new_zeros(len(x), 1)
    bits, sym, clip = settings.bits, settings.symmetric, settings.clip_ratio
    if settings.range == "mse" and x.numel():
        scale, zero = _mse_search(x, xmin, xmax, bits, sym, clip)
    else:
        scale, zero = _minmax_params(xmin * clip, xmax * clip, bits, sym)
    return scale.reshape(out_shape), zero.reshape(out_shape)


def _mse_search(x, xmin, xmax, bits, symmetric, clip, chunk=2 ** 17):
    """Per row of x: the (scale, zero) of the clipping ratio in [MSE_MIN_RATIO, 1] * clip
    with the smallest sum |w - w_hat|^MSE_NORM; ratio 1 first, replaced only if strictly
    better. Rows are processed in cache-sized chunks."""
    qmin, qmax = qrange(bits, symmetric)
    ratios = [float(r) * clip for r in np.linspace(1.0, MSE_MIN_RATIO, MSE_GRID)]
    ratios[0] = clip
    scales, zeros = [], []
    step = max(1, chunk // max(1, x.shape[1]))
    for i in range(0, x.shape[0], step):
        xc, lo, hi = x[i:i + step], xmin[i:i + step], xmax[i:i + step]
        best = scale = zero = None
        for r in ratios:
            s, z = _minmax_params(lo * r, hi * r, bits, symmetric)
            d = torch.round(xc / s).add_(z).clamp_(qmin, qmax).sub_(z).mul_(s).sub_(xc)
            err = d.abs_().pow_(MSE_NORM).sum(dim=1, keepdim=True)
            if best is None:
                best, scale, zero = err, s, z
                continue
            better = err < best
            best = torch.where(better, err, best)
            scale = torch.where(better, s, scale)
            zero = torch.where(better, z, zero)
        scales.append(scale)
        zeros.append(zero)
    return torch.cat(scales), torch.cat(zeros)


def quantize_with(w_cols: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                  bits: int, symmetric: bool) -> torch.Tensor:
    """Integer codes (int16) of ``w_cols`` ([R, cols], or one column [R]) for given
    scale/zero ([R, 1], [R, cols] or per group [R, G])."""
    one_col = w_cols.dim() == 1
    w = w_cols.detach().float().unsqueeze(1) if one_col else w_cols.detach().float()
    qmin, qmax = qrange(bits, symmetric)
    w3, s, z = _grouped(w, scale, zero)
    q = torch.round(w3 / s).add_(z).clamp_(qmin, qmax).to(torch.int16).reshape(w.shape)
    return q.squeeze(1) if one_col else q


def dequantize_codes(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """``(codes - zero) * scale`` in float32, per-group parameters broadcast to the columns."""
    if codes.dim() == 1:
        return dequantize_codes(codes.unsqueeze(1), scale, zero).squeeze(1)
    c3, s, z = _grouped(codes, scale, zero)
    return c3.to(torch.float32, copy=True).sub_(z.float()).mul_(s.float()).reshape(codes.shape)


def quantize(w: torch.Tensor, settings: QuantSettings) -> QTensor:
    """Quantize a weight tensor (any shape [C_out, ...]) into a QTensor."""
    w2d = weight_view(w.detach().float())
    _check_groups(w2d.shape[1], settings, tuple(w.shape))
    scale, zero = find_params(w2d, settings)
    codes = quantize_with(w2d, scale, zero, settings.bits, settings.symmetric)
    return QTensor(codes=codes, scale=scale, zero=zero, bits=settings.bits,
                   symmetric=settings.symmetric,
                   group_size=settings.group_size if settings.granularity == "group" else None,
                   shape=tuple(w.shape))


def dequantize(qt: QTensor) -> torch.Tensor:
    return qt.dequantize()


class _FakeQuantSTE(torch.autograd.Function):
    """Forward: quantize-dequantize. Backward: straight-through inside the clipping range
    (``qmin <= round(x/scale) + zero <= qmax``), zero outside; no gradient for scale/zero."""

    @staticmethod
    def forward(ctx, x, scale, zero, qmin, qmax):
        v = torch.round(x / scale) + zero
        ctx.save_for_backward((v >= qmin) & (v <= qmax))
        return (torch.clamp(v, qmin, qmax) - zero) * scale

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask, None, None, None, None


def fake_quant(x: torch.Tensor, scale, zero, qmin: int, qmax: int) -> torch.Tensor:
    """Quantize-dequantize ``x`` (scale/zero broadcastable to x) with a straight-through
    gradient. Bit-identical to ``dequantize_codes(quantize_with(...))``."""
    scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device).detach()
    zero = torch.as_tensor(zero, dtype=x.dtype, device=x.device).detach()
    return _FakeQuantSTE.apply(x, scale, zero, qmin, qmax)


def fake_quant_weight(w: torch.Tensor, settings: QuantSettings) -> torch.Tensor:
    """Fake-quantized ``w`` (same shape, STE gradient); equals ``quantize(w).dequantize()``."""
    w2d = weight_view(w)
    _check_groups(w2d.shape[1], settings, tuple(w.shape))
    w3, scale, zero = _grouped(w2d, *find_params(w2d, settings))
    qmin, qmax = qrange(settings.bits, settings.symmetric)
    return fake_quant(w3, scale, zero, qmin, qmax).reshape(w.shape)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Dense bit stream (uint8, MSB first) of unsigned codes in [0, 2^bits); the codes are
    flattened; the result has ``ceil(n*bits/8)`` bytes (the last one zero-padded)."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits={bits!r}: expected an integer in 1..8 (pack)")
    u = codes.detach().cpu().reshape(-1).numpy() if torch.is_tensor(codes) else np.ravel(codes)
    if u.size and (u.min() < 0 or u.max() >= 2 ** bits):
        raise ValueError(f"pack: codes must be unsigned in [0, {2 ** bits - 1}] for bits={bits}, "
                         f"got [{u.min()}, {u.max()}] (offset signed codes by -qmin first)")
    u8 = u.astype(np.uint8)
    if bits == 8:
        return torch.from_numpy(u8.copy())
    stream = np.unpackbits(u8[:, None], axis=1)[:, 8 - bits:]
    return torch.from_numpy(np.packbits(stream.reshape(-1)))


def unpack(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of ``pack``: the first ``n`` unsigned codes (int16, 1-D)."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits={bits!r}: expected an integer in 1..8 (unpack)")
    p = packed.detach().cpu().reshape(-1).numpy() if torch.is_tensor(packed) else np.ravel(packed)
    if p.dtype != np.uint8 or p.size != math.ceil(n * bits / 8):
        raise ValueError(f"unpack: expected {math.ceil(n * bits / 8)} uint8 bytes for n={n} "
                         f"codes of {bits} bits, got {p.size} of {p.dtype}")
    if bits == 8:
        return torch.from_numpy(p.astype(np.int16))
    stream = np.unpackbits(p, count=n * bits).reshape(n, bits)
    full = np.zeros((n, 8), dtype=np.uint8)
    full[:, 8 - bits:] = stream
    return torch.from_numpy(np.packbits(full, axis=1).reshape(-1).astype(np.int16))


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every BatchNorm2d that directly consumes a Conv2d's output
    folded into that conv (found by tracing with torch.fx) and replaced by ``nn.Identity``:
    ``w' = w * gamma/sqrt(var+eps)`` per output channel, ``b' = beta + (b - mean) *
    gamma/sqrt(var+eps)``. Uses the running statistics: equal outputs in eval mode only."""
    model = copy.deepcopy(model)
    modules = dict(model.named_modules())
    graph = torch.fx.symbolic_trace(model).graph
    calls = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, nn.BatchNorm2d) or not bn.track_running_stats:
            continue
        prev = node.args[0] if node.args else None
        if (isinstance(prev, torch.fx.Node) and prev.op == "call_module"
                and isinstance(modules.get(prev.target), nn.Conv2d) and len(prev.users) == 1
                and calls[prev.target] == 1 and calls[node.target] == 1):
            pairs.append((prev.target, node.target))
    for conv_name, bn_name in pairs:
        conv, bn = modules[conv_name], modules[bn_name]
        if hasattr(conv, "qweight"):
            raise ValueError(f"fold_batchnorm: {conv_name} is already quantized; fold first")
        with torch.no_grad():
            inv = (bn.running_var.double() + bn.eps).rsqrt()
            gamma = bn.weight.double() if bn.affine else torch.ones_like(inv)
            beta = bn.bias.double() if bn.affine else torch.zeros_like(inv)
            k = gamma * inv
            b = conv.bias.double() if conv.bias is not None else torch.zeros_like(inv)
            w = conv.weight.double() * k.reshape(-1, 1, 1, 1)
            conv.weight.data = w.to(conv.weight.dtype)
            new_b = (beta + (b - bn.running_mean.double()) * k).to(conv.weight.dtype)
            conv.bias = nn.Parameter(new_b.to(conv.weight.device))
        parent_name, _, child = bn_name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, nn.Identity())
    return model
