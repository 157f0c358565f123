"""qlib.smoothquant: smoothing is an equivalence transform that flattens activation outliers;
the settings and the calibration data are checked; the fake-quant simulation."""
import numpy as np
import pytest
import torch

from qlib import calib as qcalib, fold, smoothquant as sq
from qlib.smoothquant import SmoothSettings
from tiny import random_resnet, rel_err, x_batch

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: 2 shared cores, threads only add contention at these sizes


OUTLIERS = [3, 17, 40]


def outlier_resnet():
    """Outlier channels injected in the input of layer1.0.conv2 (through its producer bn1)."""
    m = random_resnet()
    bn = m.layer1[0].bn1
    with torch.no_grad():
        bn.weight[OUTLIERS] *= 30
        bn.bias[OUTLIERS] = bn.bias[OUTLIERS].abs() * 30
    return m


@pytest.mark.parametrize("mode", ["bn", "shared"])
def test_smoothing_leaves_float_outputs_unchanged(mode):
    m, x = random_resnet(), x_batch()
    calib = x_batch(seed=5)
    with torch.no_grad():
        ref = m(x)
    for alpha in (0.0, 0.5, 1.0):
        sc = sq.search(m, calib, SmoothSettings(alpha=alpha, mode=mode))
        assert set(sc.scales) == {g.key for g in fold.scalable_layers(m, mode)}
        with torch.no_grad():
            assert rel_err(sq.apply(m, sc)(x), ref) <= 1e-4
    # alpha per group (as search_alpha(per_layer=True) returns it)
    per = {g.key: 0.1 * i % 1.0 for i, g in enumerate(fold.scalable_layers(m, mode))}
    sc = sq.search(m, calib, SmoothSettings(alpha=per, mode=mode))
    assert sc.alpha == per
    with torch.no_grad():
        assert rel_err(sq.apply(m, sc)(x), ref) <= 1e-4


def test_scales_follow_the_formula():
    m, calib = random_resnet(), x_batch(seed=5)
    sc = sq.search(m, calib, SmoothSettings(alpha=0.3, mode="shared"))
    cons = fold.ALL_GROUPS["stream2"].consumers  # three points of stage 2's residual stream
    ins = qcalib.layer_inputs(m, calib, cons)
    act = torch.stack([ins[c].abs().amax(dim=(0, 2, 3)) for c in cons]).amax(0)
    wmax = torch.stack([fold.weight_absmax_in(m.get_submodule(c)) for c in cons]).amax(0)
    expect = torch.where(act > 0, (act.clamp(min=1e-5) ** 0.3 / wmax ** 0.7).clamp(min=1e-5), 1.0)
    assert torch.allclose(sc.scales["stream2"], expect, rtol=1e-5)
    assert torch.allclose(sc.act_max_after["stream2"], act / expect, rtol=1e-5)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), "0.5", True])
def test_alpha_out_of_range(alpha):
    with pytest.raises(ValueError, match="alpha"):
        SmoothSettings(alpha=alpha)
    with pytest.raises(ValueError, match="alpha"):
        SmoothSettings(alpha={"layer1.0.conv2": alpha})


def test_bad_settings_and_grid():
    m, calib = random_resnet(), x_batch()
    with pytest.raises(ValueError, match="mode='res'"):
        SmoothSettings(mode="res")
    with pytest.raises(ValueError, match="1.2"):
        sq.search_alpha(m, calib, grid=[0.5, 1.2])
    with pytest.raises(ValueError, match="a_bits=9"):
        sq.fake_quant_model(m, calib, 8, 9)
    with pytest.raises(ValueError, match="observer='p99'"):
        sq.fake_quant_model(m, calib, 8, 8, observer="p99")


@pytest.mark.parametrize("calib", [None, torch.empty(0, 3, 32, 32)])
def test_no_calibration_data(calib):
    m = random_resnet()
    for call in (lambda: sq.search(m, calib), lambda: sq.fake_quant_model(m, calib, 8, 8),
                 lambda: sq.search_alpha(m, calib, grid=[0.5])):
        with pytest.raises(ValueError, match="calib_x=.*train split"):
            call()


def test_smoothing_flattens_injected_outliers():
    m, calib = outlier_resnet(), x_batch(seed=5)
    sc = sq.search(m, calib, SmoothSettings(alpha=0.5))
    key = "layer1.0.conv2"
    before, after = sc.ratio(key, after=False), sc.ratio(key)
    assert before > 10 and after < before / 3
    stats = qcalib.input_stats(m, calib)
    ratios = sq.outlier_ratios(stats, sc)
    assert ratios[key] == pytest.approx(after)
    assert sq.outlier_ratios(stats)[key] == pytest.approx(before)
    # the measured inputs of the smoothed model agree
    smoothed = qcalib.input_stats(sq.apply(m, sc), calib)
    assert sq.outlier_ratios(smoothed)[key] == pytest.approx(after, rel=1e-4)
    top = sc.act_max_before[key].topk(3).indices
    assert set(top.tolist()) == set(OUTLIERS)
    # and it pays off in the fake-quantized layer error at 6-bit activations
    best, curve = sq.search_alpha(m, calib, grid=[0.25, 0.5, 0.75], w_bits=8, a_bits=6,
                                  per_layer=True)
    assert set(best) == {g.key for g in fold.scalable_layers(m, "bn")}
    assert min(curve["error"][key]) < curve["unsmoothed"][key]


def test_fake_quant_model():
    m, calib, x = random_resnet(), x_batch(seed=5), x_batch()
    fq = sq.fake_quant_model(m, calib, w_bits=8, a_bits=8)
    conv = fq.get_submodule("layer1.0.conv2")
    assert conv.qweight.bits == 8 and conv.qweight.scale.shape == (64, 1)
    assert torch.equal(conv.weight, conv.qweight.dequantize().reshape(conv.weight.shape))
    p = conv.input_quant
    assert p["zero"] == 0 and p["lo"] == 0 and p["qmax"] == 255  # post-ReLU: unsigned, zero 0
    assert fq.get_submodule("conv1").input_quant["zero"] > 0      # the image is signed
    assert not hasattr(m.get_submodule("layer1.0.conv2"), "qweight")  # input model untouched
    with torch.no_grad():
        ref, out8 = m(x), fq(x)
        out4 = sq.fake_quant_model(m, calib, w_bits=8, a_bits=4)(x)
        outp = sq.fake_quant_model(m, calib, 8, 4, observer="percentile", percentile=99.0)(x)
        wonly = sq.fake_quant_model(m, calib, w_bits=8, a_bits=None)(x)
    assert rel_err(out8, ref) < rel_err(out4, ref)
    assert rel_err(wonly, ref) < 0.05 and not torch.equal(out4, outp)


def test_input_quant_levels():
    m, calib = random_resnet(), x_batch(seed=5)
    fq = sq.fake_quant_model(m, calib, w_bits=None, a_bits=3)
    got = []
    conv = fq.get_submodule("layer2.0.conv2")
    conv.register_forward_hook(lambda mod, a, out: got.append(a[0]))  # a[0]: after pre-hooks
    with torch.no_grad():
        fq(calib)
    assert torch.unique(got[0]).numel() <= 8


def test_search_alpha_global_curve():
    m, calib = outlier_resnet(), x_batch(seed=5)
    grid = [0.0, 0.5, 1.0]
    best, curve = sq.search_alpha(m, calib, grid=grid, w_bits=8, a_bits=6)
    assert best in grid and curve["alpha"] == grid and len(curve["error"]) == 3
    assert curve["error"][grid.index(best)] == min(curve["error"])
    assert np.isfinite(curve["unsmoothed"])
