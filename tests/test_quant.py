"""Unit tests of qlib.quant: the uniform quantizer, STE fake quant, bit packing, BN folding."""
import math

import pytest
import torch
from hypothesis import given, settings as hsettings, strategies as st

from qlib import quant
from qlib.quant import QuantSettings
from tiny import random_resnet

HYP = hsettings(max_examples=40, deadline=None)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: threads only add contention at these sizes


def _divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def weight_and_settings(draw, ranges=("minmax", "mse")):
    c_out = draw(st.integers(1, 6))
    c_in = draw(st.integers(1, 6))
    k = draw(st.sampled_from([1, 3]))
    shape = (c_out, c_in, k, k) if draw(st.booleans()) else (c_out, c_in * k * k)
    cols = c_in * k * k
    gran = draw(st.sampled_from(quant.GRANULARITIES))
    s = QuantSettings(bits=draw(st.integers(2, 8)), symmetric=draw(st.booleans()),
                      granularity=gran, group_size=draw(st.sampled_from(_divisors(cols))),
                      range=draw(st.sampled_from(ranges)),
                      clip_ratio=draw(st.sampled_from([1.0, 1.0, 0.9, 0.5])))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31 - 1)))
    w = torch.randn(shape, generator=g) * draw(st.sampled_from([1e-3, 0.1, 3.0]))
    if draw(st.booleans()):  # heavy tails / outliers, as in real weights
        w = w * (1 + 10 * (torch.rand(shape, generator=g) > 0.95))
    return w, s


def _scale_shape(w, s):
    cols = quant.weight_view(w).shape[1]
    return {"tensor": (1, 1), "channel": (w.shape[0], 1),
            "group": (w.shape[0], cols // s.group_size)}[s.granularity]


@HYP
@given(weight_and_settings())
def test_codes_range_shapes_and_half_step_error(ws):
    w, s = ws
    qt = quant.quantize(w, s)
    qmin, qmax = quant.qrange(s.bits, s.symmetric)
    w2d = quant.weight_view(w)
    assert qt.codes.shape == w2d.shape and qt.shape == tuple(w.shape)
    assert int(qt.codes.min()) >= qmin and int(qt.codes.max()) <= qmax
    assert tuple(qt.scale.shape) == _scale_shape(w, s) == tuple(qt.zero.shape)
    assert qt.group_size == (s.group_size if s.granularity == "group" else None)
    assert torch.equal(qt.scale.half().float(), qt.scale) and bool((qt.scale > 0).all())
    assert torch.equal(qt.zero, qt.zero.round())
    if s.symmetric:
        assert bool((qt.zero == 0).all())
    else:
        assert bool(((qt.zero >= 0) & (qt.zero <= qmax)).all())
    # error at most half a step inside the clipping range; clipped values sit on an end level
    cols = w2d.shape[1]
    rep = cols // qt.scale.shape[1]
    sc = qt.scale.repeat_interleave(rep, dim=1).expand(w2d.shape)
    z = qt.zero.repeat_interleave(rep, dim=1).expand(w2d.shape)
    w_hat = qt.dequantize().reshape(w2d.shape)
    assert torch.equal(quant.dequantize(qt), qt.dequantize())
    real = w2d / sc + z
    inside = (real >= qmin - 0.5) & (real <= qmax + 0.5)
    err = (w_hat - w2d).abs()
    assert bool((err <= sc / 2 * (1 + 1e-5))[inside].all())
    ends = ((w_hat == (qmax - z) * sc) | (w_hat == (qmin - z) * sc))
    assert bool(ends[~inside].all())
    if s.range == "minmax":  # the range [min, max] * clip_ratio is inside
        x = w2d.reshape(1, -1) if s.granularity == "tensor" else (
            w2d if s.granularity == "channel" else w2d.reshape(-1, s.group_size))
        lo = x.amin(1, keepdim=True).clamp(max=0) * s.clip_ratio
        hi = x.amax(1, keepdim=True).clamp(min=0) * s.clip_ratio
        if s.symmetric:
            hi = torch.maximum(-lo, hi)
            lo = -hi
        in_clip = ((x >= lo) & (x <= hi)).reshape(w2d.shape)
        assert bool(inside[in_clip].all())
        if s.clip_ratio == 1.0:
            assert bool(inside.all())


def test_group_scale_shape_and_non_dividing_group():
    w = torch.randn(8, 16, 3, 3)
    qt = quant.quantize(w, QuantSettings(granularity="group", group_size=48))
    assert qt.scale.shape == (8, 3) and qt.codes.shape == (8, 144) and qt.group_size == 48
    with pytest.raises(ValueError, match=r"group_size=128.*144.*\(8, 16, 3, 3\)"):
        quant.quantize(w, QuantSettings(granularity="group", group_size=128))
    with pytest.raises(ValueError, match="group_size"):
        quant.fake_quant_weight(w, QuantSettings(granularity="group", group_size=7))


@pytest.mark.parametrize("kw, name", [
    (dict(bits=1), "bits"), (dict(bits=9), "bits"), (dict(bits=4.0), "bits"),
    (dict(group_size=0), "group_size"), (dict(granularity="row"), "granularity"),
    (dict(range="percentile"), "range"), (dict(clip_ratio=0), "clip_ratio"),
    (dict(clip_ratio=1.5), "clip_ratio"), (dict(symmetric="yes"), "symmetric"),
])
def test_bad_settings_raise_with_parameter_name(kw, name):
    with pytest.raises(ValueError, match=name) as e:
        QuantSettings(**kw)
    assert repr(next(iter(kw.values()))) in str(e.value)


def test_zero_rows_are_guarded():
    w = torch.zeros(3, 10)
    w[1] = torch.linspace(-1, 2, 10)
    for sym in (True, False):
        qt = quant.quantize(w, QuantSettings(bits=4, symmetric=sym))
        assert torch.isfinite(qt.scale).all() and (qt.scale > 0).all()
        assert torch.equal(qt.dequantize()[[0, 2]], torch.zeros(2, 10))


def test_symmetric_convention():
    """GPTQ's: step 2*amax/(2^b-1) (rounded up to fp16), +-amax half a step beyond +-qmax;
    the extra negative code -2^(b-1) only holds clipped values."""
    w = torch.linspace(-1, 1, 1001).reshape(1, -1)
    qt = quant.quantize(w, QuantSettings(bits=3, symmetric=True))
    assert 2 / 7 <= float(qt.scale) < 2 / 7 * (1 + 2 ** -10)
    assert qt.codes.unique().tolist() == list(range(-3, 4))
    clipped = quant.quantize(w, QuantSettings(bits=3, symmetric=True, clip_ratio=0.5))
    assert clipped.codes.unique().tolist() == list(range(-4, 4))


@HYP
@given(weight_and_settings(ranges=("minmax",)))
def test_fake_quant_equals_dequantized_codes_bit_for_bit(ws):
    w, s = ws
    assert torch.equal(quant.fake_quant_weight(w, s), quant.quantize(w, s).dequantize())


def test_column_by_column_quantization_matches_whole_matrix():
    """What GPTQ does: find_params once, then quantize_with one column at a time."""
    w2d = torch.randn(6, 32)
    for s in (QuantSettings(bits=3), QuantSettings(bits=4, symmetric=False, granularity="group",
                                                   group_size=8, range="mse")):
        qt = quant.quantize(w2d, s)
        scale, zero = quant.find_params(w2d, s)
        for j in range(32):
            gi = j // s.group_size if s.granularity == "group" else 0
            sj, zj = scale[:, gi:gi + 1], zero[:, gi:gi + 1]
            c = quant.quantize_with(w2d[:, j], sj, zj, s.bits, s.symmetric)
            assert c.shape == (6,) and torch.equal(c, qt.codes[:, j])
            assert torch.equal(quant.dequantize_codes(c, sj, zj), qt.dequantize()[:, j])
        gi = 1 if s.granularity == "group" else 0
        block = quant.quantize_with(w2d[:, 8:16], scale[:, gi:gi + 1], zero[:, gi:gi + 1],
                                    s.bits, s.symmetric)
        assert torch.equal(block, qt.codes[:, 8:16])


def _row_errors(w, s):
    w2d = quant.weight_view(w)
    err = (quant.quantize(w, s).dequantize().reshape(w2d.shape) - w2d).abs().pow(quant.MSE_NORM)
    if s.granularity == "tensor":
        return err.sum().reshape(1)
    if s.granularity == "group":
        err = err.reshape(-1, s.group_size)
    return err.sum(1)


@hsettings(max_examples=25, deadline=None)
@given(weight_and_settings(ranges=("minmax",)))
def test_mse_range_never_worse_than_minmax(ws):
    w, s = ws
    mse = QuantSettings(bits=s.bits, symmetric=s.symmetric, granularity=s.granularity,
                        group_size=s.group_size, range="mse", clip_ratio=s.clip_ratio)
    e_mm, e_mse = _row_errors(w, s), _row_errors(w, mse)
    assert bool((e_mse <= e_mm * (1 + 1e-6)).all())


def test_mse_range_clips_outliers():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 256, generator=g)
    w[:, 0] = 12.0  # one outlier column
    mm, ms = QuantSettings(bits=3), QuantSettings(bits=3, range="mse")
    assert float(_row_errors(w, ms).sum()) < 0.8 * float(_row_errors(w, mm).sum())
    assert bool((quant.quantize(w, ms).scale < quant.quantize(w, mm).scale).all())


@hsettings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 8), n=st.integers(0, 150).map(lambda k: 2 * k + 1), data=st.data())
def test_pack_unpack_round_trip(bits, n, data):
    codes = torch.tensor(data.draw(st.lists(st.integers(0, 2 ** bits - 1), min_size=n,
                                            max_size=n)), dtype=torch.int16)
    packed = quant.pack(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(n * bits / 8)
    out = quant.unpack(packed, bits, n)
    assert torch.equal(out, codes)


def test_three_bit_packing_is_dense_and_msb_first():
    packed = quant.pack(torch.arange(8), 3)  # 000 001 010 011 100 101 110 111
    assert packed.tolist() == [0b00000101, 0b00111001, 0b01110111]
    assert quant.pack(torch.zeros(1000, dtype=torch.int16), 3).numel() == 375
    assert quant.pack(torch.tensor([1, 2, 15]), 4).tolist() == [0x12, 0xF0]
    with pytest.raises(ValueError, match="unsigned"):
        quant.pack(torch.tensor([-1, 0]), 3)
    with pytest.raises(ValueError, match="bytes"):
        quant.unpack(torch.zeros(2, dtype=torch.uint8), 3, 8)


def test_packed_signed_codes_round_trip_through_offset():
    qt = quant.quantize(torch.randn(5, 7), QuantSettings(bits=3))
    u = quant.unpack(quant.pack(qt.codes - qt.qmin, 3), 3, qt.codes.numel())
    assert torch.equal((u + qt.qmin).reshape(5, 7), qt.codes)


def test_ste_gradient_one_inside_zero_outside():
    x = torch.tensor([0.3, -0.84, 0.74, 0.76, -0.86, 2.0, -5.0, 0.0], requires_grad=True)
    y = quant.fake_quant(x, torch.tensor(0.1), torch.tensor(0.0), -8, 7)
    y.sum().backward()
    assert x.grad.tolist() == [1, 1, 1, 0, 0, 0, 0, 1]
    assert torch.allclose(y.detach(), torch.tensor([0.3, -0.8, 0.7, 0.7, -0.8, 0.7, -0.8, 0.0]))
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    quant.fake_quant_weight(w, QuantSettings(bits=2, clip_ratio=0.5)).pow(2).sum().backward()
    assert w.grad is not None and bool((w.grad == 0).any()) and bool((w.grad != 0).any())


def test_fold_batchnorm_preserves_outputs():
    model = random_resnet()
    folded = quant.fold_batchnorm(model).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y, yf = model(x), folded(x)
    assert float((yf - y).norm() / y.norm()) <= 1e-5
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert all(m.bias is not None for m in folded.modules() if isinstance(m, torch.nn.Conv2d))
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 20  # untouched
