"""Unit tests of qlib.int8: conversion of ResNet-18s to PyTorch's int8 x86 engine."""
import copy
import os
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision

from qlib import export, int8, quant
from qlib.models import resnet18
from qlib.quant import QuantSettings

NUM_CLASSES = 29
SIZE = 32

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _task(seed=0):
    """A 29-class task: smooth class prototypes + noise (held-out accuracy ~99%)."""
    g = torch.Generator().manual_seed(seed)
    protos = F.interpolate(torch.randn(NUM_CLASSES, 3, 4, 4, generator=g), size=SIZE,
                           mode="bilinear", align_corners=False)

    def batch(n):
        y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
        return protos[y] + 0.4 * torch.randn(n, 3, SIZE, SIZE, generator=g), y
    return batch


@pytest.fixture(scope="module")
def data():
    batch = _task()
    (xtr, ytr), (xte, yte) = batch(384), batch(256)
    return xtr, ytr, xte, yte


@pytest.fixture(scope="module")
def model(data):
    """A ResNet-18 that really classifies: random convs, BN statistics measured on the
    data, and a ridge-regression head fitted to the labels (cheap and deterministic)."""
    xtr, ytr, _, _ = data
    torch.manual_seed(0)
    m = resnet18(NUM_CLASSES)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = None  # cumulative average: the statistics of this data
    with torch.no_grad():
        m.train()(xtr)
        m.eval()
        feats = {}
        h = m.fc.register_forward_pre_hook(lambda mod, a: feats.setdefault("f", a[0]))
        m(xtr)
        h.remove()
        a = torch.cat([feats["f"], torch.ones(len(xtr), 1)], 1)
        y = F.one_hot(ytr, NUM_CLASSES).float() * 2 - 1
        w = torch.linalg.solve(a.T @ a + 100 * torch.eye(a.shape[1]), a.T @ y)
        m.fc.weight.copy_(w[:-1].T * 3)
        m.fc.bias.copy_(w[-1] * 3)
    return m.eval()


@pytest.fixture(scope="module")
def converted(model, data):
    before = copy.deepcopy(model.state_dict())
    q = int8.convert(model, data[0][:64], observer="minmax")
    for k, v in model.state_dict().items():  # the float model is not changed
        assert torch.equal(v, before[k]), k
    return q


def test_converted_model_agrees_with_float(model, converted, data):
    _, _, xte, yte = data
    with torch.no_grad():
        ref, out = model(xte), converted(xte)
    assert (ref.argmax(1) == yte).float().mean() > 0.95  # the check is meaningful
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.98
    # it really runs on the engine: quantized convs with per-channel int8 weights
    w = converted.layer1[0].conv1.weight()
    assert w.dtype == torch.qint8 and w.qscheme() in (torch.per_channel_affine,
                                                     torch.per_channel_symmetric)
    assert converted.layer1[0].add_relu.__class__.__name__ == "QFunctional"


def test_histogram_observer_and_no_warnings(model, data):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.ao's deprecation warnings are silenced
        q = int8.convert(model, data[0][:32], observer="histogram")
        with torch.no_grad():
            out = q(data[2])
    assert (out.argmax(1) == model(data[2]).argmax(1)).float().mean() >= 0.98


def test_save_load_identical_and_small(converted, data, tmp_path):
    path = tmp_path / "m.int8.pt"
    assert int8.save(converted, path) == str(path)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    size = os.path.getsize(path) / 1e6
    assert size <= 11.5, size
    loaded = int8.load(path)
    with torch.no_grad():
        assert torch.equal(loaded(data[2]), converted(data[2]))


def test_load_rejects_other_files(tmp_path):
    p = tmp_path / "x.pt"
    torch.save({"a": 1}, p)
    with pytest.raises(ValueError, match="not a qlib.int8 file"):
        int8.load(p)
    with pytest.raises(FileNotFoundError):
        int8.load(tmp_path / "missing.pt")


def test_matrix_units_names_the_best_int8_instructions():
    """AMX outranks AVX-512 VNNI (a Sapphire Rapids CPU has both), which outranks AVX-VNNI; a CPU
    with only AVX-512 multiply-adds has none; this machine's answer is one of the names."""
    assert int8.matrix_units(["avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8", "amx_bf16"]) == "AMX"
    assert int8.matrix_units(["avx2", "avx512f", "avx512_vnni", "avx512_bf16"]) == "AVX-512 VNNI"  # AMD Zen 4
    assert int8.matrix_units(["avx2", "avx_vnni"]) == "AVX-VNNI"
    assert int8.matrix_units(["avx2", "avx512f", "avx512bw"]) == "no VNNI"
    assert int8.matrix_units() in {"AMX", "AVX-512 VNNI", "AVX-VNNI", "no VNNI", "unknown"}


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_engine_weight_reproduces_codes(bits):
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(16, 8, 3, 3, generator=g) * torch.rand(16, 1, 1, 1, generator=g) * 3
    w[0, 0, 0, 0] = -10.0  # a value clipped to the extra negative code -2^(b-1)
    qt = quant.quantize(w, QuantSettings(bits=bits, range="mse"))
    assert int(qt.codes.min()) == -(2 ** (bits - 1))
    qw = int8.engine_weight(qt)
    assert torch.equal(qw.int_repr().reshape(16, -1).to(torch.int16), qt.codes)
    assert torch.equal(qw.dequantize(), qt.dequantize())


def test_w4_engine_runs_the_codes(model, data):
    folded = quant.fold_batchnorm(model)
    for _, m in folded.named_modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            export.attach(m, quant.quantize(m.weight, QuantSettings(bits=4)))
    q = int8.convert(folded, data[0][:64], weight_codes=True)
    codes = int8.weight_codes_of(q)
    layers = {n: m.qweight for n, m in folded.named_modules() if hasattr(m, "qweight")}
    assert len(layers) == 21 and set(layers) == set(codes)
    for name, qt in layers.items():
        assert torch.equal(codes[name], qt.codes), name
    with torch.no_grad():  # W4A8 engine vs the float W4 model: only activations differ
        ref, out = folded(data[2]), q(data[2])
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.95


def test_rejects_what_it_cannot_run(model, data):
    x = data[0][:8]
    with pytest.raises(ValueError, match="not a ResNet-18"):
        int8.convert(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()), x)
    with pytest.raises(ValueError, match="layer1.2"):
        int8.convert(torchvision.models.resnet34(num_classes=NUM_CLASSES), x)
    gelu = copy.deepcopy(model)
    gelu.layer2[1].relu = torch.nn.GELU()
    with pytest.raises(ValueError, match="layer2.1.relu.*GELU"):
        int8.convert(gelu, x)
    with pytest.raises(ValueError, match="observer='kl'"):
        int8.convert(model, x, observer="kl")
    unfolded = copy.deepcopy(model)  # codes of a conv that a BatchNorm still follows
    export.attach(unfolded.conv1, quant.quantize(unfolded.conv1.weight, QuantSettings(bits=4)))
    with pytest.raises(ValueError, match="fold"):
        int8.convert(unfolded, x)
    asym = quant.fold_batchnorm(model)
    export.attach(asym.fc, quant.quantize(asym.fc.weight, QuantSettings(bits=4, symmetric=False)))
    with pytest.raises(ValueError, match="asymmetric"):
        int8.convert(asym, x)
    with pytest.raises(ValueError, match="weight_codes=True"):
        int8.convert(quant.fold_batchnorm(model), x, weight_codes=True)
