"""Calibration: a seeded sample of the train split (never val or test), and hooks that collect
layer inputs and activation statistics on it.

* ``sample(splits, n)`` — the calibration images (train split only) and their indices.
* ``input_hooks(model, {name: fn})`` — a context manager: ``fn(x)`` sees the input of layer
  ``name`` on every forward call; the hooks are removed on exit, also after an error.
* ``run(model, x)`` — the model over ``x`` in batches (eval mode, no grad), mode restored.
* ``layer_inputs(model, x, layers)`` — the inputs of named layers, concatenated over batches.
* ``input_stats(model, x)`` — per input channel of every Conv2d/Linear: ``max|X|`` and
  ``mean|X|`` over batch and spatial positions (SmoothQuant, AWQ, the outlier heat map).

GPTQ's sequential mode (each layer calibrated on the partially quantized model) is in
``gptq.py``; it uses ``input_hooks`` and ``run``.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterable, List, Mapping

import torch
from torch import nn

from . import data as qdata

LAYER_TYPES = (nn.Conv2d, nn.Linear)


def indices(n_train: int, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` distinct train-split indices drawn with ``seed`` (all of them if n >= n_train)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"calibration size n={n!r}: expected an integer >= 1")
    if n_train < 1:
        raise ValueError("the train split is empty: there is no calibration data")
    g = torch.Generator().manual_seed(10_007 + seed)
    return torch.randperm(n_train, generator=g)[:n].sort().values


def sample(splits: qdata.Splits, n: int = 256, seed: int = 0):
    """The calibration set: (normalised float images, train indices used)."""
    idx = indices(len(splits.train), n, seed)
    return qdata.to_float(splits.train.images[idx]), idx


# --------------------------------------------------------------------------------------
# Hooks
# --------------------------------------------------------------------------------------

def layer_names(model: nn.Module) -> List[str]:
    """Names of every Conv2d/Linear of ``model`` (registration order)."""
    return [n for n, m in model.named_modules() if isinstance(m, LAYER_TYPES)]


def check_x(x, who: str = "calibration") -> torch.Tensor:
    """``x`` must be a non-empty tensor batch; else a ValueError that says what to pass."""
    if not torch.is_tensor(x) or x.dim() < 2 or len(x) == 0:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"{who}: calib_x={shape} is not a non-empty batch of inputs; pass float "
                         "images [N, 3, H, W] from the train split, e.g. calib.sample(splits)[0]")
    return x


@contextlib.contextmanager
def input_hooks(model: nn.Module, fns: Mapping[str, Callable[[torch.Tensor], None]]):
    """Within the block, ``fns[name](x)`` is called with the (detached) input ``x`` of the
    submodule ``name`` each time it runs. Every hook is removed on exit."""
    mods = dict(model.named_modules())
    unknown = [n for n in fns if n not in mods]
    if unknown:
        raise ValueError(f"input_hooks: no submodule(s) {unknown} in the model; expected names "
                         f"such as {layer_names(model)[:4]}")
    handles = [mods[n].register_forward_pre_hook(lambda m, a, fn=fn: fn(a[0].detach()))
               for n, fn in fns.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@torch.no_grad()
def run(model: nn.Module, x: torch.Tensor, batch_size: int = 64, keep: bool = False):
    """Run ``model`` over ``x`` in batches, in eval mode (its mode is restored afterwards).
    With ``keep`` the outputs are returned concatenated (on the CPU), else None."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: expected an integer >= 1")
    was, dev, out = model.training, _device(model), []
    model.eval()
    try:
        for i in range(0, len(x), batch_size):
            y = model(x[i:i + batch_size].to(dev))
            if keep:
                out.append(y.detach().cpu())
    finally:
        model.train(was)
    return torch.cat(out) if keep else None


def layer_inputs(model: nn.Module, x: torch.Tensor, layers: Iterable[str], batch_size: int = 64
                 ) -> Dict[str, torch.Tensor]:
    """The inputs of the named layers on ``x`` (eval mode), concatenated over batches:
    ``{name: [N, C_in, H, W] or [N, C_in]}`` (float32, CPU)."""
    check_x(x, "layer_inputs")
    got: Dict[str, list] = {n: [] for n in layers}
    fns = {n: (lambda v, n=n: got[n].append(v.float().cpu())) for n in got}
    with input_hooks(model, fns):
        run(model, x, batch_size)
    return {n: torch.cat(v) for n, v in got.items()}


def channel_abs(v: torch.Tensor) -> torch.Tensor:
    """|v| as [C, positions]: channel dim 1 of [N, C, ...] first, batch and space flattened."""
    return v.detach().float().abs().transpose(0, 1).reshape(v.shape[1], -1)


def input_stats(model: nn.Module, x: torch.Tensor, batch_size: int = 64) -> Dict[str, dict]:
    """Per input channel of every Conv2d/Linear on ``x``: ``{name: {"absmax": [C_in],
    "absmean": [C_in]}}`` — ``max|X|`` and ``mean|X|`` over batch and spatial positions."""
    check_x(x, "input_stats")
    acc: Dict[str, dict] = {}

    def add(name, v):
        a = channel_abs(v)
        d = acc.setdefault(name, {"max": torch.zeros(a.shape[0]),
                                  "sum": torch.zeros(a.shape[0], dtype=torch.float64), "n": 0})
        d["max"] = torch.maximum(d["max"], a.amax(1).cpu())
        d["sum"] += a.double().sum(1).cpu()
        d["n"] += a.shape[1]

    with input_hooks(model, {n: (lambda v, n=n: add(n, v)) for n in layer_names(model)}):
        run(model, x, batch_size)
    return {n: {"absmax": d["max"], "absmean": (d["sum"] / max(d["n"], 1)).float()}
            for n, d in acc.items()}
