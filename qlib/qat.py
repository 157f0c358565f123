"""Quantization-aware training: int8 QAT on PyTorch's engine, and low-bit QAT with LSQ.

**int8 QAT** (``train_int8``), the standard eager-mode recipe: torchvision's quantizable
ResNet-18 loaded with the FP weights, conv-BN-ReLU fused for QAT, torch's default x86 QAT
qconfig (fake-quantized per-channel int8 weights, per-tensor uint8 activations with moving-
average ranges), a few epochs of fine-tuning at a small learning rate; for the last
``freeze_epochs`` the observers (activation ranges) and the BN statistics are frozen; then
``int8.convert_qat`` turns it into the int8 engine model. Given calibration images
(``calib_x``), it starts instead from the int8 PTQ model: histogram-calibrated ranges, kept
fixed, and BN statistics frozen from the first step (on this study's data the standard
recipe's moving-average ranges and batch-statistics updates cost more agreement with FP32 than
the fine-tune wins back; chapter 07 measures both). The torch.ao calls live in ``int8.py``.

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
"""
from __future__ import annotations

import copy
import math
import re
import time
from dataclasses import dataclass, replace
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import calib, export, gptq, int8, quant, smoothquant
from . import data as qdata
from . import models

STEP_MIN = 2.0 ** -14       # smallest step (float16 normal range): steps stay positive
LOG_STEP_MIN = math.log(STEP_MIN)
ADAM_STEP_EPS = 1e-16       # Adam's eps for the learned steps (see _fit)
ACT_SAMPLE = 2 ** 16        # recorded input elements per layer and calibration batch
ACT_GRID = 80               # clipping ratios tried by the activation-step search


def _check_int(name, v, lo, hi=None, allow_none=False):
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        rng = f"an integer in {lo}..{hi}" if hi is not None else f"an integer >= {lo}"
        rng += " or None" if allow_none else ""
        raise ValueError(f"{name}={v!r}: expected {rng} (QATSettings.{name})")


def _check_float(name, v, lo, hi, lo_open=True):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or \
            v > hi or v < lo or (lo_open and v == lo):
        br = "(" if lo_open else "["
        raise ValueError(f"{name}={v!r}: expected a number in {br}{lo}, {hi}] (QATSettings.{name})")


OPTIMIZERS = ("sgd", "adam")
LEARN = ("all", "weights", "steps")


@dataclass(frozen=True)
class QATSettings:
    """Fine-tuning settings shared by int8 QAT and LSQ.

    epochs: passes over the train split (``max_steps`` caps the optimizer steps of each pass
    for time-boxed runs). lr: learning rate of the weights and biases, cosine-decayed to 0.
    optimizer: "sgd" (momentum) or "adam". step_lr: learning rate of the learned LSQ steps'
    logarithms (None: ``lr``). With SGD a step's gradient — scaled by LSQ's g — is far smaller
    than a weight's, so at a weight's learning rate the steps barely move in a short fine-tune;
    Adam normalises every parameter's update, so each step changes by a fraction ~``step_lr`` of
    itself per update and a weight by ~``lr`` whatever their gradients' scales.
    w_bits / a_bits: weight and activation bits (``a_bits=None``: float activations, LSQ
    only); int8 QAT needs 8/8. freeze_epochs: last epochs with observers and BN statistics
    frozen (int8 QAT). distill: weight of the KD loss to the FP outputs in [0, 1].
    mixup: Beta(mixup, mixup) parameter of input mixup (0: off) — each batch is blended with a
    shuffled copy of itself, ``x = lam*x + (1-lam)*x[perm]``, and the cross-entropy mixes the two
    labels alike; the blends are images the FP model was not fitted on, so with ``distill`` the
    teacher's outputs on them carry information its outputs on the training images do not.
    w_range: LSQ weight-step initialisation without an init model (``quant.find_params``
    range: "mse" search of the clipping ratio, or "minmax"). keep_8bit: LSQ layers whose
    weight and input stay at 8 bits (e.g. ``("conv1", "fc")``: the stem reads the image).
    learn: which parameters the fine-tune moves — "all", "weights" (weights and biases; the
    LSQ steps stay at their start) or "steps" (only the LSQ steps; every weight and bias stays
    at its start). From an init model the weights sit on their grid points, where LSQ's
    gradient of a weight step, ``round(w/s) - w/s``, is zero, so with "steps" only the
    activation (input) steps move. The controls tell which parameters a result comes from.
    """

    epochs: int = 3
    lr: float = 1e-3
    w_bits: int = 8
    a_bits: Optional[int] = 8
    batch_size: int = 128
    momentum: float = 0.9
    optimizer: str = "sgd"
    step_lr: Optional[float] = None
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    freeze_epochs: int = 1
    max_steps: Optional[int] = None
    distill: float = 0.0
    mixup: float = 0.0
    temperature: float = 1.0
    w_range: str = "mse"
    keep_8bit: tuple = ()
    seed: int = 0
    learn: str = "all"

    def __post_init__(self):
        _check_int("epochs", self.epochs, 1)
        _check_float("lr", self.lr, 0.0, 10.0)
        _check_int("w_bits", self.w_bits, 2, 8)
        _check_int("a_bits", self.a_bits, 2, 8, allow_none=True)
        _check_int("batch_size", self.batch_size, 1)
        _check_float("momentum", self.momentum, 0.0, 0.999, lo_open=False)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r}: expected one of {OPTIMIZERS} "
                             "(QATSettings.optimizer)")
        if self.step_lr is not None:
            _check_float("step_lr", self.step_lr, 0.0, 10.0)
        _check_float("weight_decay", self.weight_decay, 0.0, 1.0, lo_open=False)
        _check_float("label_smoothing", self.label_smoothing, 0.0, 0.5, lo_open=False)
        _check_int("freeze_epochs", self.freeze_epochs, 0, self.epochs)
        _check_int("max_steps", self.max_steps, 1, allow_none=True)
        _check_float("distill", self.distill, 0.0, 1.0, lo_open=False)
        _check_float("mixup", self.mixup, 0.0, 10.0, lo_open=False)
        _check_float("temperature", self.temperature, 0.0, 100.0)
        if isinstance(self.keep_8bit, str) or not isinstance(self.keep_8bit, tuple) or \
                not all(isinstance(k, str) for k in self.keep_8bit):
            raise ValueError(f"keep_8bit={self.keep_8bit!r}: expected a tuple of layer names, "
                             "e.g. ('conv1', 'fc') (QATSettings.keep_8bit)")
        if self.w_range not in quant.RANGES:
            raise ValueError(f"w_range={self.w_range!r}: expected one of {quant.RANGES} "
                             "(QATSettings.w_range)")
        _check_int("seed", self.seed, 0)
        if self.learn not in LEARN:
            raise ValueError(f"learn={self.learn!r}: expected one of {LEARN} (QATSettings.learn)")

    def with_steps(self, steps: int, n_train: int) -> "QATSettings":
        """These settings for a run of ``steps`` optimizer steps over a train split of
        ``n_train`` images: as few passes (``epochs``) as hold the steps, each capped at
        ``ceil(steps / epochs)`` (``max_steps``) — exactly ``steps`` when ``epochs`` divides
        it, otherwise at most ``epochs - 1`` more. ``freeze_epochs`` is capped at ``epochs``."""
        for name, v in (("steps", steps), ("n_train", n_train)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r}: expected an integer >= 1 (QATSettings.with_steps)")
        epochs = math.ceil(steps / math.ceil(n_train / self.batch_size))
        return replace(self, epochs=epochs, max_steps=steps, freeze_epochs=min(self.freeze_epochs, epochs))


# --------------------------------------------------------------------------------------
# The shared fine-tuning loop
# --------------------------------------------------------------------------------------

def _device(device):
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _loss(out, y, teacher_out, s: QATSettings, y2=None, lam=1.0):
    loss = F.cross_entropy(out, y, label_smoothing=s.label_smoothing)
    if y2 is not None:
        loss = lam * loss + (1 - lam) * F.cross_entropy(out, y2, label_smoothing=s.label_smoothing)
    if teacher_out is None or s.distill == 0:
        return loss
    t = s.temperature
    kd = F.kl_div(F.log_softmax(out / t, 1), F.log_softmax(teacher_out / t, 1),
                  log_target=True, reduction="batchmean") * t * t
    return (1 - s.distill) * loss + s.distill * kd


def _fit(model, splits, s: QATSettings, teacher=None, device=None, progress=True, desc="QAT",
         on_epoch=None, after_step=None, evaluate=None):
    """SGD with momentum or Adam, cosine LR over all steps, ``models.augment``; returns the
    curves."""
    from tqdm.auto import tqdm

    device = _device(device)
    model.to(device)
    if teacher is not None:
        teacher = teacher.to(device).eval()
    n_batches = math.ceil(len(splits.train) / s.batch_size)
    per_epoch = n_batches if s.max_steps is None else min(n_batches,
                                                          math.ceil(s.max_steps / s.epochs))
    total = per_epoch * s.epochs
    decay, no_decay, steps_ = [], [], []
    for name, p in model.named_parameters():
        (steps_ if name.endswith("_step") else decay if p.dim() > 1 else no_decay).append(p)
    if s.learn != "all" and not steps_:
        raise ValueError(f"learn={s.learn!r}: the model has no learned steps (LSQ layers); "
                         "int8 QAT learns 'all' (QATSettings.learn)")
    frozen = {"all": [], "weights": steps_, "steps": decay + no_decay}[s.learn]
    if s.learn == "weights":
        steps_ = []
    elif s.learn == "steps":
        decay, no_decay = [], []
    grad_before = [p.requires_grad for p in frozen]
    for p in frozen:  # no gradient, no update: they stay exactly at their start
        p.requires_grad_(False)
    groups = [{"params": decay, "weight_decay": s.weight_decay},
              {"params": no_decay, "weight_decay": 0.0},
              {"params": steps_, "weight_decay": 0.0, "lr": s.lr if s.step_lr is None else s.step_lr}]
    if s.optimizer == "adam":  # Adam's update is m/(sqrt(v) + eps): a log-step's gradient (s times
        groups[2]["eps"] = ADAM_STEP_EPS  # LSQ's g-scaled one) is often ~1e-9, below the default eps
    groups = [g for g in groups if g["params"]]
    opt = (torch.optim.SGD(groups, lr=s.lr, momentum=s.momentum) if s.optimizer == "sgd"
           else torch.optim.Adam(groups, lr=s.lr))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / total)))
    gen = torch.Generator().manual_seed(s.seed)
    mix_rng = np.random.default_rng(s.seed)
    hist = {"epoch": [], "train_loss": [], "train_acc": [], "val_acc": [], "lr": [],
            "seconds": [], "steps": []}
    bar = tqdm(total=total, desc=desc, unit="batch", disable=not progress, mininterval=2)
    t_start = time.time()
    for ep in range(s.epochs):
        if on_epoch is not None:
            on_epoch(model, ep)
        model.train()
        t0, loss_sum, correct, seen, steps = time.time(), 0.0, 0, 0, 0
        for x, y in qdata.batches(splits.train, s.batch_size, shuffle=True,
                                  seed=s.seed * 1000 + ep):
            if steps >= per_epoch:
                break
            x, y = models.augment(x, gen).to(device), y.to(device)
            y2, lam = None, 1.0
            if s.mixup > 0:
                lam = float(mix_rng.beta(s.mixup, s.mixup))
                perm = torch.randperm(len(y), generator=gen).to(device)
                x, y2 = lam * x + (1 - lam) * x[perm], y[perm]
            t_out = None
            if teacher is not None and s.distill > 0:
                with torch.no_grad():
                    t_out = teacher(x)
            out = model(x)
            loss = _loss(out, y, t_out, s, y2, lam)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if after_step is not None:
                after_step(model)
            loss_sum += loss.item() * len(y)
            correct += (out.argmax(1) == y).sum().item()
            seen += len(y)
            steps += 1
            bar.update(1)
        val = evaluate(model) if evaluate is not None else models.evaluate(model, splits.val)["accuracy"]
        hist["epoch"].append(ep + 1)
        hist["train_loss"].append(loss_sum / max(1, seen))
        hist["train_acc"].append(correct / max(1, seen))
        hist["val_acc"].append(val)
        hist["lr"].append(opt.param_groups[0]["lr"])
        hist["seconds"].append(time.time() - t0)
        hist["steps"].append(steps)
        bar.set_postfix(epoch=ep + 1, loss=f"{loss_sum / max(1, seen):.3f}", val=f"{val:.3f}")
    bar.close()
    for p, g in zip(frozen, grad_before):
        p.requires_grad_(g)
    hist["total_seconds"] = time.time() - t_start
    model.eval()
    return hist


# --------------------------------------------------------------------------------------
# int8 QAT on PyTorch's engine
# --------------------------------------------------------------------------------------

def train_int8(model_fp: nn.Module, splits: qdata.Splits, settings: QATSettings = QATSettings(),
               progress: bool = True, device=None, calib_x: Optional[torch.Tensor] = None):
    """int8 QAT of the FP ResNet-18 (not changed); returns ``(int8 engine model, history)``.

    ``calib_x=None``: the standard recipe — activation ranges are moving averages learned while
    training and BN normalises with batch statistics, both frozen for the last
    ``freeze_epochs``. With ``calib_x`` (train-split images): the fine-tune starts from the int8
    PTQ model — ranges calibrated by ``int8.convert``'s histogram observer on these images and
    kept fixed, BN running statistics frozen throughout (``freeze_epochs`` has nothing left to
    freeze) — so only the weights and biases move."""
    if settings.w_bits != 8 or settings.a_bits != 8:
        raise ValueError(f"w_bits={settings.w_bits}, a_bits={settings.a_bits}: int8 QAT on the "
                         "engine needs w_bits=8 and a_bits=8 (use lsq_train for lower bits)")
    from_ptq = calib_x is not None
    if not from_ptq and settings.freeze_epochs >= settings.epochs:  # observers would never see a batch
        raise ValueError(f"freeze_epochs={settings.freeze_epochs} with epochs={settings.epochs}: int8 QAT "
                         "learns the activation ranges in the epochs before the frozen ones; expected "
                         "freeze_epochs < epochs (QATSettings.freeze_epochs), or calibrated ranges (calib_x)")
    prepared = int8.prepare_qat(copy.deepcopy(model_fp).cpu(), calib_x=calib_x)
    first_frozen = 0 if from_ptq else settings.epochs - settings.freeze_epochs

    def on_epoch(m, ep):  # the standard recipe: ranges and BN statistics frozen at the end
        int8.observers(m, ep < first_frozen)
        if ep >= first_frozen:
            int8.freeze_bn_stats(m)

    def evaluate(m):  # val images never move the activation ranges (on_epoch re-enables)
        int8.observers(m, False)
        return models.evaluate(m, splits.val)["accuracy"]

    teacher = copy.deepcopy(model_fp).eval() if settings.distill > 0 else None
    hist = _fit(prepared, splits, settings, teacher=teacher, device=device, progress=progress,
                desc="int8 QAT", on_epoch=on_epoch, evaluate=evaluate)
    return int8.convert_qat(prepared), hist


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


def smoothed_ptq(model_fp: nn.Module, settings: QATSettings, calib_x: torch.Tensor,
                 mode: str = "bn") -> tuple:
    """The PTQ model of ``settings``' bits (the LSQ model at step 0: GPTQ weights, calibrated
    activation steps) of the SmoothQuant-smoothed network — the same float function, with
    range moved from each layer's input into its weights (``mode``: "bn" or "shared", see
    ``qlib.fold``). Each layer's migration strength alpha is searched on ``calib_x`` for its
    output error with its input at ``a_bits`` and its weights at ``w_bits``
    (``smoothquant.search_alpha(per_layer=True)``). Returns ``(model, {group: alpha})``."""
    if not isinstance(settings, QATSettings) or settings.a_bits is None:
        raise ValueError(f"settings={settings!r}: expected a QATSettings with a_bits set "
                         "(smoothing moves range out of the quantized activations)")
    alphas, _ = smoothquant.search_alpha(model_fp, calib_x, w_bits=settings.w_bits,
                                         a_bits=settings.a_bits, mode=mode, per_layer=True)
    smooth = smoothquant.apply(model_fp, smoothquant.search(
        model_fp, calib_x, smoothquant.SmoothSettings(alpha=alphas, mode=mode)))
    init = gptq_init(smooth, settings.w_bits, calib_x, settings.keep_8bit)
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
    already clamped), e.g. to measure the model along the way (``lsq_curve``); the model is put
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

    hist = _fit(model, splits, settings, teacher=teacher, device=device, progress=progress,
                desc=f"LSQ W{settings.w_bits}A{settings.a_bits or 32}",
                after_step=after_step, evaluate=None if validate else (lambda m: float("nan")))
    return model.cpu().eval(), hist


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


def to_int8(model: nn.Module, calib_x: torch.Tensor, observer: str = "histogram") -> nn.Module:
    """The int8-engine model of an LSQ model: its weight codes run exactly; activations are
    8-bit, calibrated by the engine's observers on ``calib_x`` (meaningful for a_bits=8)."""
    return int8.convert(export_model(model), calib_x, observer=observer)


# --------------------------------------------------------------------------------------
# How the fine-tune's result grows with its length (``python -m qlib.qat``)
# --------------------------------------------------------------------------------------

def recovery(ptq_agreement: float, agreement: float) -> float:
    """The share of PTQ's agreement loss a fine-tune wins back: ``(a - a0) / (1 - a0)`` for the
    PTQ model's agreement ``a0`` and the fine-tuned one's ``a`` (1: all of it, 0: none, < 0:
    it lost more). NaN when PTQ agrees everywhere (nothing to win back)."""
    for name, v in (("ptq_agreement", ptq_agreement), ("agreement", agreement)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise ValueError(f"{name}={v!r}: expected an agreement in [0, 1]")
    return float("nan") if ptq_agreement == 1 else (agreement - ptq_agreement) / (1 - ptq_agreement)


def recovery_ci(ptq_agree, qat_agree, groups, n_boot: int = 2000, seed: int = 0,
                level: float = 0.95) -> tuple:
    """``recovery`` of two models measured on the same images, with a paired cluster-bootstrap
    interval: ``ptq_agree`` / ``qat_agree`` say per image whether each model agrees with FP, and
    ``groups`` (one per image) are the tracks. Frames of one track are near-duplicates and tend
    to flip together, so the bootstrap resamples whole tracks, and both models on the same
    resampled images. Returns ``(recovered, lo, hi)``; replicates in which PTQ agrees everywhere
    (no loss to win back) are left out, and the interval is NaN if they all are."""
    p, q = (torch.as_tensor(v) for v in (ptq_agree, qat_agree))
    if p.dim() != 1 or p.shape != q.shape or len(groups) != len(p) or len(p) == 0 or \
            p.dtype != torch.bool or q.dtype != torch.bool:
        raise ValueError(f"ptq_agree {tuple(p.shape)} {p.dtype}, qat_agree {tuple(q.shape)} {q.dtype}, "
                         f"{len(groups)} groups: expected two boolean vectors and one group per image, all "
                         "of the same non-zero length")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"n_boot={n_boot!r}, level={level!r}: expected an integer >= 1 and 0 < level < 1")
    point = recovery(p.double().mean().item(), q.double().mean().item())
    uniq = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    gid = torch.tensor([uniq[g] for g in groups])
    k = len(uniq)
    per_track = [torch.zeros(k, dtype=torch.double).index_add_(0, gid, v.double())
                 for v in (p, q, torch.ones_like(p))]
    pick = torch.from_numpy(np.random.default_rng(seed).integers(0, k, size=(n_boot, k)))
    sp, sq, n = (t[pick].sum(1) for t in per_track)
    lost = n - sp                                    # PTQ's disagreements in each replicate
    boot = ((sq - sp) / lost)[lost > 0].numpy()      # = recovery(sp / n, sq / n)
    if len(boot) == 0:
        return point, float("nan"), float("nan")
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return point, float(lo), float(hi)


def parse_config(config: str) -> tuple:
    """``"W2A4"`` -> ``(2, 4)``: weight and activation bits of an LSQ configuration, each 2..8."""
    m = re.fullmatch(r"W(\d)A(\d)", config) if isinstance(config, str) else None
    if m is None or not all(2 <= int(b) <= 8 for b in m.groups()):
        raise ValueError(f"config={config!r}: expected 'W<bits>A<bits>' with bits 2..8, e.g. 'W2A4'")
    return int(m.group(1)), int(m.group(2))


def lsq_curve(model_fp: nn.Module, splits: qdata.Splits, settings: QATSettings, reference,
              every: int, init_model: Optional[nn.Module] = None,
              calib_x: Optional[torch.Tensor] = None, progress: bool = True,
              on_row: Optional[Callable[[dict], None]] = None):
    """An LSQ fine-tune (``lsq_train``, without the per-epoch validation pass) measured against
    FP every ``every`` optimizer steps and at its end: returns ``(model, rows)``, one row per
    measurement — step 0 is the starting (PTQ) model — holding ``reference.row``'s numbers
    (agreement, KL, accuracy, ...), ``step``, ``train_seconds`` (the training time so far
    without the measurements') and ``recovered`` (``recovery`` of step 0's agreement). The
    measurements change no parameter and draw no random numbers, so the model is the one
    ``lsq_train`` returns for the same settings. ``on_row(row)`` is
    called with each row as it is measured.
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every={every!r}: expected an integer >= 1 (optimizer steps between measurements)")
    rows = []

    def add(row):
        row["recovered"] = recovery(rows[0]["agreement"] if rows else row["agreement"], row["agreement"])
        rows.append(row)
        if on_row is not None:
            on_row(row)

    spent, last = 0.0, time.perf_counter()

    def measure(m, step):  # the time to build the starting model counts as training, from step 1
        nonlocal spent, last
        spent += time.perf_counter() - last
        m.eval()
        add({"step": step, "train_seconds": spent if step else 0.0, **reference.row(m)})
        last = time.perf_counter()

    def on_step(m, step):
        if step % every == 0:
            measure(m, step)

    model, hist = lsq_train(model_fp, splits, settings, init_model=init_model, calib_x=calib_x,
                            progress=progress, validate=False, on_step=on_step)
    total = sum(hist["steps"])
    if rows[-1]["step"] != total:
        measure(model, total)
    return model, rows


def main(argv=None) -> int:
    """Command line: one long LSQ fine-tune with the measurements of ``lsq_curve``."""
    import argparse
    import sys

    from . import measure
    from .results import write_json
    from .config import Config

    ap = argparse.ArgumentParser(
        prog="python -m qlib.qat",
        description="One LSQ fine-tune of the FP32 baseline (chapter 07's recipe: GPTQ start, conv1/fc at "
                    "8 bits, distillation to FP32, mixup, Adam, cosine schedule over all steps), with its "
                    "agreement and KL to FP32 on the held-out images measured along the way. Data: QLIB_DATA.")
    ap.add_argument("--config", default="W2A4", help="weight and activation bits, e.g. W2A4 (default)")
    ap.add_argument("--steps", type=int, default=270, help="optimizer steps of batch 128 in all (default 270)")
    ap.add_argument("--every", type=int, default=None, help="steps between measurements (default steps/10)")
    ap.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate of the weights (default 1e-4)")
    ap.add_argument("--step-lr", type=float, default=1e-3, help="of the steps' logarithms (default 1e-3)")
    ap.add_argument("--mixup", type=float, default=0.4)
    ap.add_argument("--learn", default="all", choices=LEARN,
                    help="what the fine-tune moves: all (default), weights (steps frozen) or steps (weights frozen)")
    ap.add_argument("--seed", type=int, default=None, help="the fine-tune's seed (default: QLIB_SEED's)")
    ap.add_argument("--out", default=None, help="also write the rows as JSON to this file")
    a = ap.parse_args(argv)
    cfg = Config.from_env()
    try:
        w, b = parse_config(a.config)
        if a.steps < 1:
            raise ValueError(f"--steps {a.steps}: expected an integer >= 1")
        every = a.every if a.every is not None else max(1, a.steps // 10)
        splits = qdata.load(cfg)
        keep = ("conv1", "fc")
        s = QATSettings(lr=a.lr, step_lr=a.step_lr, optimizer="adam", distill=1.0, mixup=a.mixup, keep_8bit=keep,
                        w_bits=w, a_bits=b, learn=a.learn, seed=cfg.seed if a.seed is None else a.seed).with_steps(a.steps, len(splits.train))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    fp, _ = models.baseline(cfg, splits)
    calib_x, _ = calib.sample(splits, cfg.calib_size, cfg.seed)
    ref = measure.Reference(fp, splits)
    init = gptq_init(fp, w, calib_x, keep)
    print(f"{a.config}: {s.max_steps} steps over {s.epochs} epochs of {len(splits.train)} training images; "
          f"agreement and KL on {ref.fp['n_fidelity']} held-out images every {every} steps", flush=True)

    def show(r):
        print(f"step {r['step']:>5}  train {r['train_seconds'] / 60:5.1f} min  agreement {r['agreement']:.2%}  "
              f"recovered {r['recovered']:+.0%} of PTQ's loss  KL {r['kl']:.4f}  test accuracy {r['accuracy']:.2%}",
              flush=True)

    _, rows = lsq_curve(fp, splits, s, ref, every, init_model=init, calib_x=calib_x, progress=False, on_row=show)
    if a.out:
        out = write_json({"config": a.config, "settings": {k: getattr(s, k) for k in (
            "epochs", "max_steps", "lr", "step_lr", "mixup", "distill", "seed", "keep_8bit", "learn")},
            "rows": rows}, a.out)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
