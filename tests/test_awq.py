"""qlib.awq: the scales fold exactly, alpha=0 is RTN, the search and the clipping never do worse
than RTN on the layer outputs they measure, apply quantizes what search measured, the
seed paper's transform is not an equivalence, and the settings are checked."""
import math

import pytest
import torch

from qlib import awq, calib, export, gptq, quant, rtn
from qlib.awq import AWQSettings
from qlib.quant import QuantSettings
from tiny import random_resnet, rel_err, x_batch

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: 2 shared cores, threads only add contention at these sizes


def strong_channel_resnet():
    """``random_resnet()`` with a few strong input channels, as AWQ expects in trained models."""
    m = random_resnet()
    with torch.no_grad():
        m.layer1[0].bn1.weight[[1, 7, 30]] *= 8
        m.layer3[1].bn1.bias[[5, 9]] += 3
    return m


W3 = AWQSettings(quant=QuantSettings(bits=3), n_grid=10, n_clip=8)


@pytest.fixture(scope="module")
def model():
    return strong_channel_resnet()


@pytest.fixture(scope="module")
def results(model):
    calib = x_batch(seed=5)
    return {mode: awq.search(model, calib, AWQSettings(quant=W3.quant, n_grid=10, n_clip=8,
                                                       mode=mode))
            for mode in ("bn", "shared")}


@pytest.mark.parametrize("mode", ["bn", "shared"])
def test_folding_leaves_float_unchanged(model, results, mode):
    x = x_batch()
    with torch.no_grad():
        assert rel_err(awq.apply_scales(model, results[mode])(x), model(x)) <= 1e-4
    assert any(not torch.equal(s, torch.ones_like(s)) for s in results[mode].scales.values())


def test_alpha_zero_is_rtn_exactly(model):
    q = QuantSettings(bits=4)
    res = awq.search(model, x_batch(seed=5), AWQSettings(quant=q, n_grid=1, clip=False))
    assert res.alphas == [0.0] and all(a == 0.0 for a in res.alpha.values())
    assert all(torch.equal(s, torch.ones_like(s)) for s in res.scales.values())
    qm, rm = awq.apply(model, res), rtn.quantize_model(model, q)
    for n in calib.layer_names(model):
        a, b = qm.get_submodule(n).qweight, rm.get_submodule(n).qweight
        assert torch.equal(a.codes, b.codes) and torch.equal(a.scale, b.scale), n
        assert torch.equal(a.codes, quant.quantize(model.get_submodule(n).weight, q).codes)
    assert res.final_error == res.scaled_error == res.rtn_error


def test_chosen_alpha_never_worse_than_rtn(results):
    r = results["bn"]
    assert r.alphas[0] == 0.0 and len(r.alphas) == 10 and max(r.alphas) < 1
    for key, g in r.groups.items():
        i = r.alphas.index(r.alpha[key])
        assert r.errors[key][i] <= r.errors[key][0] == r.rtn_error[key]  # one layer per group
        assert r.layer_errors[key][i] <= r.layer_errors[key][0]
    assert any(a > 0 for a in r.alpha.values())  # the outlier channels are protected
    rs = results["shared"]
    for key in rs.groups:
        i = rs.alphas.index(rs.alpha[key])
        assert rs.errors[key][i] <= rs.errors[key][0]
        rtn_sum = sum(rs.rtn_error[c] for c in rs.groups[key].consumers)
        assert math.isclose(rs.errors[key][0], rtn_sum, rel_tol=1e-9)


@pytest.mark.parametrize("mode", ["bn", "shared"])
def test_clipping_never_increases_error(model, results, mode):
    r = results[mode]
    assert set(r.final_error) == set(calib.layer_names(model))
    for n in r.layers:
        assert r.final_error[n] <= r.scaled_error[n], n
        assert r.clip_curve[n][0] == pytest.approx(r.scaled_error[n], rel=1e-9)
        assert float(r.clip_ratios[n].min()) >= 0.5 and float(r.clip_ratios[n].max()) <= 1.0
    assert any(float(r.clip_ratios[n].min()) < 1 for n in r.layers)
    if mode == "bn":  # per layer: AWQ (scaled + clipped) is never above RTN on calibration
        assert all(r.final_error[n] <= r.rtn_error[n] * (1 + 1e-9) for n in r.layers)


def test_apply_quantizes_what_search_measured(model, results):
    r = results["bn"]
    qm = awq.apply(model, r)
    calib = x_batch(seed=5)
    errs = awq.layer_errors(model, qm, calib, scaled_fp=awq.apply_scales(model, r))
    for n in r.layers:
        qt = qm.get_submodule(n).qweight
        assert qt.bits == 3 and qt.scale.shape == (qt.shape[0], 1)
        assert errs[n] == pytest.approx(r.final_error[n], rel=1e-4, abs=1e-9), n
    # RTN measured the same way gives rtn_error
    rerr = awq.layer_errors(model, rtn.quantize_model(model, W3.quant), calib)
    assert all(rerr[n] == pytest.approx(r.rtn_error[n], rel=1e-4) for n in r.layers)


def test_apply_exports_packed(model, results, tmp_path):
    qm = awq.apply(model, results["shared"])
    path = export.save(qm, tmp_path / "awq.safetensors")
    back = export.load(path)
    x = x_batch()
    with torch.no_grad():
        assert torch.equal(back(x), qm(x))


def test_group_granularity_and_weight_aware(model):
    q = QuantSettings(bits=4, granularity="group", group_size=32)
    with pytest.raises(ValueError, match="group_size=32"):  # the stem conv has 27 columns
        awq.search(model, x_batch(seed=5), AWQSettings(quant=q, n_grid=2, n_clip=2))
    q = QuantSettings(bits=4, granularity="group", group_size=1)
    res = awq.search(model, x_batch(seed=5), AWQSettings(quant=q, n_grid=3, n_clip=2,
                                                         weight_aware=True))
    for key in res.groups:
        chosen = res.errors[key][res.alphas.index(res.alpha[key])] if res.alpha[key] is not None \
            else res.rtn_error[key]
        assert chosen <= res.rtn_error[key]
    qm = awq.apply(model, res)
    assert qm.get_submodule("layer1.0.conv2").qweight.group_size == 1


def test_seed_paper_awq_changes_the_float_model(model):
    x, calib = x_batch(), x_batch(seed=5)
    act = awq.output_absmean(model, calib)
    assert act["layer1.0.conv2"].shape == (64,) and act["fc"].shape == (29,)
    with torch.no_grad():
        ref = model(x)
        for a, s in [(awq.SEED_ALPHAS[0], awq.SEED_S[0]), (0.5, 2.0)]:
            assert rel_err(awq.seed_paper_awq(model, act, a, s)(x), ref) > 0.05
    w = awq.seed_paper_awq(model, act, 0.3, 1.5).get_submodule("layer2.0.conv1")
    assert w.qweight.bits == 8 and w.qweight.scale.shape == (1, 1)  # per-tensor int8
    with pytest.raises(ValueError, match="one per output channel"):
        awq.seed_paper_awq(model, {**act, "fc": torch.ones(512)}, 0.3, 1.5)


@pytest.mark.parametrize("kw, match", [
    (dict(n_grid=0), "n_grid=0"), (dict(n_grid=2.5), "n_grid=2.5"), (dict(n_clip=0), "n_clip=0"),
    (dict(clip_min=0.0), "clip_min=0.0"), (dict(clip_min=1.5), "clip_min=1.5"),
    (dict(mode="tree"), "mode='tree'"), (dict(quant=4), "quant=4"),
    (dict(clip="yes"), "clip='yes'"),
])
def test_settings_out_of_range(kw, match):
    with pytest.raises(ValueError, match=match):
        AWQSettings(**kw)


@pytest.mark.parametrize("bits", [1, 9, 3.0])
def test_bits_out_of_range(bits):
    with pytest.raises(ValueError, match=f"bits={bits}"):
        AWQSettings(quant=QuantSettings(bits=bits))


def test_no_calibration_data(model):
    with pytest.raises(ValueError, match="calib_x=.*train split"):
        awq.search(model, None, W3)
    with pytest.raises(ValueError, match="calib_x=.*train split"):
        awq.search(model, torch.empty(0, 3, 32, 32), W3)


def test_awq_then_gptq(model, results, monkeypatch):
    """The hook hands GPTQ the AWQ-scaled float model (GPTQ itself: tests/test_gptq.py)."""
    seen = {}

    def fake_gptq(m, x, settings, **kw):
        seen.update(model=m, x=x, settings=settings, kw=kw)
        return m, []

    monkeypatch.setattr(gptq, "quantize_model", fake_gptq)
    gs = gptq.GPTQSettings(quant=QuantSettings(bits=3))
    calib_x = x_batch(seed=5)
    out, report = awq.awq_then_gptq(model, calib_x, results["bn"], gs, progress=False)
    scaled = awq.apply_scales(model, results["bn"])
    assert seen["settings"] is gs and seen["x"] is calib_x and seen["kw"] == {"progress": False}
    for n in calib.layer_names(model):
        assert torch.equal(out.get_submodule(n).weight, scaled.get_submodule(n).weight)
    monkeypatch.delattr(gptq, "quantize_model")
    with pytest.raises(NotImplementedError, match="gptq.quantize_model"):
        awq.awq_then_gptq(model, calib_x, results["bn"], gs)


def test_keep_8bit_and_groups(model):
    q = QuantSettings(bits=4, granularity="group", group_size=32)
    st = AWQSettings(quant=q, n_grid=3, n_clip=2, keep_8bit=("conv1", "fc"))
    res = awq.search(model, x_batch(seed=5), st)
    qm = awq.apply(model, res)
    assert qm.get_submodule("conv1").qweight.bits == 8 and qm.get_submodule("fc").qweight.bits == 8
    assert qm.get_submodule("layer2.0.conv2").qweight.group_size == 32
    with pytest.raises(ValueError, match="keep_8bit"):
        awq.apply(model, res, AWQSettings(quant=q))
    with pytest.raises(ValueError, match="keep_8bit='fc'"):
        AWQSettings(keep_8bit="fc")
