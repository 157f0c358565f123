"""Equivalence transforms of torchvision's ResNet-18: per-input-channel scales folded offline.

A consumer layer (Conv2d/Linear) gets its input channels scaled, ``W[:, j] *= s_j``, and the
op that *produces* its input is divided by ``s`` so the float model computes the same function
(``s > 0``). The division goes into a BatchNorm's affine ``weight`` and ``bias``: ReLU commutes
with a positive per-channel scale, and so do max-pool, the identity shortcut, the residual
sum and average pooling. (If the BN was already folded into its conv, ``quant.fold_batchnorm``
left an ``nn.Identity``: the rows and bias of that conv are divided instead.)

The folding graph, written out (no tracing): every group is ``(consumers, producers)``; one
scale vector per group, shared by every consumer, divided out of every producer.

* ``mode="bn"`` — a block's conv2 reads ``relu(bn1(conv1 x))``: producer ``bn1`` of the block.
  The layers that read the residual stream (a block's conv1, the downsample convs, fc) and the
  stem conv (it reads the image) are left unscaled.
* ``mode="shared"`` — the "bn" groups plus one group per stage of the residual stream. The
  identity shortcut carries a scaled stream from block to block, so the scale of a stage is
  shared by every consumer of the stream in that stage and divided out of every op that writes
  into it: the stem ``bn1`` (through relu and max-pool) and each block's ``bn2`` (and the
  downsample BN that starts the stage). Stage 4's stream reaches ``fc`` through avgpool.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
from torch import nn

from . import calib

MODES = ("bn", "shared")


@dataclass(frozen=True)
class Group:
    """Layers that share one input scale: ``consumers`` (Conv2d/Linear names) get
    ``W[:, j] *= s_j``; ``producers`` (BatchNorm names) are divided by ``s``."""

    key: str
    consumers: Tuple[str, ...]
    producers: Tuple[str, ...]
    channels: int


def _bn_groups() -> List[Group]:
    width = {1: 64, 2: 128, 3: 256, 4: 512}
    return [Group(f"layer{s}.{b}.conv2", (f"layer{s}.{b}.conv2",), (f"layer{s}.{b}.bn1",), width[s])
            for s in (1, 2, 3, 4) for b in (0, 1)]


# The residual stream of each stage: who reads it, who writes into it.
STREAM_GROUPS: List[Group] = [
    Group("stream1",
          ("layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1", "layer2.0.downsample.0"),
          ("bn1", "layer1.0.bn2", "layer1.1.bn2"), 64),
    Group("stream2",
          ("layer2.1.conv1", "layer3.0.conv1", "layer3.0.downsample.0"),
          ("layer2.0.bn2", "layer2.0.downsample.1", "layer2.1.bn2"), 128),
    Group("stream3",
          ("layer3.1.conv1", "layer4.0.conv1", "layer4.0.downsample.0"),
          ("layer3.0.bn2", "layer3.0.downsample.1", "layer3.1.bn2"), 256),
    Group("stream4",
          ("layer4.1.conv1", "fc"),
          ("layer4.0.bn2", "layer4.0.downsample.1", "layer4.1.bn2"), 512),
]
BN_GROUPS: List[Group] = _bn_groups()
ALL_GROUPS: Dict[str, Group] = {g.key: g for g in BN_GROUPS + STREAM_GROUPS}


def _conv_of(bn_name: str) -> str:
    """The conv whose output a BN normalises: bn1 -> conv1, downsample.1 -> downsample.0."""
    if bn_name.endswith("downsample.1"):
        return bn_name[:-1] + "0"
    parent, _, child = bn_name.rpartition(".")
    return (parent + "." if parent else "") + child.replace("bn", "conv")


def _check_model(model: nn.Module) -> Dict[str, nn.Module]:
    mods = dict(model.named_modules())
    for g in ALL_GROUPS.values():
        for c in g.consumers:
            m = mods.get(c)
            if not isinstance(m, (nn.Conv2d, nn.Linear)):
                raise ValueError(f"fold: expected torchvision's ResNet-18 (layer {c!r} should be a "
                                 f"Conv2d/Linear, found {type(m).__name__})")
            if (m.in_channels if isinstance(m, nn.Conv2d) else m.in_features) != g.channels:
                raise ValueError(f"fold: layer {c!r} has {m.weight.shape[1]} input channels, "
                                 f"ResNet-18 has {g.channels}")
        for p in g.producers:
            if not isinstance(mods.get(p), (nn.BatchNorm2d, nn.Identity)):
                raise ValueError(f"fold: expected a BatchNorm2d (or a folded nn.Identity) at "
                                 f"{p!r}, found {type(mods.get(p)).__name__}")
    return mods


def scalable_layers(model: nn.Module, mode: str = "bn") -> List[Group]:
    """The groups of layers whose input channels can be scaled in ``model`` (a torchvision
    ResNet-18): 8 conv2 groups for ``mode="bn"``, plus the 4 residual-stream groups for
    ``mode="shared"``."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {MODES} (residual-stream folding)")
    _check_model(model)
    return list(BN_GROUPS) + (list(STREAM_GROUPS) if mode == "shared" else [])


def unscaled_layers(model: nn.Module, mode: str = "bn") -> List[str]:
    """The Conv2d/Linear layers that no group of ``mode`` scales (the stem conv always)."""
    scaled = {c for g in scalable_layers(model, mode) for c in g.consumers}
    return [n for n in calib.layer_names(model) if n not in scaled]


def _check_scale(key: str, s, channels: int) -> torch.Tensor:
    s = torch.as_tensor(s).detach()
    if s.dim() != 1 or s.numel() != channels:
        raise ValueError(f"scales[{key!r}]: expected a vector of {channels} values, got shape "
                         f"{tuple(s.shape)}")
    if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
        raise ValueError(f"scales[{key!r}]: every scale must be finite and > 0 (a ReLU commutes "
                         f"only with a positive scale); min={float(s.min()):.3g}")
    return s.double()


@torch.no_grad()
def apply_scales(model: nn.Module, scales: Dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` with ``W[:, j] *= s_j`` on every consumer of each group and the
    producers divided by ``s``: the same function in eval mode (BN running statistics)."""
    mods = _check_model(model)
    unknown = [k for k in scales if k not in ALL_GROUPS]
    if unknown:
        raise ValueError(f"apply_scales: unknown group key(s) {unknown}; expected keys of "
                         f"fold.scalable_layers(model, mode) ({sorted(ALL_GROUPS)})")
    for key in scales:
        for c in ALL_GROUPS[key].consumers:
            if hasattr(mods[c], "qweight"):
                raise ValueError(f"apply_scales: {c} is already quantized; scale before quantizing")
    model = copy.deepcopy(model)
    mods = dict(model.named_modules())
    for key, s in scales.items():
        g = ALL_GROUPS[key]
        s = _check_scale(key, s, g.channels)
        for c in g.consumers:
            w = mods[c].weight
            shape = (1, -1, 1, 1) if w.dim() == 4 else (1, -1)
            w.data = (w.double() * s.to(w.device).view(shape)).to(w.dtype)
        for p in g.producers:
            _divide_producer(mods, p, s)
    return model


def _divide_producer(mods: Dict[str, nn.Module], name: str, s: torch.Tensor) -> None:
    m = mods[name]
    if isinstance(m, nn.BatchNorm2d):
        if not m.affine:
            raise ValueError(f"apply_scales: BatchNorm {name} has no affine parameters to "
                             "fold into")
        targets = [m.weight, m.bias]
    else:  # nn.Identity: the BN was folded into the conv before it
        conv = mods[_conv_of(name)]
        if conv.bias is None:
            raise ValueError(f"apply_scales: {name} is an Identity but {_conv_of(name)} has no "
                             "bias: not a BN-folded model")
        if hasattr(conv, "qweight"):
            raise ValueError(f"apply_scales: producer {_conv_of(name)} is already quantized")
        targets = [conv.weight, conv.bias]
    for t in targets:
        shape = (-1,) + (1,) * (t.dim() - 1)
        t.data = (t.double() / s.to(t.device).view(shape)).to(t.dtype)


# --------------------------------------------------------------------------------------
# Weight statistics per input channel (SmoothQuant, weight-aware AWQ)
# --------------------------------------------------------------------------------------

def weight_absmax_in(module: nn.Module) -> torch.Tensor:
    """max |W[:, j]| over output channels and kernel taps: one value per input channel."""
    w = module.weight.detach().float().abs()
    return w.amax(dim=(0, 2, 3)) if w.dim() == 4 else w.amax(dim=0)


def weight_absmean_in(module: nn.Module) -> torch.Tensor:
    """mean |W[:, j]| over output channels and kernel taps."""
    w = module.weight.detach().float().abs()
    return w.mean(dim=(0, 2, 3)) if w.dim() == 4 else w.mean(dim=0)
