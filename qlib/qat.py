"""Quantization-aware training: the fine-tuning loop that int8 QAT and LSQ share, and int8 QAT
on PyTorch's engine.

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

Low-bit QAT with learned step sizes (LSQ) lives in ``lsq.py``: it fine-tunes with the same
settings (``QATSettings``) and the same loop (``fit``).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import int8, quant
from . import data as qdata
from . import models

ADAM_STEP_EPS = 1e-16       # Adam's eps for the learned LSQ steps (see fit)


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
    augment: ``models.augment`` on each batch (small rotation, scale, shift, brightness and
    contrast); False trains on the training images as they are.
    w_range: LSQ weight-step initialisation without an init model (``quant.find_params``
    range: "mse" search of the clipping ratio, or "minmax"). keep_8bit: LSQ layers whose
    weight and input stay at 8 bits (e.g. ``("conv1", "fc")``: the stem reads the image).
    learn: which parameters the fine-tune moves — "all", "weights" (weights and biases; the
    LSQ steps stay at their start) or "steps" (only the LSQ steps; every weight and bias stays
    at its start). From an init model the weights sit on their grid points, where LSQ's
    gradient of a weight step, ``round(w/s) - w/s``, is zero, so with "steps" only the
    activation (input) steps move. The controls tell which parameters a result comes from.
    minutes: a time box (LSQ only): the run ends when its optimizer steps have taken this many
    minutes (callbacks and validation not counted), or at its last step if that comes first;
    the cosine schedule runs over whichever of the two is nearer, so the learning rate reaches
    0 at the end of the box whatever the machine's pace.
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
    minutes: Optional[float] = None
    distill: float = 0.0
    mixup: float = 0.0
    augment: bool = True
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
        if self.minutes is not None:
            _check_float("minutes", self.minutes, 0.0, 24 * 60.0)
        _check_float("distill", self.distill, 0.0, 1.0, lo_open=False)
        _check_float("mixup", self.mixup, 0.0, 10.0, lo_open=False)
        if not isinstance(self.augment, bool):
            raise ValueError(f"augment={self.augment!r}: expected True or False (QATSettings.augment)")
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


def fit(model, splits, s: QATSettings, teacher=None, device=None, progress=True, desc="QAT",
        on_epoch=None, after_step=None, evaluate=None, clock=time.perf_counter):
    """Fine-tune ``model`` on ``splits.train`` with ``s``: SGD with momentum or Adam, cosine LR over
    all steps, ``models.augment`` (unless ``s.augment`` is False), mixup and distillation to
    ``teacher`` as ``s`` says; the parameters named ``*_step`` (LSQ's learned steps) form their
    own group at ``s.step_lr``. With ``s.minutes`` the run is time-boxed (``QATSettings``), timed
    by ``clock`` (seconds). Returns the curves (one entry per epoch) and, for the whole run,
    ``train_seconds`` (the optimizer steps' time, callbacks and validation excluded),
    ``max_steps`` (the steps the settings allow) and ``stopped_at_budget`` (the time box ended it
    before them)."""
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
    budget = None if s.minutes is None else 60.0 * s.minutes
    share = 0.0  # share of the run done: of its steps or, time-boxed, of its minutes if further
    sched = torch.optim.lr_scheduler.LambdaLR(  # the cosine reads ``share`` when called
        opt, lambda _: 0.5 * (1 + math.cos(math.pi * min(1.0, share))))
    gen = torch.Generator().manual_seed(s.seed)
    mix_rng = np.random.default_rng(s.seed)
    hist = {"epoch": [], "train_loss": [], "train_acc": [], "val_acc": [], "lr": [],
            "seconds": [], "steps": []}
    bar = tqdm(total=total, desc=desc, unit="batch", disable=not progress, mininterval=2)
    t_start = time.time()
    done, trained = 0, 0.0  # optimizer steps, their seconds
    for ep in range(s.epochs):  # a run that has done its share breaks out after its step and its epoch
        if on_epoch is not None:
            on_epoch(model, ep)
        model.train()
        t0, loss_sum, correct, seen, steps = time.time(), 0.0, 0, 0, 0
        mark = clock()
        for x, y in qdata.batches(splits.train, s.batch_size, shuffle=True,
                                  seed=s.seed * 1000 + ep):
            if steps >= per_epoch:
                break
            x, y = (models.augment(x, gen) if s.augment else x).to(device), y.to(device)
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
            loss_sum += loss.item() * len(y)
            correct += (out.argmax(1) == y).sum().item()
            seen += len(y)
            steps, done = steps + 1, done + 1
            trained += clock() - mark
            share = done / total if budget is None else max(done / total, trained / budget)
            sched.step()
            bar.update(1)
            if after_step is not None:
                after_step(model)
            if share >= 1:
                break
            mark = clock()
        val = evaluate(model) if evaluate is not None else models.evaluate(model, splits.val)["accuracy"]
        hist["epoch"].append(ep + 1)
        hist["train_loss"].append(loss_sum / max(1, seen))
        hist["train_acc"].append(correct / max(1, seen))
        hist["val_acc"].append(val)
        hist["lr"].append(opt.param_groups[0]["lr"])
        hist["seconds"].append(time.time() - t0)
        hist["steps"].append(steps)
        bar.set_postfix(epoch=ep + 1, loss=f"{loss_sum / max(1, seen):.3f}", val=f"{val:.3f}")
        if share >= 1:
            break
    if done < total:  # the time box ended the run: the bar shows the steps it held
        bar.total = done
        bar.refresh()
    bar.close()
    for p, g in zip(frozen, grad_before):
        p.requires_grad_(g)
    hist["total_seconds"] = time.time() - t_start
    hist.update(train_seconds=trained, max_steps=total, stopped_at_budget=done < total)
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
    if settings.minutes is not None:
        raise ValueError(f"minutes={settings.minutes!r}: int8 QAT freezes its last epochs, which a time box "
                         "could cut short; expected minutes=None (a time box is for LSQ runs, lsq_train)")
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
    hist = fit(prepared, splits, settings, teacher=teacher, device=device, progress=progress,
               desc="int8 QAT", on_epoch=on_epoch, evaluate=evaluate)
    return int8.convert_qat(prepared), hist
