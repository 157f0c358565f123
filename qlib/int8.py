"""Real int8 execution: a float ResNet-18 converted to PyTorch's quantized engine (x86).

Every ``torch.ao`` call of qlib lives in this file (``qat.py`` imports the helpers below);
``torch.ao.quantization`` is deprecated in PyTorch 2.x, so its warnings are silenced where
it is called (``_quiet``), not globally.

How ``convert`` builds the int8 model, in one pass for every kind of input:

1. **Check the structure.** The model must be torchvision's ResNet-18 layout (same module
   names, types and conv shapes; BatchNorms may already be folded into ``nn.Identity``);
   anything else is a ``ValueError`` naming the first offending module.
2. **Fold BatchNorm** (``quant.fold_batchnorm``, in float64): conv weights and biases now
   carry BN, the BNs are ``nn.Identity``. A SmoothQuant-smoothed copy (changed BN params) and
   a model whose folded weights lie on a low-bit grid (``qweight`` QTensors) take the same
   path; an already folded model is left unchanged.
3. **Load the folded weights into torchvision's quantizable ResNet-18** (QuantStub /
   DeQuantStub, ``FloatFunctional`` residual add + ReLU) whose BNs are ``nn.Identity`` and
   whose convs have a bias; fuse conv + ReLU (``fuse_modules``; BN is already folded, so
   torch never re-folds BN into weights that must keep their codes).
4. **Calibrate** per-tensor affine uint8 activations (``observer="minmax"`` or
   ``"histogram"``, with the 7-bit range ``[0, 127]`` of torch's default x86 qconfig,
   ``REDUCE_RANGE``) on ``calib_x`` (train split only), residual additions included.
   Weights: per-channel symmetric int8 (``scale = amax / 127.5``, the same convention as
   ``quant``'s ``2*amax/(2^b-1)``).
5. **Convert** to the x86 engine. Then, for every layer that carries a ``qweight`` QTensor
   (symmetric, per-channel or per-tensor, bits <= 8), **the engine's weight is rebuilt from
   the codes**: ``quantize_per_channel(codes * scale, scale, 0, axis=0, qint8)``, whose
   ``int_repr()`` equals the codes exactly (``codes*scale/scale`` is within rounding noise of
   the integer code, far below half a step). W4A8 and W2A8 therefore run the 4-bit/2-bit
   codes, stored in int8 containers, with the QTensor's scales.

``save`` writes one file: the converted model's ``state_dict`` (int8 weights, float biases,
qparams) + format metadata, via ``torch.save`` (atomically); ``load`` rebuilds the same
quantized skeleton and loads it (``weights_only=True``). ResNet-18: ~11.3 MB vs 44.7 MB.
"""
from __future__ import annotations

import contextlib
import copy
import os
import warnings
from typing import Iterable, Optional

import torch
from torch import nn

from . import atomic, quant

ENGINE = "x86"
OBSERVERS = ("minmax", "histogram")
REDUCE_RANGE = True          # activations in [0, 127], as torch's default x86 qconfig
CALIB_BATCH = 64
FORMAT, FORMAT_VERSION = "qlib.int8", 1


@contextlib.contextmanager
def _quiet():
    """Silence torch.ao's deprecation and observer chatter for the enclosed calls only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def _tq():
    with _quiet():
        import torch.ao.quantization as tq
    return tq


def set_engine() -> None:
    if ENGINE not in torch.backends.quantized.supported_engines:
        raise RuntimeError(f"the quantized engine {ENGINE!r} is not available in this PyTorch "
                           f"build (supported: {torch.backends.quantized.supported_engines})")
    torch.backends.quantized.engine = ENGINE


def matrix_units(flags: Optional[Iterable[str]] = None) -> str:
    """The int8 dot-product instructions the engine's kernels (oneDNN, FBGEMM) can use on this
    CPU, best first: ``"AMX"`` (Intel's tile matrix units, ``amx_int8``), ``"AVX-512 VNNI"``,
    ``"AVX-VNNI"`` (256-bit), or ``"no VNNI"`` (plain AVX2 / AVX-512 multiply-adds); read from
    ``/proc/cpuinfo``'s flags unless ``flags`` are given, ``"unknown"`` where they cannot be read.
    The int8 engine's speed-up over FP32 depends on it far more than FP32's own speed does."""
    if flags is None:
        from .models import cpuinfo

        line = cpuinfo("flags")
        if line is None:
            return "unknown"
        flags = line.split()
    flags = set(flags)
    for flag, name in (("amx_int8", "AMX"), ("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI")):
        if flag in flags:
            return name
    return "no VNNI"


# --------------------------------------------------------------------------------------
# Structure: the ResNet-18 layout the converter accepts
# --------------------------------------------------------------------------------------

def _reference(num_classes: int) -> nn.Module:
    import torchvision
    m = torchvision.models.resnet18(weights=None)
    m.fc = nn.Linear(m.fc.in_features, num_classes)
    return m


def _conv_sig(m: nn.Module):
    if isinstance(m, nn.Conv2d):
        return (m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                m.groups)
    if isinstance(m, nn.Linear):
        return (m.in_features,)
    return None


def check_resnet18(model: nn.Module) -> int:
    """Raise ``ValueError`` unless ``model`` has torchvision's ResNet-18 layout (BNs may be
    folded into ``nn.Identity``); returns its number of classes."""
    fc = getattr(model, "fc", None)
    if not isinstance(fc, nn.Linear) or fc.out_features < 2:
        raise ValueError(f"int8: {type(model).__name__} is not a ResNet-18 (no Linear head "
                         "'fc'); the int8 converter handles torchvision's ResNet-18 layout only")
    ref = dict(_reference(fc.out_features).named_modules())
    got = dict(model.named_modules())
    for name, r in ref.items():
        m = got.get(name)
        shown = name or "<root>"
        if m is None:
            raise ValueError(f"int8: module {shown!r} of ResNet-18 is missing in "
                             f"{type(model).__name__}; the converter handles ResNet-18 only")
        ok = type(m) is type(r) or (isinstance(r, nn.BatchNorm2d) and type(m) is nn.Identity)
        if name == "" or isinstance(r, nn.Module) and type(r).__name__ == "BasicBlock":
            ok = isinstance(m, type(r))
        if not ok:
            raise ValueError(f"int8: cannot convert layer {shown!r} of type {type(m).__name__} "
                             f"(expected {type(r).__name__}); the converter handles "
                             "torchvision's ResNet-18 layout only")
        if _conv_sig(m) != _conv_sig(r):
            raise ValueError(f"int8: layer {shown!r} has shape {_conv_sig(m)}, ResNet-18 has "
                             f"{_conv_sig(r)}")
    extra = [n for n in got if n not in ref]
    if extra:
        raise ValueError(f"int8: unexpected module {extra[0]!r} ({type(got[extra[0]]).__name__})"
                         " in a ResNet-18; the converter handles torchvision's layout only")
    return fc.out_features


# --------------------------------------------------------------------------------------
# The quantizable skeleton
# --------------------------------------------------------------------------------------

def quantizable_resnet18(num_classes: int) -> nn.Module:
    """torchvision's quantizable ResNet-18 (QuantStub/DeQuantStub, FloatFunctional adds)."""
    from torchvision.models.quantization import resnet18 as qresnet18
    with _quiet():
        return qresnet18(weights=None, quantize=False, num_classes=num_classes)


def _fold_skeleton(model: nn.Module) -> None:
    """In place: every BN of the quantizable ResNet-18 -> Identity, every conv gets a bias."""
    for name, m in list(model.named_modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(m, child_name, nn.Identity())
            elif isinstance(child, nn.Conv2d) and child.bias is None:
                child.bias = nn.Parameter(torch.zeros(child.out_channels))


def _fuse_conv_relu(model: nn.Module) -> None:
    """Fuse conv + ReLU of the (BN-folded) quantizable ResNet-18, in place."""
    tq = _tq()
    with _quiet():
        tq.fuse_modules(model, ["conv1", "relu"], inplace=True)
        for m in model.modules():
            if type(m).__name__ == "QuantizableBasicBlock":
                tq.fuse_modules(m, ["conv1", "relu"], inplace=True)


def qconfig(observer: str = "histogram"):
    """Static PTQ qconfig of the x86 engine: per-tensor affine uint8 activations (observer
    ``minmax`` or ``histogram``), per-channel symmetric int8 weights."""
    if observer not in OBSERVERS:
        raise ValueError(f"observer={observer!r}: expected one of {OBSERVERS} (int8.convert)")
    tq = _tq()
    qmax = 127 if REDUCE_RANGE else 255
    act_cls = tq.MinMaxObserver if observer == "minmax" else tq.HistogramObserver
    act = act_cls.with_args(dtype=torch.quint8, qscheme=torch.per_tensor_affine,
                            quant_min=0, quant_max=qmax)
    weight = tq.PerChannelMinMaxObserver.with_args(dtype=torch.qint8,
                                                   qscheme=torch.per_channel_symmetric)
    return tq.QConfig(activation=act, weight=weight)


def _skeleton(num_classes: int, observer: str = "minmax") -> nn.Module:
    """The prepared (observed, not yet converted) float skeleton."""
    set_engine()
    q = quantizable_resnet18(num_classes).eval()
    _fold_skeleton(q)
    _fuse_conv_relu(q)
    q.qconfig = qconfig(observer)
    with _quiet():
        _tq().prepare(q, inplace=True)
    return q


def _convert(prepared: nn.Module) -> nn.Module:
    """Convert in place (the caller owns ``prepared``)."""
    set_engine()
    with _quiet():
        return _tq().convert(prepared.eval().cpu(), inplace=True).eval()


# --------------------------------------------------------------------------------------
# Low-bit codes on the engine
# --------------------------------------------------------------------------------------

def _check_qweight(name: str, m: nn.Module):
    qt = m.qweight
    if not qt.symmetric or qt.bits > 8 or qt.group_size is not None:
        raise ValueError(
            f"int8: layer {name!r} carries a {qt.bits}-bit "
            f"{'symmetric' if qt.symmetric else 'asymmetric'} "
            f"{'per-group' if qt.group_size else 'per-channel/tensor'} QTensor; the x86 engine "
            "runs symmetric per-channel (or per-tensor) codes of <= 8 bits only")
    if not torch.equal(m.weight.detach().float().cpu(), qt.dequantize().cpu()):
        raise ValueError(f"int8: {name}.weight differs from {name}.qweight.dequantize(); "
                         "attach the QTensor with export.attach after changing a weight")
    return qt


def engine_weight(qt: quant.QTensor) -> torch.Tensor:
    """The int8 per-channel quantized weight whose ``int_repr()`` equals ``qt.codes``."""
    c_out = qt.shape[0]
    scale = qt.scale.detach().float().cpu().reshape(-1).expand(c_out).double().contiguous()
    w = qt.dequantize().cpu()
    qw = torch.quantize_per_channel(w, scale, torch.zeros(c_out, dtype=torch.long), 0,
                                    torch.qint8)
    if not torch.equal(qw.int_repr().reshape(c_out, -1).to(torch.int16), qt.codes.cpu()):
        raise RuntimeError("int8: the engine weight does not reproduce the QTensor codes")
    return qw


def _set_codes(qmodel: nn.Module, codes: dict) -> None:
    mods = dict(qmodel.named_modules())
    for name, qt in codes.items():
        m = mods[name]
        b = m.bias() if callable(getattr(m, "bias", None)) else None
        m.set_weight_bias(engine_weight(qt), b)


def weight_codes_of(qmodel: nn.Module) -> dict:
    """``{layer: int_repr of the engine weight}`` (int16, [C_out, cols]) of a converted model."""
    out = {}
    for name, m in qmodel.named_modules():
        w = getattr(m, "weight", None)
        if callable(w) and hasattr(m, "set_weight_bias"):
            t = w()
            out[name] = t.int_repr().reshape(t.shape[0], -1).to(torch.int16)
    return out


# --------------------------------------------------------------------------------------
# The public verbs
# --------------------------------------------------------------------------------------

def _batches(x: torch.Tensor, bs: int = CALIB_BATCH) -> Iterable[torch.Tensor]:
    for i in range(0, len(x), bs):
        yield x[i:i + bs]


@torch.no_grad()
def calibrate(prepared: nn.Module, calib_x: torch.Tensor, progress: bool = False) -> None:
    """Run the calibration images through an observed model (observers record ranges)."""
    from tqdm.auto import tqdm
    prepared.eval()
    with _quiet():
        for x in tqdm(list(_batches(calib_x)), desc="calibrating", disable=not progress,
                      leave=False):
            prepared(x.float().cpu())


def convert(model: nn.Module, calib_x: torch.Tensor, observer: str = "minmax",
            weight_codes: Optional[bool] = None, progress: bool = False) -> nn.Module:
    """A float ResNet-18 converted to the int8 x86 engine (see the module docstring).

    ``calib_x``: normalised float images from the train split. ``observer``: ``"minmax"`` or
    ``"histogram"`` (activation ranges). ``weight_codes``: ``None`` runs the QTensor codes of
    every layer that carries ``qweight`` (others get int8 per-channel weights); ``True``
    additionally requires that every conv/linear carries one; ``False`` ignores them.
    Returns the converted model (eval, CPU); the input ``model`` is not changed.
    """
    if observer not in OBSERVERS:
        raise ValueError(f"observer={observer!r}: expected one of {OBSERVERS} (int8.convert)")
    if weight_codes not in (None, True, False):
        raise ValueError(f"weight_codes={weight_codes!r}: expected None, True or False "
                         "(int8.convert)")
    _check_calib(calib_x, "int8.convert")
    num_classes = check_resnet18(model)
    src = model
    for name, m in model.named_modules():
        if hasattr(m, "qweight") and isinstance(m, (nn.Conv2d, nn.Linear)):
            if weight_codes is False:
                if src is model:  # drop the codes on a copy
                    src = copy.deepcopy(model)
                del src.get_submodule(name).qweight
            else:
                _check_qweight(name, m)
    try:
        folded = quant.fold_batchnorm(src).cpu().float().eval()  # a copy
    except ValueError as e:
        raise ValueError(f"int8: {e}. The engine runs codes of BN-folded weights: quantize "
                         "the output of quant.fold_batchnorm(model)") from None
    codes = {n: m.qweight for n, m in folded.named_modules() if hasattr(m, "qweight")}
    if weight_codes is True:
        missing = [n for n, m in folded.named_modules()
                   if isinstance(m, (nn.Conv2d, nn.Linear)) and n not in codes]
        if missing:
            raise ValueError(f"int8: weight_codes=True but layer {missing[0]!r} carries no "
                             "qweight QTensor")
    prepared = _skeleton(num_classes, observer)
    state = {k: v for k, v in folded.state_dict().items()}
    result = prepared.load_state_dict(_to_skeleton_keys(state, prepared), strict=False)
    bad = [k for k in result.missing_keys if not _is_observer_key(k)]
    if bad or result.unexpected_keys:
        raise ValueError(f"int8: the state dict does not match ResNet-18: missing {bad[:3]}, "
                         f"unexpected {result.unexpected_keys[:3]}")
    calibrate(prepared, calib_x, progress)
    qmodel = _convert(prepared)
    _set_codes(qmodel, codes)
    return qmodel


def _check_calib(calib_x, where: str) -> None:
    if not torch.is_tensor(calib_x) or calib_x.dim() != 4 or len(calib_x) < 1:
        raise ValueError(f"calib_x: expected a float tensor [N, 3, H, W] with N >= 1, got "
                         f"{getattr(calib_x, 'shape', type(calib_x).__name__)} ({where})")


def _is_observer_key(k: str) -> bool:
    return "activation_post_process" in k


def _to_skeleton_keys(state: dict, prepared: nn.Module) -> dict:
    """Folded ResNet-18 keys -> keys of the fused skeleton (``conv1.weight`` becomes
    ``conv1.0.weight`` where conv1 is a fused ConvReLU2d)."""
    have = set(prepared.state_dict().keys())
    out = {}
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            continue
        if k in have:
            out[k] = v
        else:
            mod, _, leaf = k.rpartition(".")
            out[f"{mod}.0.{leaf}"] = v
    return out


def _num_classes_of(qmodel: nn.Module) -> int:
    fc = getattr(qmodel, "fc", None)
    n = getattr(fc, "out_features", None)
    if not isinstance(n, int):
        raise ValueError(f"int8.save: {type(qmodel).__name__} is not a converted int8 ResNet-18 "
                         "(no quantized 'fc'); pass the output of int8.convert")
    return n


def save(qmodel: nn.Module, path, extra_metadata: Optional[dict] = None) -> str:
    """Write a converted int8 ResNet-18 to ONE file (state dict + metadata, atomically)."""
    path = os.fspath(path)
    n = _num_classes_of(qmodel)
    state = qmodel.state_dict()  # keeps ``_metadata`` (module versions) that loading needs
    with _quiet():
        atomic.torch_save({"format": FORMAT, "version": FORMAT_VERSION, "arch": "resnet18",
                           "num_classes": n, "engine": ENGINE, "state_dict": state,
                           "extra": extra_metadata or {}}, path)
    return path


def load(path) -> nn.Module:
    """The int8 model saved by ``save`` (eval, CPU), outputs identical to the saved one."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"int8.load: no such file {path!r}")
    try:
        with _quiet():  # quantized tensors are rebuilt through the deprecated TypedStorage
            ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"int8.load: {path!r} is not readable as an int8 export ({e})") from e
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise ValueError(f"int8.load: {path!r} is not a {FORMAT} file (written by int8.save?)")
    if ck.get("version") != FORMAT_VERSION:
        raise ValueError(f"int8.load: {path!r} has format version {ck.get('version')!r}; this "
                         f"qlib reads version {FORMAT_VERSION}")
    qmodel = _convert(_skeleton(int(ck["num_classes"])))
    with _quiet():
        qmodel.load_state_dict(ck["state_dict"], strict=True)
    return qmodel.eval()


def file_size_mb(path) -> float:
    return os.path.getsize(path) / 1e6


# --------------------------------------------------------------------------------------
# Helpers for int8 QAT (qat.py): torch's fused conv-BN-ReLU QAT modules and fake quant
# --------------------------------------------------------------------------------------

def prepare_qat(model_fp: nn.Module, calib_x: Optional[torch.Tensor] = None,
                observer: str = "histogram") -> nn.Module:
    """A trainable fake-quant copy: the quantizable ResNet-18 loaded with ``model_fp``'s
    weights (BN kept), conv-BN-ReLU fused for QAT.

    ``calib_x=None``: torch's default x86 QAT qconfig — activation ranges are moving averages
    of what the observers see during training (the standard recipe). With ``calib_x``: the
    activation fake quantizers hold ``convert``'s PTQ observer (``observer``), calibrated exactly
    as ``convert`` calibrates — float activations (fake quantization off), BN running
    statistics, the same batches — and then switched off, so the model starts as the int8 PTQ
    model and its ranges stay fixed. Its BN statistics are frozen too (``freeze_bn_stats``).
    """
    num_classes = check_resnet18(model_fp)
    if any(isinstance(m, nn.Identity) for m in model_fp.modules()):
        raise ValueError("int8.prepare_qat: expects the float model with its BatchNorms "
                         "(not a BN-folded copy)")
    if calib_x is not None:
        _check_calib(calib_x, "int8.prepare_qat")
        if observer not in OBSERVERS:
            raise ValueError(f"observer={observer!r}: expected one of {OBSERVERS} (int8.prepare_qat)")
    set_engine()
    q = quantizable_resnet18(num_classes)
    q.load_state_dict(model_fp.state_dict())
    q.train()
    tq = _tq()
    with _quiet():
        q.fuse_model(is_qat=True)
        default = tq.get_default_qat_qconfig(ENGINE)
        if calib_x is None:
            q.qconfig = default
        else:
            ptq_act = qconfig(observer).activation
            q.qconfig = tq.QConfig(activation=tq.FakeQuantize.with_args(observer=ptq_act),
                                   weight=default.weight)
        tq.prepare_qat(q, inplace=True)
    if calib_x is not None:
        freeze_bn_stats(q)
        q.apply(tq.disable_fake_quant)
        observers(q, True)
        calibrate(q, calib_x)
        observers(q, False)
        q.apply(tq.enable_fake_quant)
        q.train()
    return q


def observers(model: nn.Module, enabled: bool) -> None:
    """Enable/disable the observers (range tracking) of a QAT model's fake quantizers."""
    tq = _tq()
    with _quiet():
        model.apply(tq.enable_observer if enabled else tq.disable_observer)


def freeze_bn_stats(model: nn.Module) -> None:
    """Freeze the BN running statistics of the fused QAT conv-BN modules."""
    with _quiet():
        import torch.ao.nn.intrinsic.qat as nniqat
        model.apply(nniqat.freeze_bn_stats)


def convert_qat(prepared: nn.Module) -> nn.Module:
    """The int8 engine model of a QAT-trained fake-quant model (eval, CPU)."""
    return _convert(copy.deepcopy(prepared).cpu())
