"""qlib.gptq: GPTQ per layer (error feedback, dead columns, act-order, groups) and over a whole
ResNet-18 (sequential calibration, report, export)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qlib import calib, export, gptq, quant
from qlib.gptq import GPTQ, GPTQSettings
from qlib.quant import QuantSettings
from tiny import random_resnet

NUM_CLASSES = 29
KEEP = ("conv1", "fc")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def correlated_images(n, c, size, seed=0):
    """Conv inputs like a CNN's: few latent factors mixed into c channels, spatially smooth,
    post-ReLU (non-negative, strongly correlated columns after unfolding)."""
    g = _gen(seed)
    z = torch.randn(n, 4, size, size, generator=g)
    z = F.avg_pool2d(z, 3, stride=1, padding=1)
    mix = torch.randn(c, 4, 1, 1, generator=g)
    return torch.relu(F.conv2d(z, mix) + 0.1 * torch.randn(n, c, size, size, generator=g))


def run_gptq(layer, x, s, batch=16, **kw):
    """GPTQ on a copy of ``layer`` with inputs ``x``: (GPTQ object, QTensor, quantized layer)."""
    layer = copy.deepcopy(layer)
    g = GPTQ(layer)
    for b in x.split(batch):
        g.add_batch(b)
    qt = g.fasterquant(s, **kw)
    return g, qt, layer


def out_error(layer, w_hat, x):
    """||W X - W_hat X||^2 / ||W X||^2 computed directly from the layer outputs."""
    w, w_hat = layer.weight.detach(), w_hat.detach()
    y, yq = gptq._layer_out(layer, x, w), gptq._layer_out(layer, x, w_hat)
    return float((y - yq).double().pow(2).sum() / y.double().pow(2).sum())


def rtn_weight(layer, s):
    return quant.quantize(layer.weight.detach(), s).dequantize()


# --------------------------------------------------------------------------------------
# One layer
# --------------------------------------------------------------------------------------

def _cases():
    torch.manual_seed(0)
    linear = nn.Linear(96, 24, bias=False)
    x_lin = torch.randn(256, 96, generator=_gen(1)) @ torch.randn(96, 96, generator=_gen(2)) * 0.3
    conv = nn.Conv2d(8, 16, 3, padding=1, stride=2)
    return {"random-linear": (linear, x_lin), "correlated-conv": (conv, correlated_images(32, 8, 12))}


CASES = _cases()


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("s,kw", [
    (QuantSettings(bits=2), {}),
    (QuantSettings(bits=3, symmetric=False), {}),
    (QuantSettings(bits=4, granularity="tensor"), {}),
    (QuantSettings(bits=4, range="mse"), {"act_order": True}),
    (QuantSettings(bits=3, granularity="group", group_size=24), {}),
    (QuantSettings(bits=3, granularity="group", group_size=24, symmetric=False),
     {"act_order": True, "static_groups": True, "blocksize": 32}),
])
def test_gptq_not_worse_than_rtn_on_calibration_inputs(case, s, kw):
    layer, x = CASES[case]
    g, qt, q = run_gptq(layer, x, s, **kw)
    w_rtn = rtn_weight(layer, s)
    e_gptq, e_rtn = g.errors(q.weight, w_rtn)
    assert e_gptq == pytest.approx(out_error(layer, q.weight, x), rel=1e-3)  # H-based == direct
    assert e_rtn == pytest.approx(out_error(layer, w_rtn, x), rel=1e-3)
    assert e_gptq <= e_rtn
    lo, hi = quant.qrange(s.bits, s.symmetric)
    assert int(qt.codes.min()) >= lo and int(qt.codes.max()) <= hi
    assert torch.equal(q.weight, qt.dequantize()) and q.qweight is qt
    assert torch.equal(q.weight.detach().reshape(qt.codes.shape),
                       quant.dequantize_codes(qt.codes, qt.scale, qt.zero))


@pytest.mark.parametrize("case", list(CASES))
def test_8_bits_matches_rtn_closely(case):
    layer, x = CASES[case]
    s = QuantSettings(bits=8)
    g, qt, q = run_gptq(layer, x, s)
    e_gptq, e_rtn = g.errors(q.weight, rtn_weight(layer, s))
    assert e_gptq <= e_rtn < 1e-4
    step = float(qt.scale.max())
    assert float((q.weight - layer.weight).detach().abs().max()) < 4 * step  # a few steps


def test_dead_columns_give_no_nan():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    x = correlated_images(8, 4, 6)
    x[:, 1] = 0                                # input channel 1 never fires: 9 dead columns
    g, qt, q = run_gptq(conv, x, QuantSettings(bits=3))
    assert torch.isfinite(q.weight).all() and int((torch.diag(g.H) == 0).sum()) == 9
    assert bool((q.weight[:, 1] == 0).all())   # dead columns are set to zero (reference)
    lin = nn.Linear(5, 3)
    _, qt0, q0 = run_gptq(lin, torch.zeros(4, 5), QuantSettings(bits=2))  # every column dead
    assert torch.isfinite(q0.weight).all() and bool((q0.weight == 0).all())


def test_act_order_static_groups_store_scales_in_storage_order():
    torch.manual_seed(3)
    lin = nn.Linear(256, 12, bias=False)
    x = torch.randn(128, 256, generator=_gen(4)) * torch.linspace(0.1, 3, 256).flip(0)[
        torch.randperm(256, generator=_gen(5))]      # channel scales in shuffled order
    s = QuantSettings(bits=3, granularity="group", group_size=64, symmetric=False)
    g, qt, q = run_gptq(lin, x, s, act_order=True, static_groups=True, blocksize=48)
    assert qt.scale.shape == (12, 4) and qt.group_size == 64
    assert torch.equal(q.weight, quant.dequantize_codes(qt.codes, qt.scale, qt.zero))
    for k in range(4):
        cols = lin.weight.detach()[:, 64 * k:64 * (k + 1)]
        sc, z = quant.find_params(cols, s)
        assert torch.equal(qt.scale[:, k:k + 1], sc) and torch.equal(qt.zero[:, k:k + 1], z)
    assert g.errors(q.weight, rtn_weight(lin, s))[0] <= g.errors(rtn_weight(lin, s))[0]


def test_dynamic_groups_use_updated_weights():
    layer, x = CASES["correlated-conv"]
    s = QuantSettings(bits=2, granularity="group", group_size=24)
    _, qt, q = run_gptq(layer, x, s, blocksize=40)   # group boundaries inside blocks
    w = quant.weight_view(layer.weight.detach())
    assert torch.equal(qt.scale[:, :1], quant.find_params(w[:, :24], s)[0])  # nothing updated yet
    later = torch.stack([quant.find_params(w[:, 24 * k:24 * (k + 1)], s)[0] for k in range(1, 3)])
    assert not torch.equal(qt.scale[:, 1:3].T.unsqueeze(-1), later)  # updated before grouping


def test_blocksize_does_not_change_the_result():
    layer, x = CASES["correlated-conv"]
    s = QuantSettings(bits=3)
    runs = [run_gptq(layer, x, s, blocksize=b) for b in (1, 7, 128)]
    errs = [g.errors(q.weight)[0] for g, _, q in runs]
    assert max(errs) == pytest.approx(min(errs), rel=1e-3)
    for _, qt, _ in runs[1:]:
        assert (qt.codes == runs[0][1].codes).float().mean() > 0.99


def test_layer_checks():
    with pytest.raises(ValueError, match="groups=2"):
        GPTQ(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match="BatchNorm2d"):
        GPTQ(nn.BatchNorm2d(3))
    g = GPTQ(nn.Linear(16, 4))
    g.add_batch(torch.randn(4, 16))                    # rank 4 < 16 columns
    with pytest.raises(ValueError, match="percdamp=0"):
        g.fasterquant(QuantSettings(bits=4), percdamp=0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(percdamp=-0.01), "percdamp=-0.01"),
    (dict(blocksize=0), "blocksize=0"),
    (dict(calib_size=0), "calib_size=0"),
    (dict(act_order="yes"), "act_order='yes'"),
    (dict(keep_8bit="fc"), "keep_8bit='fc'"),
    (dict(quant=QuantSettings(granularity="group"), act_order=True), "static_groups"),
    (dict(quant=4), "quant=4"),
])
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GPTQSettings(**kwargs)


@pytest.mark.parametrize("bits", [1, 9])
def test_bad_bits(bits):
    with pytest.raises(ValueError, match=f"bits={bits}"):
        GPTQSettings(quant=QuantSettings(bits=bits))


# --------------------------------------------------------------------------------------
# A small sequential model (the generic path: the whole model re-run per layer)
# --------------------------------------------------------------------------------------

def small_model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2),
                         nn.ReLU(), nn.Flatten(), nn.Linear(8 * 7 * 7, 5)).eval()


@pytest.mark.parametrize("sequential", [True, False])
def test_sequential_calibration_on_the_partially_quantized_model(sequential):
    m = small_model()
    x = torch.randn(24, 3, 16, 16, generator=_gen(7))
    s = GPTQSettings(quant=QuantSettings(bits=2), sequential=sequential, calib_size=20)
    q, report = gptq.quantize_model(m, x, s, progress=False)
    assert [r["name"] for r in report] == ["0", "2", "5"] and report[0]["samples"] == 20
    src = q if sequential else m                 # whose inputs layer "2" and "5" were fitted on
    for name in ("2", "5"):
        xin = calib.layer_inputs(src, x[:20], [name])[name]
        _, qt, _ = run_gptq(dict(m.named_modules())[name], xin, s.quant, batch=64)
        assert torch.equal(qt.codes, dict(q.named_modules())[name].qweight.codes), name
    if not sequential:                           # calibration error == layer_errors on FP inputs
        errs = gptq.layer_errors(m, q, x[:20])
        for r in report:
            assert errs[r["name"]] == pytest.approx(r["gptq_error"], rel=1e-3)


def test_empty_calibration_set_and_bad_groups():
    m = small_model()
    with pytest.raises(ValueError, match="calib_x"):
        gptq.quantize_model(m, torch.zeros(0, 3, 16, 16), progress=False)
    bad = GPTQSettings(quant=QuantSettings(granularity="group", group_size=16))
    with pytest.raises(ValueError, match=r"group_size=16 .*'0'"):   # 27 columns
        gptq.quantize_model(m, torch.randn(2, 3, 16, 16), bad, progress=False)


# --------------------------------------------------------------------------------------
# ResNet-18 (units: stem, 8 blocks, head), quantized once for the module
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def base():
    return random_resnet(NUM_CLASSES, spread="narrow")


@pytest.fixture(scope="module")
def x():
    return torch.randn(8, 3, 32, 32, generator=_gen(1))


@pytest.fixture(scope="module")
def quantized(base, x):
    before = {k: v.clone() for k, v in base.state_dict().items()}
    s = GPTQSettings(quant=QuantSettings(bits=3), keep_8bit=KEEP, fold_bn=True)
    q, report = gptq.quantize_model(base, x, s, progress=False)
    for k, v in base.state_dict().items():
        assert torch.equal(v, before[k]), k       # the input model is unchanged
    assert all(not hasattr(m, "qweight") for m in base.modules())
    return q, report


def test_resnet_units_compose_to_the_forward(base, x):
    units = gptq._units(base, x[:2])
    assert len(units) == 10
    y = x
    with torch.no_grad():
        for u in units:
            y = u(y)
        assert torch.equal(y, base(x))


def test_resnet_every_layer_quantized_and_report(quantized):
    q, report = quantized
    names = calib.layer_names(q)
    assert [r["name"] for r in report] == names and len(names) == 21  # = the order they run
    mods = dict(q.named_modules())
    for r in report:
        qt = mods[r["name"]].qweight
        assert qt.bits == r["bits"] == (8 if r["name"] in KEEP else 3)
        assert torch.equal(mods[r["name"]].weight, qt.dequantize())
        lo, hi = quant.qrange(qt.bits, qt.symmetric)
        assert int(qt.codes.min()) >= lo and int(qt.codes.max()) <= hi
        assert r["samples"] == 8 and r["seconds"] >= 0
        assert 0 <= r["gptq_error"] <= r["rtn_error"], r
    assert isinstance(q.bn1, nn.Identity)


def test_resnet_layers_fitted_on_the_partially_quantized_model(base, quantized, x):
    q, _ = quantized
    folded = dict(quant.fold_batchnorm(base).named_modules())
    for name in ("layer1.0.conv2", "layer2.0.downsample.0", "fc"):
        xin = calib.layer_inputs(q, x, [name])[name]   # = inputs with every earlier layer quantized
        s = QuantSettings(bits=8 if name in KEEP else 3)
        _, qt, _ = run_gptq(folded[name], xin, s, batch=64)
        assert torch.equal(qt.codes, dict(q.named_modules())[name].qweight.codes), name


def test_resnet_layer_errors_calibration_vs_held_out(base, quantized, x):
    q, report = quantized
    calib_err = gptq.layer_errors(base, q, x)            # folds base (q has Identity BNs)
    assert calib_err["conv1"] == pytest.approx(report[0]["gptq_error"], rel=1e-3)
    held = gptq.layer_errors(base, q, torch.randn(8, 3, 32, 32, generator=_gen(9)))
    # layer4 sees 8 positions for up to 4608 columns (H has rank <= 8): GPTQ fits the
    # calibration inputs much better than any other inputs
    layer4 = [n for n in held if n.startswith("layer4")]
    assert sum(held[n] for n in layer4) > 2 * sum(calib_err[n] for n in layer4)


def test_resnet_export_roundtrip_bit_exact(quantized, x, tmp_path):
    q, _ = quantized
    r = export.load(export.save(q, tmp_path / "gptq.safetensors"))
    with torch.no_grad():
        assert torch.equal(r(x), q(x))


def test_resnet_group_size_must_divide(base, x):
    s = GPTQSettings(quant=QuantSettings(granularity="group", group_size=64))
    with pytest.raises(ValueError, match=r"group_size=64 .*'conv1'"):
        gptq.quantize_model(base, x, s, progress=False)
