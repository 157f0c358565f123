"""GPTQ (Frantar et al., ICLR 2023): quantize a layer's weight column by column and feed each
column's rounding error back into the columns not yet quantized.

Per layer (Conv2d or Linear) GPTQ minimises the output error on the calibration inputs X,

    argmin_{W_hat} || W X - W_hat X ||_2^2 ,    H = 2 X X^T ,

where for a conv X holds the *unfolded* input patches (``F.unfold`` with the conv's kernel
size, stride, padding and dilation: column order ``(c_in, kh, kw)``, the order of
``quant.weight_view``) and W its 2-D view ``[C_out, C_in*kh*kw]``. Quantizing column q to
``quant(w_q)`` leaves the error ``e = (w_q - quant(w_q)) / [H^-1]_qq``; the optimal update of
the remaining columns is ``W_F -= e [H^-1]_{q,F}`` (OBQ), which with the upper Cholesky
factor of ``H^-1`` needs no re-inversion. Columns are processed in blocks of ``blocksize``:
updates inside a block are immediate, updates of the later columns lazy (one matrix product
per block). Options: act-order (columns by descending ``diag H``), dampening ``percdamp *
mean(diag H)``, per-group parameters (at each group boundary from the current, updated
weights — or, with ``static_groups``, all up front from the original weights).

The code follows the IST-DASLab reference ``gptq.py``: one small class per layer
(``GPTQ.add_batch``, ``GPTQ.fasterquant``); the quantizer is ``quant``'s
``find_params / quantize_with / dequantize_codes``. ``quantize_model`` runs it over a whole
model, *sequentially*: layer k is calibrated on the inputs produced by the model whose layers
before k are already quantized. For a torchvision ResNet the model is cut into a chain of
units (stem, 8 residual blocks, head) whose inputs are cached, so each layer only re-runs its
own unit; any other model is re-run up to the layer.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from . import calib, export, quant, rtn
from .quant import QTensor, QuantSettings


@dataclass(frozen=True)
class GPTQSettings:
    """quant: the weight quantizer (bits, sym/asym, tensor/channel/group, range).
    percdamp: dampening, a fraction (>= 0) of mean(diag H) added to the diagonal.
    blocksize: columns per lazy-update block (>= 1). act_order: columns in order of descending
    diag H. static_groups: group parameters computed up front (needed with act_order and
    groups, so the stored group scales stay in storage order). calib_size: at most this many
    calibration images are used. keep_8bit: layer names kept at 8 bits (``rtn.eight_bit``).
    fold_bn: quantize the BN-folded model. sequential: calibrate layer k on the partially
    quantized model (False: every layer on the float model's inputs)."""

    quant: QuantSettings = QuantSettings(bits=4)
    percdamp: float = 0.01
    blocksize: int = 128
    act_order: bool = False
    static_groups: bool = False
    calib_size: int = 256
    keep_8bit: tuple = ()
    fold_bn: bool = False
    sequential: bool = True

    def __post_init__(self):
        if not isinstance(self.quant, QuantSettings):
            raise ValueError(f"quant={self.quant!r}: expected a quant.QuantSettings "
                             "(GPTQSettings.quant)")
        p = self.percdamp
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < math.inf:
            raise ValueError(f"percdamp={p!r}: expected a finite number >= 0, e.g. 0.01 "
                             "(GPTQSettings.percdamp)")
        for name in ("blocksize", "calib_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r}: expected an integer >= 1 (GPTQSettings.{name})")
        for name in ("act_order", "static_groups", "fold_bn", "sequential"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r}: expected True or False "
                                 f"(GPTQSettings.{name})")
        if self.act_order and self.quant.granularity == "group" and not self.static_groups:
            raise ValueError("act_order=True with granularity='group' needs static_groups=True: "
                             "groups found in act-order would not be contiguous in storage order "
                             "(GPTQSettings.static_groups)")
        if isinstance(self.keep_8bit, str):
            raise ValueError(f"keep_8bit={self.keep_8bit!r}: expected a tuple of layer names, "
                             "e.g. ('conv1', 'fc') (GPTQSettings.keep_8bit)")
        object.__setattr__(self, "keep_8bit", tuple(self.keep_8bit or ()))


# --------------------------------------------------------------------------------------
# One layer
# --------------------------------------------------------------------------------------

class GPTQ:
    """GPTQ for one Conv2d/Linear: ``add_batch(x)`` for every calibration batch of the layer's
    inputs, then ``fasterquant(settings)`` quantizes the layer (``export.attach``)."""

    def __init__(self, layer: nn.Module, name: str = "layer"):
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            raise ValueError(f"GPTQ: {name} is a {type(layer).__name__}; expected Conv2d or Linear")
        if isinstance(layer, nn.Conv2d):
            if layer.groups != 1:
                raise ValueError(f"GPTQ: {name} is a grouped convolution (groups={layer.groups}); "
                                 "only groups=1 is supported")
            if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
                raise ValueError(f"GPTQ: {name} has padding={layer.padding!r}, padding_mode="
                                 f"{layer.padding_mode!r}; only integer zero padding is supported")
        self.layer, self.name = layer, name
        self.W = quant.weight_view(layer.weight.detach()).float().clone()  # the original weight
        self.rows, self.columns = self.W.shape
        self.H = torch.zeros(self.columns, self.columns, device=self.W.device)
        self.nsamples = 0   # calibration images (batch items) seen
        self.positions = 0  # columns of X: images x output positions

    def add_batch(self, inp: torch.Tensor) -> None:
        """H = 2/n sum_i X_i X_i^T as a running mean over the n images seen so far."""
        inp = inp.detach().to(self.H.device)
        tmp = inp.shape[0]
        if isinstance(self.layer, nn.Linear):
            inp = inp.reshape(-1, inp.shape[-1]).t()                      # [cols, N]
        else:
            L = self.layer
            inp = F.unfold(inp, L.kernel_size, dilation=L.dilation, padding=L.padding,
                           stride=L.stride)                               # [N, cols, positions]
            inp = inp.permute(1, 0, 2).flatten(1)                         # [cols, N*positions]
        self.H *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        self.positions += inp.shape[1]
        inp = math.sqrt(2 / self.nsamples) * inp.float()
        self.H.addmm_(inp, inp.t())

    @torch.no_grad()
    def fasterquant(self, settings: QuantSettings, blocksize: int = 128, percdamp: float = 0.01,
                    act_order: bool = False, static_groups: bool = False) -> QTensor:
        """Quantize the layer (Algorithm 1 of the paper), attach and return the QTensor."""
        if self.nsamples == 0:
            raise ValueError(f"GPTQ: {self.name} has seen no calibration inputs (add_batch)")
        W = self.W.clone()
        H = self.H.clone()
        bits, sym = settings.bits, settings.symmetric
        grouped = settings.granularity == "group"
        gs = settings.group_size
        if grouped and self.columns % gs:
            quant._check_groups(self.columns, settings, tuple(self.layer.weight.shape))

        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0

        if grouped and not static_groups:   # filled at each group boundary below
            scale = torch.zeros(self.rows, self.columns // gs, device=W.device)
            zero = torch.zeros_like(scale)
        else:                                # per tensor / channel / static groups: up front
            scale, zero = quant.find_params(W, settings)

        perm = torch.arange(self.columns, device=W.device)  # processing order -> storage column
        if act_order:
            perm = torch.argsort(torch.diag(H), descending=True)
            W, H = W[:, perm], H[perm][:, perm]

        damp = percdamp * torch.mean(torch.diag(H))
        idx = torch.arange(self.columns, device=W.device)
        H[idx, idx] += damp
        try:
            H = torch.linalg.cholesky(H)
            H = torch.cholesky_inverse(H)
            Hinv = torch.linalg.cholesky(H, upper=True)
        except torch.linalg.LinAlgError:
            raise ValueError(f"GPTQ: the Hessian of {self.name} is not positive definite with "
                             f"percdamp={percdamp}; use a larger dampening (e.g. 0.01) or more "
                             "calibration data (GPTQSettings.percdamp)") from None

        order = perm.tolist()
        qmin, qmax = quant.qrange(bits, sym)
        Q = torch.zeros_like(W)
        codes = torch.zeros_like(W)  # integer-valued floats; int16 at the end
        s_col, z_col = scale.reshape(-1).float(), zero.reshape(-1).float()  # per channel / tensor
        for i1 in range(0, self.columns, blocksize):
            i2 = min(i1 + blocksize, self.columns)
            W1 = W[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]

            for i in range(i2 - i1):
                w, d = W1[:, i], Hinv1[i, i]
                j = order[i1 + i]                         # the column in storage order
                if grouped:
                    g = j // gs
                    if not static_groups and j % gs == 0:  # params of the current weights
                        cur = torch.cat([W1[:, i:], W[:, i2:]], dim=1)[:, :gs]
                        s, z = quant.find_params(cur, settings)
                        scale[:, g:g + 1], zero[:, g:g + 1] = s, z
                    s_col, z_col = scale[:, g].float(), zero[:, g].float()

                # quantize the column: the arithmetic of quant.quantize_with / dequantize_codes,
                # inlined (this loop runs once per input column: ~32k times for ResNet-18)
                c = torch.round(w / s_col).add_(z_col).clamp_(qmin, qmax)
                q = (c - z_col).mul_(s_col)
                codes[:, i1 + i] = c
                Q1[:, i] = q

                err1 = (w - q).div_(d)
                W1[:, i:].addr_(err1, Hinv1[i, i:], alpha=-1)
                Err1[:, i] = err1

            Q[:, i1:i2] = Q1
            W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])

        invperm = torch.argsort(perm)
        Q, codes = Q[:, invperm], codes[:, invperm].to(torch.int16)
        qt = QTensor(codes=codes.cpu(), scale=scale.cpu(), zero=zero.cpu(), bits=bits,
                     symmetric=sym, group_size=gs if grouped else None,
                     shape=tuple(self.layer.weight.shape))
        export.attach(self.layer, qt)
        assert torch.equal(self.layer.weight.detach().float().reshape(Q.shape), Q)
        return qt

    @torch.no_grad()
    def errors(self, *w_hats: torch.Tensor) -> List[float]:
        """Relative output error ||W X - W_hat X||^2 / ||W X||^2 on the calibration inputs of
        each ``w_hat`` (any shape with the layer's numel), from H (no second pass over X)."""
        d = torch.stack([self.W - w.reshape(self.W.shape).float().to(self.W.device)
                         for w in w_hats] + [self.W])                     # [k+1, rows, cols]
        e = ((d.flatten(0, 1) @ self.H) * d.flatten(0, 1)).reshape(d.shape).sum(dim=(1, 2))
        e = e.double()
        return [float(v / e[-1]) if e[-1] > 0 else 0.0 for v in e[:-1]]

    def free(self) -> None:
        self.H = self.W = None


# --------------------------------------------------------------------------------------
# The whole model, layer after layer
# --------------------------------------------------------------------------------------

def _units(model: nn.Module, probe: torch.Tensor) -> List[nn.Module]:
    """A chain of modules whose composition is ``model``'s forward, so that each unit's input
    can be cached: for a torchvision ResNet [stem, blocks..., head] (checked on ``probe``),
    else [model]."""
    import torchvision
    if isinstance(model, torchvision.models.ResNet):
        units = [nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)]
        units += [b for stage in (model.layer1, model.layer2, model.layer3, model.layer4)
                  for b in stage]
        units.append(nn.Sequential(model.avgpool, nn.Flatten(1), model.fc))
        with torch.no_grad():
            y = probe
            for u in units:
                y = u(y)
            if torch.allclose(y, model(probe), rtol=1e-4, atol=1e-5):
                return units
    return [model]


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted layer has seen its input."""


def _accumulate(model: nn.Module, unit: nn.Module, x: torch.Tensor, gptqs: Dict[str, GPTQ],
                batch_size: int = 64) -> None:
    """Run ``unit`` over ``x`` with ``add_batch`` hooks on the layers of ``gptqs``; with one
    layer, each forward stops right after it (a module called twice counts its first call)."""
    def add(name, v):
        gptqs[name].add_batch(v)
        if len(gptqs) == 1:
            raise _Stop

    dev = calib._device(model)
    with calib.input_hooks(model, {n: (lambda v, n=n: add(n, v)) for n in gptqs}), \
            torch.no_grad():
        for i in range(0, len(x), batch_size):
            try:
                unit(x[i:i + batch_size].to(dev))
            except _Stop:
                pass


def _order(model: nn.Module, unit: nn.Module, probe: torch.Tensor, names: List[str]) -> List[str]:
    """The layers of ``names`` in the order in which ``unit`` runs them (on ``probe``)."""
    seen: List[str] = []
    with calib.input_hooks(model, {n: (lambda v, n=n: seen.append(n)) for n in names}), \
            torch.no_grad():
        unit(probe)
    return list(dict.fromkeys(seen))


def quantize_model(model: nn.Module, calib_x: torch.Tensor,
                   settings: GPTQSettings = GPTQSettings(), progress: bool = True):
    """A GPTQ-quantized copy of ``model`` (every Conv2d/Linear gets a ``qweight``) and the
    report: per layer ``{name, bits, rows, columns, samples, positions, dead, seconds,
    gptq_error, rtn_error}`` (errors: ||WX - W_hat X||^2 / ||WX||^2 on the calibration inputs
    of the layer, for GPTQ and for RTN with the same quantizer). ``calib_x``: float images
    from the train split; the first ``settings.calib_size`` are used."""
    from tqdm.auto import tqdm
    if not isinstance(settings, GPTQSettings):
        raise ValueError(f"settings={settings!r}: expected a gptq.GPTQSettings")
    calib.check_x(calib_x, "gptq.quantize_model")
    per_layer = rtn.layer_settings(model, settings.quant, settings.keep_8bit, "gptq")
    model = quant.fold_batchnorm(model) if settings.fold_bn else copy.deepcopy(model)
    model.eval()
    mods = dict(model.named_modules())
    x = calib_x[:settings.calib_size].float().to(calib._device(model))
    units = _units(model, x[:2])
    report = []
    bar = tqdm(total=len(per_layer), desc="GPTQ", disable=not progress)
    for k, unit in enumerate(units):
        inside = {id(m) for m in unit.modules()}
        names = _order(model, unit, x[:1], [n for n in per_layer if id(mods[n]) in inside])
        x_next = None
        if not settings.sequential:  # every layer on the float inputs: one pass per unit
            gptqs = {n: GPTQ(mods[n], n) for n in names}
            _accumulate(model, unit, x, gptqs)
            x_next = calib.run(unit, x, keep=True) if k + 1 < len(units) else None
        for name in names:
            t0 = time.perf_counter()
            if settings.sequential:
                g = GPTQ(mods[name], name)
                _accumulate(model, unit, x, {name: g})
            else:
                g = gptqs.pop(name)
            report.append(_quantize_layer(g, per_layer[name], settings, t0))
            g.free()
            bar.set_postfix_str(name)
            bar.update()
        if k + 1 < len(units):
            x = (x_next if x_next is not None else calib.run(unit, x, keep=True)).to(x.device)
    bar.close()
    missing = [n for n in per_layer if n not in {r["name"] for r in report}]
    if missing:
        raise ValueError(f"gptq.quantize_model: layers {missing} did not run on the calibration "
                         "inputs, so they have no Hessian")
    return model, report


def _quantize_layer(g: GPTQ, s: QuantSettings, settings: GPTQSettings, t0: float) -> dict:
    qt = g.fasterquant(s, blocksize=settings.blocksize, percdamp=settings.percdamp,
                       act_order=settings.act_order, static_groups=settings.static_groups)
    seconds = time.perf_counter() - t0
    w_rtn = quant.quantize(g.W, s).dequantize()
    e_gptq, e_rtn = g.errors(qt.dequantize(), w_rtn)
    return {"name": g.name, "bits": s.bits, "rows": g.rows, "columns": g.columns,
            "samples": g.nsamples, "positions": g.positions,
            "dead": int((torch.diag(g.H) == 0).sum()), "seconds": seconds,
            "gptq_error": e_gptq, "rtn_error": e_rtn}


# --------------------------------------------------------------------------------------
# Output error of quantized layers on any inputs
# --------------------------------------------------------------------------------------

def _layer_out(m: nn.Module, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """W X of a layer without its bias (the bias cancels in W X - W_hat X)."""
    if isinstance(m, nn.Linear):
        return F.linear(x, w)
    return F.conv2d(x, w, None, m.stride, m.padding, m.dilation, m.groups)


@torch.no_grad()
def layer_errors(fp_model: nn.Module, q_model: nn.Module, x: torch.Tensor,
                 batch_size: int = 64) -> Dict[str, float]:
    """Per quantized layer of ``q_model``: ||W X - W_hat X||^2 / ||W X||^2 where X are the
    layer's inputs in ``fp_model`` on ``x`` (the same inputs for every method compared),
    W the float weight and W_hat the quantized one. If ``q_model`` was quantized with
    ``fold_bn`` (BatchNorms replaced by Identity), ``fp_model`` is folded first."""
    calib.check_x(x, "gptq.layer_errors")
    qmods = dict(q_model.named_modules())
    fmods = dict(fp_model.named_modules())
    if any(isinstance(qmods.get(n), nn.Identity) and isinstance(m, nn.BatchNorm2d)
           for n, m in fmods.items()):
        fp_model = quant.fold_batchnorm(fp_model)
        fmods = dict(fp_model.named_modules())
    names = [n for n in calib.layer_names(q_model) if hasattr(qmods[n], "qweight")]
    acc = {n: [0.0, 0.0] for n in names}

    def hook(n, v):
        m = fmods[n]
        y = _layer_out(m, v, m.weight)
        yq = _layer_out(m, v, qmods[n].weight.to(v.device))
        acc[n][0] += float((y - yq).double().pow(2).sum())
        acc[n][1] += float(y.double().pow(2).sum())

    with calib.input_hooks(fp_model, {n: (lambda v, n=n: hook(n, v)) for n in names}):
        calib.run(fp_model, x, batch_size)
    return {n: (e / t if t > 0 else 0.0) for n, (e, t) in acc.items()}
