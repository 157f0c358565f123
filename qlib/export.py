"""Save and load quantized models as real low-bit files (one safetensors file).

A quantized model is an ordinary float ``nn.Module`` whose quantized Conv2d/Linear layers
carry ``module.qweight: QTensor`` and whose ``module.weight`` equals
``qweight.dequantize()`` exactly (``attach`` sets both).

File layout (format version 1):

* for each quantized module ``m``: ``m.qweight.codes`` (uint8, the ``pack``-ed unsigned codes
  ``q - qmin``), ``m.qweight.scale`` (float16), and for asymmetric layers ``m.qweight.zero``
  (uint8 integer zero points);
* every other ``state_dict()`` entry as-is (float32), except ``num_batches_tracked``
  (dropped: it only matters for training with ``momentum=None``);
* metadata key ``"qlib"``: JSON with ``format``, ``version``, ``arch``, ``num_classes``,
  ``layers`` (per layer: shape, bits, symmetric, group_size, scale_shape), the structural
  changes to re-apply on load (``identity``: modules that are ``nn.Identity``, e.g. folded
  BatchNorms; ``bias``: Conv2d/Linear layers that have a bias, e.g. convs that gained one
  from a folded BatchNorm) and ``extra`` (caller's metadata).
"""
from __future__ import annotations

import json
import math
import os
from typing import Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from . import atomic, models
from .quant import QTensor, dequantize_codes, pack, qrange, unpack

FORMAT = "qlib.export"
FORMAT_VERSION = 1
META_KEY = "qlib"
QSUFFIX = ".qweight."


def attach(module: nn.Module, qt: QTensor) -> nn.Module:
    """Give ``module`` the quantized weight: ``module.qweight = qt`` and
    ``module.weight.data = qt.dequantize()``."""
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor) or tuple(w.shape) != tuple(qt.shape):
        raise ValueError(f"attach: module {type(module).__name__} has weight shape "
                         f"{None if w is None else tuple(w.shape)}, QTensor has {tuple(qt.shape)}")
    w.data = qt.dequantize().to(device=w.device, dtype=w.dtype)
    module.qweight = qt
    return module


def file_size_mb(path) -> float:
    return os.path.getsize(path) / 1e6


def _num_classes(model: nn.Module) -> int:
    fc = getattr(model, "fc", None)
    if isinstance(fc, nn.Linear):
        return fc.out_features
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("save: cannot infer num_classes (no Linear layer); pass num_classes=")
    return linears[-1].out_features


def save(model: nn.Module, path, arch: str = "resnet18", num_classes: Optional[int] = None,
         extra_metadata: Optional[dict] = None) -> str:
    """Write ``model`` to ONE safetensors file at ``path`` (atomically: temp file + replace).
    Returns the path."""
    path = os.fspath(path)
    if arch not in models.ARCHS:
        raise ValueError(f"arch={arch!r}: expected one of {models.ARCHS}")
    num_classes = _num_classes(model) if num_classes is None else num_classes
    tensors, layers, skip = {}, {}, set()
    for name, m in model.named_modules():
        qt = getattr(m, "qweight", None)
        if qt is None:
            continue
        if not torch.equal(m.weight.detach().cpu().float(), qt.dequantize().cpu()):
            raise ValueError(f"save: {name}.weight differs from {name}.qweight.dequantize(); "
                             "call export.attach(module, qt) after changing a quantized weight")
        if not torch.equal(qt.scale.detach().cpu().half().float(), qt.scale.detach().cpu().float()):
            raise ValueError(f"save: {name}.qweight.scale is not float16-representable, so a file "
                             "could not reproduce the model bit for bit; round it with "
                             "scale.half().float() before computing the codes (quant does)")
        z = qt.zero.detach().cpu()
        if not qt.symmetric and not bool(((z >= 0) & (z <= 255) & (z == z.round())).all()):
            raise ValueError(f"save: {name}.qweight.zero must hold integers in [0, 255]")
        qmin = qrange(qt.bits, qt.symmetric)[0]
        tensors[name + QSUFFIX + "codes"] = pack(qt.codes.cpu().to(torch.int16) - qmin, qt.bits)
        tensors[name + QSUFFIX + "scale"] = qt.scale.detach().cpu().half().contiguous()
        if not qt.symmetric:
            tensors[name + QSUFFIX + "zero"] = qt.zero.detach().cpu().to(torch.uint8).contiguous()
        layers[name] = {"shape": list(qt.shape), "bits": qt.bits, "symmetric": qt.symmetric,
                        "group_size": qt.group_size, "scale_shape": list(qt.scale.shape)}
        skip.add(name + ".weight")
    for k, v in model.state_dict().items():
        if k in skip or k.endswith("num_batches_tracked"):
            continue
        tensors[k] = v.detach().cpu().contiguous()
    meta = {
        "format": FORMAT, "version": FORMAT_VERSION, "arch": arch, "num_classes": num_classes,
        "layers": layers,
        "identity": [n for n, m in model.named_modules() if isinstance(m, nn.Identity)],
        "bias": [n for n, m in model.named_modules()
                 if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None],
        "extra": extra_metadata or {},
    }
    with atomic.replacing(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta)})
    return path


def _read(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load: no such file {path!r}")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise ValueError(f"load: {path!r} is not a qlib export (not a readable safetensors "
                         f"file: {e})") from e
    try:
        info = json.loads(meta[META_KEY])
        assert info["format"] == FORMAT
    except Exception:
        raise ValueError(f"load: {path!r} is a safetensors file but not a qlib export (no "
                         f"'{META_KEY}' metadata of format {FORMAT!r}; written by export.save?)"
                         ) from None
    if info.get("version") != FORMAT_VERSION:
        raise ValueError(f"load: {path!r} has qlib format version {info.get('version')!r}; "
                         f"this qlib reads version {FORMAT_VERSION}")
    return info, tensors


def _restructure(model: nn.Module, info: dict) -> None:
    """Re-apply the structural changes recorded at save time (folded BNs, conv biases)."""
    for name in info.get("identity", []):
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        if not isinstance(getattr(owner, child), nn.Identity):
            setattr(owner, child, nn.Identity())
    for name in info.get("bias", []):
        m = model.get_submodule(name)
        if m.bias is None:
            m.bias = nn.Parameter(torch.zeros(m.weight.shape[0], dtype=m.weight.dtype))


def load(path) -> nn.Module:
    """Rebuild the model saved by ``save``: float weights equal to the dequantized codes,
    ``qweight`` re-attached to every quantized layer, in eval mode."""
    path = os.fspath(path)
    info, tensors = _read(path)
    model = models.build(info["arch"], info["num_classes"])
    _restructure(model, info)
    state, qts = {}, {}
    for k, v in tensors.items():
        if QSUFFIX not in k:
            state[k] = v
    for name, L in info["layers"].items():
        shape, bits, sym = tuple(L["shape"]), int(L["bits"]), bool(L["symmetric"])
        n = math.prod(shape)
        qmin = qrange(bits, sym)[0]
        codes = (unpack(tensors[name + QSUFFIX + "codes"], bits, n) + qmin).reshape(shape[0], -1)
        scale = tensors[name + QSUFFIX + "scale"].float().reshape(L["scale_shape"])
        zero = (tensors[name + QSUFFIX + "zero"].float().reshape(L["scale_shape"]) if not sym
                else torch.zeros_like(scale))
        qt = QTensor(codes=codes, scale=scale, zero=zero, bits=bits, symmetric=sym,
                     group_size=L["group_size"], shape=shape)
        state[name + ".weight"] = dequantize_codes(codes, scale, zero).reshape(shape)
        qts[name] = qt
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ValueError(f"load: {path!r} does not match {info['arch']} with "
                         f"{info['num_classes']} classes: missing {missing[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}")
    for name, qt in qts.items():  # weight already equals qt.dequantize()
        model.get_submodule(name).qweight = qt
    return model.eval()
