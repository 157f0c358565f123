"""Unit tests of qlib.export: real low-bit safetensors files of quantized ResNet-18s."""
import copy
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from qlib import export, quant
from qlib.quant import QuantSettings
from tiny import random_resnet

NUM_CLASSES = 29
SIZE_TARGETS_MB = {8: 11.5, 4: 6.0, 3: 4.6}


# On the shared 2-core machine torch's OpenMP threads spin against other processes (a ResNet-18
# forward: ~0.6 s CPU with 2 threads, ~0.02 s with 1).
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def base():
    return random_resnet(NUM_CLASSES, spread="narrow")


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def quantized(base):
    """quantized(settings, fold=False): ``base`` with every Conv2d/Linear quantized (cached
    for the module; do not modify the result). Group granularity falls back to per-channel
    where the group size does not divide the layer's columns (conv1's 3*7*7)."""
    cache = {}

    def get(settings, fold=False):
        if (settings, fold) not in cache:
            cache[settings, fold] = quantize_all(base, settings, fold)
        return cache[settings, fold]

    yield get
    cache.clear()


def quantize_all(model, settings, fold=False):
    model = quant.fold_batchnorm(model) if fold else copy.deepcopy(model)
    channel = QuantSettings(bits=settings.bits, symmetric=settings.symmetric)
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            cols = quant.weight_view(m.weight).shape[1]
            s = settings if settings.granularity != "group" or cols % settings.group_size == 0 \
                else channel
            export.attach(m, quant.quantize(m.weight, s))
    return model.eval()


def expected_data_bytes(model):
    """Packed codes + fp16 scales (+ uint8 zeros) + every other float tensor as-is."""
    n, skip = 0, set()
    for name, m in model.named_modules():
        if hasattr(m, "qweight"):
            n += m.qweight.nbytes()
            skip.add(name + ".weight")
    for k, v in model.state_dict().items():
        if k not in skip and not k.endswith("num_batches_tracked"):
            n += v.numel() * v.element_size()
    return n


def header_bytes(path):
    with open(path, "rb") as f:
        return int.from_bytes(f.read(8), "little")


CASES = {
    "w4_channel": (QuantSettings(bits=4), False),
    "w3_group64": (QuantSettings(bits=3, granularity="group", group_size=64), False),
    "w8_asym": (QuantSettings(bits=8, symmetric=False), False),
    "w4_bn_folded": (QuantSettings(bits=4), True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_save_load_bit_exact_and_size_arithmetic(case, quantized, x, tmp_path):
    settings, fold = CASES[case]
    qmodel = quantized(settings, fold)
    path = tmp_path / f"{case}.safetensors"
    assert export.save(qmodel, path, extra_metadata={"method": "rtn"}) == str(path)
    loaded = export.load(path)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x), qmodel(x))
    for (name, m), (_, m2) in zip(qmodel.named_modules(), loaded.named_modules()):
        assert type(m) is type(m2), name
        if hasattr(m, "qweight"):
            a, b = m.qweight, m2.qweight
            assert torch.equal(a.codes, b.codes) and torch.equal(a.scale, b.scale)
            assert torch.equal(a.zero, b.zero) and a.shape == b.shape
            assert (a.bits, a.symmetric, a.group_size) == (b.bits, b.symmetric, b.group_size)
    if fold:
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in loaded.modules())
    # the file is the 8-byte length, the JSON header, and exactly the expected data bytes
    size, header = os.path.getsize(path), header_bytes(path)
    assert size - 8 - header == expected_data_bytes(qmodel)
    n_tensors = sum(1 for k in qmodel.state_dict() if not k.endswith("num_batches_tracked"))
    n_tensors += sum(1 for m in qmodel.modules() if hasattr(m, "qweight")) * 2
    with open(path, "rb") as f:
        meta = json.loads(json.loads(f.read(8 + header)[8:])["__metadata__"]["qlib"])
    assert meta["arch"] == "resnet18" and meta["num_classes"] == NUM_CLASSES
    assert meta["extra"] == {"method": "rtn"} and len(meta["layers"]) == 21
    # header: the metadata (JSON-escaped) + < 110 bytes per tensor entry + 8-byte padding
    assert header <= 1.1 * len(json.dumps(meta)) + 110 * n_tensors + 8
    assert header < 40_000


def test_sizes_under_targets(quantized, tmp_path, capsys):
    sizes = {}
    for bits in (8, 4, 3, 2):
        qmodel = quantized(QuantSettings(bits=bits))
        path = tmp_path / f"w{bits}.safetensors"
        export.save(qmodel, path)
        sizes[bits] = export.file_size_mb(path)
        assert os.path.getsize(path) - 8 - header_bytes(path) == expected_data_bytes(qmodel)
    with capsys.disabled():
        print("\nResNet-18 file sizes (MB, per-channel, all conv+fc):",
              {f"W{b}": round(s, 3) for b, s in sizes.items()})
    for bits, target in SIZE_TARGETS_MB.items():
        assert sizes[bits] <= target, (bits, sizes[bits])
    assert sizes[2] < sizes[3] < sizes[4] < sizes[8]


def test_float_model_round_trips(base, x, tmp_path):
    path = tmp_path / "fp32.safetensors"
    export.save(base, path)
    assert 44.0 < export.file_size_mb(path) < 45.5
    with torch.no_grad():
        assert torch.equal(export.load(path)(x), base(x))


def _failing_save_file(tensors, filename, metadata=None):
    with open(filename, "wb") as f:
        f.write(b"partial")
    raise OSError("disk full (simulated)")


def test_atomic_write(quantized, tmp_path, monkeypatch):
    qmodel = quantized(QuantSettings(bits=4))
    path = tmp_path / "model.safetensors"
    monkeypatch.setattr(export, "save_file", _failing_save_file)
    with pytest.raises(OSError, match="simulated"):
        export.save(qmodel, path)
    assert os.listdir(tmp_path) == []  # no target, no temporary left behind
    monkeypatch.undo()
    export.save(qmodel, path)
    before = path.read_bytes()
    monkeypatch.setattr(export, "save_file", _failing_save_file)
    with pytest.raises(OSError):
        export.save(quantized(QuantSettings(bits=3)), path)
    assert os.listdir(tmp_path) == ["model.safetensors"] and path.read_bytes() == before


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        export.load(tmp_path / "missing.safetensors")
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(plain), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not a qlib export"):
        export.load(plain)
    text = tmp_path / "notes.safetensors"
    text.write_text("hello, not a tensor file")
    with pytest.raises(ValueError, match="not a qlib export"):
        export.load(text)


def test_save_rejects_stale_quantized_weight(quantized, tmp_path):
    qmodel = copy.deepcopy(quantized(QuantSettings(bits=4)))
    with torch.no_grad():
        qmodel.fc.weight.add_(1e-3)
    with pytest.raises(ValueError, match="fc.weight differs"):
        export.save(qmodel, tmp_path / "stale.safetensors")
    assert os.listdir(tmp_path) == []


def test_save_rejects_scales_that_fp16_cannot_hold(quantized, tmp_path):
    qmodel = copy.deepcopy(quantized(QuantSettings(bits=4)))
    qt = qmodel.fc.qweight
    qt.scale = qt.scale * (1 + 1e-4)  # no longer float16-representable
    export.attach(qmodel.fc, qt)
    with pytest.raises(ValueError, match="fc.qweight.scale is not float16-representable"):
        export.save(qmodel, tmp_path / "bad.safetensors")
