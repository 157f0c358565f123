"""qlib.rtn: round-to-nearest of every Conv2d/Linear, attached codes, 8-bit stem/head, BN folding."""
import pytest
import torch
from torch import nn

from qlib import calib, export, quant, rtn
from qlib.quant import QuantSettings
from tiny import random_resnet

NUM_CLASSES = 29


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def base():
    return random_resnet(NUM_CLASSES, spread="narrow")


@pytest.fixture(scope="module")
def x():
    return torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("keep", [(), ("conv1", "fc")])
def test_every_layer_quantized_and_input_unchanged(base, keep):
    before = _state(base)
    s = QuantSettings(bits=4)
    q = rtn.quantize_model(base, s, keep_8bit=keep)
    mods = dict(q.named_modules())
    for n in calib.layer_names(q):
        qt = mods[n].qweight
        assert qt.bits == (8 if n in keep else 4), n
        assert torch.equal(mods[n].weight, qt.dequantize()), n
        lo, hi = quant.qrange(qt.bits, qt.symmetric)
        assert int(qt.codes.min()) >= lo and int(qt.codes.max()) <= hi
        w = dict(base.named_modules())[n].weight
        assert torch.equal(qt.codes, quant.quantize(w, rtn.eight_bit(s) if n in keep else s).codes)
    assert all(not hasattr(m, "qweight") for m in base.modules())
    for k, v in base.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_w8_close_to_fp_and_w4_worse(base, x):
    with torch.no_grad():
        y = base(x)
        e8 = _rel(rtn.quantize_model(base, QuantSettings(bits=8))(x), y)
        e4 = _rel(rtn.quantize_model(base, QuantSettings(bits=4))(x), y)
    assert e8 < 0.02 and e4 > e8


def test_group_settings_and_keep_8bit(base):
    s = QuantSettings(bits=3, granularity="group", group_size=64, symmetric=False)
    with pytest.raises(ValueError, match=r"group_size=64 .*'conv1'"):
        rtn.quantize_model(base, s)
    q = rtn.quantize_model(base, s, keep_8bit=("conv1",))
    assert q.conv1.qweight.bits == 8 and q.conv1.qweight.group_size is None
    assert q.fc.qweight.group_size == 64 and q.fc.qweight.scale.shape == (NUM_CLASSES, 512 // 64)


def test_fold_bn(base, x):
    q = rtn.quantize_model(base, QuantSettings(bits=8), fold_bn=True)
    assert isinstance(q.bn1, nn.Identity) and isinstance(q.layer1[0].bn2, nn.Identity)
    folded = quant.fold_batchnorm(base)
    assert torch.equal(q.conv1.qweight.codes, quant.quantize(folded.conv1.weight,
                                                             QuantSettings(bits=8)).codes)
    with torch.no_grad():
        assert _rel(q(x), base(x)) < 0.02
    assert isinstance(base.bn1, nn.BatchNorm2d)


def test_export_roundtrip_bit_exact(base, x, tmp_path):
    q = rtn.quantize_model(base, QuantSettings(bits=3, symmetric=False), keep_8bit=("conv1", "fc"),
                           fold_bn=True)
    path = export.save(q, tmp_path / "rtn.safetensors")
    r = export.load(path)
    with torch.no_grad():
        assert torch.equal(r(x), q(x))
    assert torch.equal(r.layer3[1].conv2.qweight.codes, q.layer3[1].conv2.qweight.codes)


def test_bad_arguments(base):
    s = QuantSettings(bits=4)
    with pytest.raises(ValueError, match="keep_8bit"):
        rtn.quantize_model(base, s, keep_8bit=("conv9",))
    with pytest.raises(ValueError, match="keep_8bit"):
        rtn.quantize_model(base, s, keep_8bit="conv1")
    with pytest.raises(ValueError, match="settings"):
        rtn.quantize_model(base, 4)
    with pytest.raises(ValueError, match="fold_bn"):
        rtn.quantize_model(base, s, fold_bn="yes")
    for bits in (1, 9):
        with pytest.raises(ValueError, match=f"bits={bits}"):
            QuantSettings(bits=bits)
