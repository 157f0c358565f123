"""Low-bit quantization-aware training with learned step sizes.

**LSQ** (Esser et al., "Learned Step Size Quantization", ICLR 2020; ``lsq_train``): every
Conv2d/Linear of the BN-folded model quantizes its weight per output channel and its input
per tensor, with *learned* step sizes ``s``::

    q = round(clamp(v / s, Q_n, Q_p)),   v_hat = q * s

The rounding is a straight-through estimator, so ``dv_hat/dv = 1`` inside
``[Q_n*s, Q_p*s]`` and 0 outside, and the step's gradient is LSQ's::

    dv_hat/ds = round(v/s) - v/s  inside,   Q_n or Q_p  outside,

scaled by ``g = 1/sqrt(N * Q_p)`` (N: weights per step, or elements of the layer input per
image) so that steps and weights learn at comparable rates. Each step is learned as its
logarithm, ``s = exp(theta)`` (the gradient reaching ``theta`` is ``s`` times LSQ's): it stays
positive, and an update changes it by a *fraction* of itself. That matters with Adam, whose
update has the size of the learning rate whatever the gradient: learned directly, a step moves
by the same absolute amount whether it is a 2-bit layer's weight step (~1e-2: 1e-3 is a tenth of
it per update, which wrecked the weights in this study's first Adam runs) or a 4-bit
activation step (~1e-1). ``log(STEP_MIN)`` bounds ``theta`` from below.

Weight codes are symmetric ``[-2^(b-1), 2^(b-1)-1]`` (qlib's convention) and the weight step
is rounded to float16 in the forward pass (gradient passed straight through), so that the
exported file (float16 scales) reproduces the trained model bit for bit. Activations after a
ReLU use unsigned codes ``[0, 2^b-1]``, the (signed) image input of ``conv1`` signed codes.

Initialisation: weight steps from the scales of an ``init_model`` (a GPTQ or RTN solution
whose layers carry ``qweight``; its on-grid weights are also the starting weights, so step 0
*is* that solution), else from ``quant.find_params`` (MSE clipping search); activation steps
from the calibration images (an MSE search of the clipping range on the recorded inputs).
The loss mixes cross-entropy and, with ``distill > 0``, the KL divergence to the FP model's
outputs (knowledge distillation: the study measures agreement with FP).

The fine-tune itself is ``qat.fit`` with ``qat.QATSettings``: the loop int8 QAT uses too.
``reconstruct`` fits the same steps and biases by another objective, block by block (BRECQ's).
"""
from __future__ import annotations

import copy
import math
import re
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import calib, export, gptq, int8, qat, quant, smoothquant
from . import data as qdata
from .qat import QATSettings

STEP_MIN = 2.0 ** -14       # smallest step (float16 normal range): steps stay positive
LOG_STEP_MIN = math.log(STEP_MIN)
ACT_SAMPLE = 2 ** 16        # recorded input elements per layer and calibration batch
ACT_GRID = 80               # clipping ratios tried by the activation-step search


# --------------------------------------------------------------------------------------
# LSQ: learned step size quantization
# --------------------------------------------------------------------------------------

class _LSQ(torch.autograd.Function):
    """LSQ fake quantization with its gradients (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, s, qmin, qmax, g):
        v = x / s
        ctx.save_for_backward(v, s)
        ctx.qmin, ctx.qmax, ctx.g = qmin, qmax, g
        return torch.round(torch.clamp(v, qmin, qmax)) * s

    @staticmethod
    def backward(ctx, grad):
        v, s = ctx.saved_tensors
        inside = ((v >= ctx.qmin) & (v <= ctx.qmax)).to(v.dtype)
        v_in = v * inside
        d_s = torch.round(torch.clamp(v, ctx.qmin, ctx.qmax)).sub_(v_in)  # q - v, or qmin/qmax
        d_s.mul_(grad)
        g_s = (d_s.sum_to_size(s.shape) if s.dim() else d_s.sum()) * ctx.g
        return grad * inside, g_s, None, None, None


def lsq_quant(x: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int, g: float = 1.0,
              fp16_step: bool = False) -> torch.Tensor:
    """LSQ fake quantization ``round(clamp(x/s, qmin, qmax)) * s``. Gradients: ``x`` straight
    through where ``qmin <= x/s <= qmax`` (0 outside); ``s``: ``g * (round(x/s) - x/s)``
    inside, ``g * qmin`` / ``g * qmax`` outside (summed over the elements sharing a step).
    ``step`` broadcastable to ``x``; ``fp16_step`` rounds it to float16 in the forward pass
    (gradient straight through), as the exported file stores it."""
    if fp16_step:
        step = step + (step.detach().half().float() - step.detach())
    return _LSQ.apply(x, step, qmin, qmax, float(g))


def _act_range(bits: int, signed: bool):
    return quant.qrange(bits, True) if signed else (0, 2 ** bits - 1)


class _LSQMixin:
    """Learned weight step (per output channel) and input step (per tensor), each learned as
    its logarithm (``w_log_step``, ``a_log_step``; ``w_step``/``a_step`` are ``exp`` of them)."""

    def _lsq_init(self, w_bits, a_bits, w_step, a_step=None, a_signed=False):
        self.w_bits, self.a_bits, self.a_signed = w_bits, a_bits, bool(a_signed)
        self.w_log_step = nn.Parameter(w_step.detach().float().clamp(min=STEP_MIN).log().reshape(
            (-1,) + (1,) * (self.weight.dim() - 1)).clone())
        self.a_log_step = (nn.Parameter(torch.tensor(math.log(max(float(a_step), STEP_MIN))))
                           if a_bits is not None else None)

    @property
    def w_step(self) -> torch.Tensor:
        return self.w_log_step.exp()

    @property
    def a_step(self) -> Optional[torch.Tensor]:
        return None if self.a_log_step is None else self.a_log_step.exp()

    def quant_weight(self):
        qmin, qmax = quant.qrange(self.w_bits, True)
        n = self.weight[0].numel()
        return lsq_quant(self.weight, self.w_step, qmin, qmax, 1 / math.sqrt(n * qmax),
                         fp16_step=True)

    def quant_input(self, x):
        if self.a_bits is None:
            return x
        qmin, qmax = _act_range(self.a_bits, self.a_signed)
        return lsq_quant(x, self.a_step, qmin, qmax, 1 / math.sqrt(x[0].numel() * qmax))

    def clamp_steps_(self):
        with torch.no_grad():
            self.w_log_step.clamp_(min=LOG_STEP_MIN)
            if self.a_log_step is not None:
                self.a_log_step.clamp_(min=LOG_STEP_MIN)

    def qtensor(self) -> quant.QTensor:
        """The learned weight as a QTensor (codes, float16-representable scales)."""
        w2d = quant.weight_view(self.weight.detach().float().cpu())
        scale = self.w_step.detach().float().cpu().clamp(min=STEP_MIN).half().float()
        scale = scale.reshape(-1, 1)
        codes = quant.quantize_with(w2d, scale, torch.zeros_like(scale), self.w_bits, True)
        return quant.QTensor(codes=codes, scale=scale, zero=torch.zeros_like(scale),
                             bits=self.w_bits, symmetric=True, group_size=None,
                             shape=tuple(self.weight.shape))


class LSQConv2d(_LSQMixin, nn.Conv2d):
    def forward(self, x):
        return self._conv_forward(self.quant_input(x), self.quant_weight(), self.bias)


class LSQLinear(_LSQMixin, nn.Linear):
    def forward(self, x):
        return F.linear(self.quant_input(x), self.quant_weight(), self.bias)


def _lsq_like(m: nn.Module) -> nn.Module:
    """An LSQ module with ``m``'s hyper-parameters and weights (steps set by _lsq_init)."""
    if isinstance(m, nn.Conv2d):
        new = LSQConv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                        m.dilation, m.groups, m.bias is not None, m.padding_mode)
    else:
        new = LSQLinear(m.in_features, m.out_features, m.bias is not None)
    new.load_state_dict(m.state_dict())
    return new.to(m.weight.device)


def _layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _set(model, name, new):
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


@torch.no_grad()
def _record_inputs(model, calib_x, names, seed=0):
    """A seeded sample of each named layer's input elements (and whether any is negative)."""
    mods = dict(model.named_modules())
    rec = {n: [] for n in names}
    neg = {n: False for n in names}
    gen = torch.Generator().manual_seed(seed)

    def hook(name):
        def f(_, args):
            x = args[0].detach().float().reshape(-1).cpu()
            neg[name] |= bool((x < 0).any())
            if x.numel() > ACT_SAMPLE:
                x = x[torch.randint(0, x.numel(), (ACT_SAMPLE,), generator=gen)]
            rec[name].append(x)
        return f

    handles = [mods[n].register_forward_pre_hook(hook(n)) for n in names]
    try:
        model.eval()
        for i in range(0, len(calib_x), 64):
            model(calib_x[i:i + 64].float())
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(v) for n, v in rec.items()}, neg


def act_step_search(x: torch.Tensor, bits: int, signed: bool) -> float:
    """The per-tensor step minimising the squared error of quantizing the sample ``x`` (a grid
    of clipping ratios of max|x|)."""
    qmin, qmax = _act_range(bits, signed)
    amax = float(x.abs().max()) if x.numel() else 0.0
    if amax == 0:
        return 1.0
    best, best_s = None, None
    for r in torch.linspace(1.0, 0.05, ACT_GRID).tolist():
        s = max(amax * r / qmax, STEP_MIN)
        err = float(((torch.clamp(torch.round(x / s), qmin, qmax) * s - x) ** 2).sum())
        if best is None or err < best:
            best, best_s = err, s
    return best_s


def _init_scales(init_model, settings):
    """{layer: per-channel scale [C_out, 1]} of an init model's qweights (checked)."""
    out = {}
    for name, m in _layers(init_model):
        qt = getattr(m, "qweight", None)
        if qt is None:
            continue
        w_bits = 8 if name in settings.keep_8bit else settings.w_bits
        if qt.bits != w_bits or not qt.symmetric or qt.group_size is not None:
            raise ValueError(
                f"init_model: layer {name!r} is {qt.bits}-bit "
                f"{'symmetric' if qt.symmetric else 'asymmetric'}"
                f"{' per-group' if qt.group_size else ''}; LSQ with w_bits={w_bits} starts from "
                f"symmetric per-channel (or per-tensor) {w_bits}-bit QTensors")
        out[name] = qt.scale.detach().float().reshape(-1, 1).expand(qt.shape[0], 1).clone()
    return out


def lsq_model(model_fp: nn.Module, settings: QATSettings, init_model: Optional[nn.Module] = None,
              calib_x: Optional[torch.Tensor] = None) -> nn.Module:
    """The LSQ fake-quant model before training (BN folded, every conv/linear an LSQ layer,
    steps initialised as described in the module docstring). ``calib_x`` (train images) is
    needed when ``settings.a_bits`` is not None."""
    int8.check_resnet18(model_fp)
    if settings.a_bits is not None and calib_x is None:
        raise ValueError("lsq_model: calib_x (calibration images from the train split) is "
                         f"needed to initialise the a_bits={settings.a_bits} activation steps")
    base = model_fp if init_model is None else init_model
    int8.check_resnet18(base)
    base = copy.deepcopy(base).cpu().float().eval()
    scales = _init_scales(base, settings) if init_model is not None else {}
    try:
        folded = quant.fold_batchnorm(base)
    except ValueError as e:
        raise ValueError(f"lsq_model: {e}. Pass an init_model quantized after "
                         "quant.fold_batchnorm") from None
    names = [n for n, _ in _layers(folded)]
    unknown = [k for k in settings.keep_8bit if k not in names]
    if unknown:
        raise ValueError(f"keep_8bit={settings.keep_8bit!r}: {unknown} are not Conv2d/Linear "
                         f"layers of the model ({names[0]}, ..., {names[-1]})")
    acts, neg = ({}, {}) if settings.a_bits is None else _record_inputs(folded, calib_x, names)
    for name, m in _layers(folded):
        if hasattr(m, "qweight"):
            del m.qweight
        keep = name in settings.keep_8bit
        w_bits = 8 if keep else settings.w_bits
        a_bits = None if settings.a_bits is None else (8 if keep else settings.a_bits)
        new = _lsq_like(m)
        w_step = scales.get(name)
        if w_step is None:
            w_settings = quant.QuantSettings(bits=w_bits, granularity="channel",
                                             range=settings.w_range)
            w_step = quant.find_params(quant.weight_view(m.weight), w_settings)[0]
        a_step = None if a_bits is None else act_step_search(acts[name], a_bits, neg[name])
        new._lsq_init(w_bits, a_bits, w_step, a_step, neg.get(name, False))
        _set(folded, name, new)
    return folded


def gptq_init(model_fp: nn.Module, w_bits: int, calib_x: torch.Tensor,
              keep_8bit: tuple = ("conv1", "fc")) -> nn.Module:
    """The GPTQ solution an LSQ fine-tune starts from (chapter 07's): BN folded, symmetric
    per-channel ``w_bits`` weights in activation order, the ``keep_8bit`` layers at 8 bits."""
    qs = quant.QuantSettings(bits=w_bits, symmetric=True, granularity="channel")
    model, _ = gptq.quantize_model(model_fp, calib_x, gptq.GPTQSettings(
        quant=qs, fold_bn=True, act_order=True, keep_8bit=tuple(keep_8bit)), progress=False)
    return model


def smoothed_start(model_fp: nn.Module, settings: QATSettings, calib_x: torch.Tensor,
                   mode: str = "bn") -> tuple:
    """The SmoothQuant-smoothed network of ``settings``' bits and its GPTQ solution: the same
    float function as ``model_fp``, with range moved from each layer's input into its weights
    (``mode``: "bn" or "shared", see ``qlib.fold``). Each layer's migration strength alpha is
    searched on ``calib_x`` for its output error with its input at ``a_bits`` and its weights at
    ``w_bits`` (``smoothquant.search_alpha(per_layer=True)``). Returns ``(smoothed float model,
    GPTQ solution of it, {group: alpha})``: what ``lsq_model`` / ``lsq_train`` take as
    ``model_fp`` and ``init_model`` to start from the smoothed PTQ."""
    if not isinstance(settings, QATSettings) or settings.a_bits is None:
        raise ValueError(f"settings={settings!r}: expected a QATSettings with a_bits set "
                         "(smoothing moves range out of the quantized activations)")
    alphas, _ = smoothquant.search_alpha(model_fp, calib_x, w_bits=settings.w_bits,
                                         a_bits=settings.a_bits, mode=mode, per_layer=True)
    smooth = smoothquant.apply(model_fp, smoothquant.search(
        model_fp, calib_x, smoothquant.SmoothSettings(alpha=alphas, mode=mode)))
    return smooth, gptq_init(smooth, settings.w_bits, calib_x, settings.keep_8bit), alphas


def smoothed_ptq(model_fp: nn.Module, settings: QATSettings, calib_x: torch.Tensor,
                 mode: str = "bn") -> tuple:
    """The PTQ model of ``settings``' bits (the LSQ model at step 0: GPTQ weights, calibrated
    activation steps) of the smoothed network of ``smoothed_start``. Returns ``(model,
    {group: alpha})``."""
    smooth, init, alphas = smoothed_start(model_fp, settings, calib_x, mode)
    return lsq_model(smooth, settings, init_model=init, calib_x=calib_x), alphas


def clamp_steps_(model: nn.Module) -> None:
    """Keep every learned step >= STEP_MIN (called after each optimizer step)."""
    for m in model.modules():
        if isinstance(m, _LSQMixin):
            m.clamp_steps_()


def lsq_train(model_fp: nn.Module, splits: qdata.Splits, settings: QATSettings,
              init_model: Optional[nn.Module] = None, calib_x: Optional[torch.Tensor] = None,
              progress: bool = True, device=None, validate: bool = True,
              on_step: Optional[Callable[[nn.Module, int], None]] = None):
    """LSQ QAT of the FP ResNet-18 (not changed): returns ``(LSQ model, history)``.

    ``init_model``: a GPTQ/RTN solution (BN-folded layers carrying ``qweight``) to start
    from; ``calib_x``: calibration images (default ``calib.sample(splits, 256)``, train
    split). ``validate=False`` skips the per-epoch pass over ``splits.val`` (the history's
    ``val_acc`` is then NaN), for runs whose curve is not used. ``on_step(model, step)`` is
    called with the starting model (step 0) and after every optimizer step (the learned steps
    already clamped), e.g. to measure the model along the way (``lsq_curve.run``); the model is put
    back in training mode after it. The returned model runs the fake-quant forward; ``export_model``
    gives the plain model with QTensors for ``export.save``, ``to_int8`` its int8-engine version.
    """
    if not isinstance(settings, QATSettings):
        raise ValueError(f"settings={settings!r}: expected a QATSettings")
    if calib_x is None and settings.a_bits is not None:
        calib_x, _ = calib.sample(splits, 256, seed=settings.seed)
    torch.manual_seed(settings.seed)
    model = lsq_model(model_fp, settings, init_model, calib_x)
    teacher = quant.fold_batchnorm(model_fp).eval() if settings.distill > 0 else None
    done = 0

    def after_step(m):
        nonlocal done
        clamp_steps_(m)
        if on_step is not None:
            done += 1
            on_step(m, done)
            m.train()

    if on_step is not None:
        on_step(model, 0)
        model.train()

    hist = qat.fit(model, splits, settings, teacher=teacher, device=device, progress=progress,
                   desc=f"LSQ W{settings.w_bits}A{settings.a_bits or 32}",
                   after_step=after_step, evaluate=None if validate else (lambda m: float("nan")))
    return model.cpu().eval(), hist


def _units(model: nn.Module) -> list:
    """A ResNet-18 as the ``(name, unit)`` pairs block-wise reconstruction fits one after the
    other: the stem, the eight residual blocks (``layer1.0`` ... ``layer4.1``), the head."""
    return ([("stem", nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool))]
            + [(f"layer{i}.{j}", b) for i in range(1, 5) for j, b in enumerate(getattr(model, f"layer{i}"))]
            + [("head", nn.Sequential(model.avgpool, nn.Flatten(1), model.fc))])


@torch.no_grad()  # the outputs and errors; each update enables gradients for itself
def reconstruct(model: nn.Module, model_fp: nn.Module, x: torch.Tensor, iters: int = 200,
                step_lr: float = 1e-3, bias_lr: float = 1e-4, batch_size: int = 64, seed: int = 0,
                progress: bool = True) -> tuple:
    """Block-wise reconstruction (BRECQ's objective, Li et al., ICLR 2021) of an LSQ model's
    steps and biases, in place of an end-to-end fine-tune: unit by unit (the stem, each residual
    block, the head), Adam fits the unit's learned steps (inputs and weights, as logarithms, at
    ``step_lr``) and biases (``bias_lr``) so that, reading the quantized model's own output of the
    units before it, the unit reproduces the FP unit's output on the images ``x`` (mean squared
    error; the head's output is the logits). The weights stay where they are (GPTQ's grid
    points); their codes move only with their steps. ``model`` is not changed.

    Returns ``(reconstructed model, [{"unit", "mse_before", "mse_after"}])``: each unit's name
    (``"stem"``, ``"layer1.0"``, ..., ``"head"``) and its error on all of ``x`` before and after
    its ``iters`` updates."""
    from tqdm.auto import tqdm
    qat._check_int("iters", iters, 1)
    qat._check_int("batch_size", batch_size, 1)
    qat._check_float("step_lr", step_lr, 0.0, 1.0, lo_open=False)
    qat._check_float("bias_lr", bias_lr, 0.0, 1.0, lo_open=False)
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or len(x) == 0 or not x.is_floating_point():
        raise ValueError(f"x: expected a non-empty float batch of images [N, C, H, W], got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not any(isinstance(m, _LSQMixin) for m in model.modules()):
        raise ValueError(f"model: {type(model).__name__} has no LSQ layers; expected a model "
                         "from lsq_model or lsq_train")
    int8.check_resnet18(model_fp)
    model = copy.deepcopy(model).cpu().float().eval()
    teacher = quant.fold_batchnorm(model_fp).cpu().float().eval()
    gen = torch.Generator().manual_seed(seed)
    units = list(zip(_units(teacher), _units(model)))
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    for p in weights:  # not learned here: no gradient to compute
        p.requires_grad_(False)
    history, x_fp, x_q = [], x.float(), x.float()
    bar = tqdm(total=iters * len(units), desc="reconstruction", unit="batch", disable=not progress,
               mininterval=2)

    def outputs(unit, v):
        return calib.run(unit, v, batch_size=256, keep=True)

    for (name, u_fp), (_, u_q) in units:
        y_fp = outputs(u_fp, x_fp)
        before = float(F.mse_loss(outputs(u_q, x_q), y_fp))
        steps = [p for n, p in u_q.named_parameters() if n.endswith("log_step")]
        biases = [p for n, p in u_q.named_parameters() if n.endswith("bias")]
        opt = torch.optim.Adam([{"params": steps, "lr": step_lr}, {"params": biases, "lr": bias_lr}])
        for _ in range(iters):
            b = torch.randint(0, len(x_q), (min(batch_size, len(x_q)),), generator=gen)
            with torch.enable_grad():
                loss = F.mse_loss(u_q(x_q[b]), y_fp[b])
                opt.zero_grad()
                loss.backward()
            opt.step()
            clamp_steps_(u_q)
            bar.update()
        x_q, x_fp = outputs(u_q, x_q), y_fp
        history.append({"unit": name, "mse_before": before, "mse_after": float(F.mse_loss(x_q, y_fp))})
    bar.close()
    for p in weights:
        p.requires_grad_(True)
    return model, history


def export_model(model: nn.Module) -> nn.Module:
    """The plain (BN-folded) ResNet-18 of an LSQ model: float convs/linears whose weights are
    the learned codes x float16 steps, each carrying its ``qweight`` (``export.attach``) —
    ready for ``export.save`` (bit-exact) and ``int8.convert``. Activation steps are dropped
    (see ``act_steps``)."""
    out = copy.deepcopy(model).cpu()
    for name, m in list(out.named_modules()):
        if not isinstance(m, _LSQMixin):
            continue
        qt = m.qtensor()
        if isinstance(m, nn.Conv2d):
            plain = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                              m.dilation, m.groups, m.bias is not None, m.padding_mode)
        else:
            plain = nn.Linear(m.in_features, m.out_features, m.bias is not None)
        with torch.no_grad():
            if m.bias is not None:
                plain.bias.copy_(m.bias.detach())
        export.attach(plain, qt)
        _set(out, name, plain)
    return out.eval()


def act_steps(model: nn.Module) -> dict:
    """{layer: (learned input step, bits, signed)} of an LSQ model (plain data)."""
    return {n: (float(m.a_step.detach()), m.a_bits, m.a_signed) for n, m in model.named_modules()
            if isinstance(m, _LSQMixin) and m.a_step is not None}


def code_changes(start: nn.Module, end: nn.Module) -> dict:
    """How many weight codes a fine-tune changed: ``{"changed", "total", "share"}`` over the LSQ
    layers of ``start`` and ``end`` (the same network before and after training). A shadow weight
    that starts on its grid point (GPTQ's solution) must move half a step to change its code."""
    a = {n: m for n, m in start.named_modules() if isinstance(m, _LSQMixin)}
    b = {n: m for n, m in end.named_modules() if isinstance(m, _LSQMixin)}
    if not a or a.keys() != b.keys():
        raise ValueError(f"code_changes: expected two LSQ models with the same layers, got {len(a)} and {len(b)} "
                         f"LSQ layers{'' if not a or not b else ' (' + ', '.join(sorted(a.keys() ^ b.keys())[:3]) + ' differ)'}")
    changed = total = 0
    for n in a:
        ca, cb = a[n].qtensor().codes, b[n].qtensor().codes
        if ca.shape != cb.shape:
            raise ValueError(f"code_changes: layer {n!r} has codes of shape {tuple(ca.shape)} and {tuple(cb.shape)}")
        changed += int((ca != cb).sum())
        total += ca.numel()
    return {"changed": changed, "total": total, "share": changed / total}


def to_int8(model: nn.Module, calib_x: torch.Tensor, observer: str = "histogram") -> nn.Module:
    """The int8-engine model of an LSQ model: its weight codes run exactly; activations are
    8-bit, calibrated by the engine's observers on ``calib_x`` (meaningful for a_bits=8)."""
    return int8.convert(export_model(model), calib_x, observer=observer)


# --------------------------------------------------------------------------------------
# Configurations by name
# --------------------------------------------------------------------------------------

def parse_config(config: str) -> tuple:
    """``"W2A4"`` -> ``(2, 4)``: weight and activation bits of an LSQ configuration, each 2..8."""
    m = re.fullmatch(r"W(\d)A(\d)", config) if isinstance(config, str) else None
    if m is None or not all(2 <= int(b) <= 8 for b in m.groups()):
        raise ValueError(f"config={config!r}: expected 'W<bits>A<bits>' with bits 2..8, e.g. 'W2A4'")
    return int(m.group(1)), int(m.group(2))
