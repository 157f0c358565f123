"""Unit tests of qlib.qat: the LSQ quantizer and its gradients, LSQ models, int8 QAT."""
import math
from dataclasses import replace
import warnings

import pytest
import torch

from qlib import export, int8, qat, quant
from qlib import data as qdata
from qlib.models import resnet18
from qlib.qat import QATSettings
from qlib.quant import QuantSettings

NUM_CLASSES = 5

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _split(n, seed):
    g = torch.Generator().manual_seed(seed)
    return qdata.Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                       torch.randint(0, NUM_CLASSES, (n,), generator=g),
                       [f"t{i // 4}" for i in range(n)], [str(i) for i in range(n)])


@pytest.fixture(scope="module")
def splits():
    return qdata.Splits(_split(32, 0), _split(16, 1), _split(16, 2),
                        [str(i) for i in range(NUM_CLASSES)], "random test images", "tracks")


@pytest.fixture(scope="module")
def fp():
    torch.manual_seed(0)
    m = resnet18(NUM_CLASSES)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
    return m.eval()


@pytest.fixture(scope="module")
def x(splits):
    return qdata.to_float(splits.test.images[:8])


FAST = dict(batch_size=16, max_steps=2, w_range="minmax")


# ---- the LSQ quantizer ----------------------------------------------------------------

def test_ste_passes_gradient_inside_the_clipping_range_only():
    step, qmin, qmax = 0.5, -2, 1  # 2-bit signed: levels -1.0 .. 0.5
    x = torch.tensor([-1.6, -1.25, -0.9, -0.2, 0.0, 0.3, 0.5, 0.74, 0.8, 3.0],
                     requires_grad=True)
    s = torch.tensor(step, requires_grad=True)
    y = qat.lsq_quant(x, s, qmin, qmax)
    assert torch.equal(y.detach(), torch.clamp(torch.round(x.detach() / step), qmin, qmax) * step)
    y.sum().backward()
    v = x.detach() / step
    inside = (v >= qmin) & (v <= qmax)
    assert torch.equal(x.grad, inside.float())
    assert inside.any() and (~inside).any() and inside[6]  # x = qmax * step is inside


def test_step_gradient_is_lsq_and_scaled():
    g = 0.25
    x = torch.tensor([-3.0, -0.7, -0.2, 0.1, 0.33, 0.9, 5.0])
    s = torch.tensor(0.4, requires_grad=True)
    qat.lsq_quant(x, s, -4, 3, g).sum().backward()
    v = x / 0.4
    expect = torch.where(v < -4, torch.tensor(-4.0),
                         torch.where(v > 3, torch.tensor(3.0), torch.round(v) - v))
    assert math.isclose(s.grad.item(), g * expect.sum().item(), rel_tol=1e-5, abs_tol=1e-6)


def test_steps_receive_gradients_and_stay_positive(fp, x):
    m = qat.lsq_model(fp, QATSettings(w_bits=4, a_bits=4, w_range="minmax", keep_8bit=("fc",)),
                      calib_x=x)
    lsq = [mod for mod in m.modules() if isinstance(mod, (qat.LSQConv2d, qat.LSQLinear))]
    assert len(lsq) == 21
    assert (m.fc.w_bits, m.fc.a_bits, m.conv1.w_bits, m.conv1.a_bits) == (8, 8, 4, 4)
    assert lsq[0].a_signed and not any(mod.a_signed for mod in lsq[1:])  # image vs ReLU inputs
    m.train()
    m(x).logsumexp(1).sum().backward()
    for mod in lsq:
        assert mod.w_log_step.grad is not None and mod.w_log_step.grad.abs().sum() > 0
        assert mod.a_log_step.grad is not None and mod.a_log_step.grad.abs() > 0
    opt = torch.optim.SGD([p for n, p in m.named_parameters() if n.endswith("step")], lr=1.0)
    for mod in lsq:  # an update that would drive every step to exp(-1000) = 0
        mod.w_log_step.grad = torch.full_like(mod.w_log_step, 1000.0)
        mod.a_log_step.grad = torch.full_like(mod.a_log_step, 1000.0)
    opt.step()
    qat.clamp_steps_(m)
    for mod in lsq:
        assert (mod.w_step >= qat.STEP_MIN * (1 - 1e-6)).all() and mod.a_step >= qat.STEP_MIN * (1 - 1e-6)


# ---- LSQ models -----------------------------------------------------------------------

def _rtn_w4(fp):
    """The BN-folded model with RTN W4 codes attached: an init model for LSQ."""
    init = quant.fold_batchnorm(fp)
    for _, mod in init.named_modules():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
            export.attach(mod, quant.quantize(mod.weight, QuantSettings(bits=4)))
    return init


def test_lsq_starts_from_the_init_solution_and_exports_bit_exact(fp, splits, x, tmp_path):
    init = _rtn_w4(fp)  # an RTN W4 solution as the init model
    s = QATSettings(epochs=1, w_bits=4, a_bits=None, **FAST)
    m0 = qat.lsq_model(fp, s, init_model=init)
    with torch.no_grad():
        assert torch.equal(m0(x), init(x))  # step 0 is the RTN solution
    m, hist = qat.lsq_train(fp, splits, s, init_model=init, progress=False)
    assert hist["epoch"] == [1] and hist["steps"] == [2]
    plain = qat.export_model(m)
    with torch.no_grad():
        assert torch.equal(plain(x), m(x))  # the learned codes x float16 steps, exactly
    path = export.save(plain, tmp_path / "lsq.safetensors")
    with torch.no_grad():
        assert torch.equal(export.load(path)(x), m(x))
    bad = quant.fold_batchnorm(fp)
    export.attach(bad.fc, quant.quantize(bad.fc.weight, QuantSettings(bits=3)))
    with pytest.raises(ValueError, match="3-bit"):
        qat.lsq_model(fp, s, init_model=bad)


def test_adam_moves_every_step_by_a_fraction_of_itself(fp, splits, x):
    """Steps are learned as logarithms: with Adam each step (a 4-bit activation step ~1e-1 or a
    weight step ~1e-3) changes by about ``step_lr`` *of itself* per update, whatever the scale
    of its gradient; a zero-ish step_lr keeps them where they started."""
    init = _rtn_w4(fp)

    def steps(m):
        mods = [mod for mod in m.modules() if isinstance(mod, (qat.LSQConv2d, qat.LSQLinear))]
        return torch.cat([torch.cat([mod.w_step.detach().reshape(-1), mod.a_step.detach().reshape(1)])
                          for mod in mods])

    moved = {}
    for step_lr in (1e-9, 1e-2):
        s = QATSettings(epochs=1, w_bits=4, a_bits=4, optimizer="adam", lr=1e-9, step_lr=step_lr, **FAST)
        before = steps(qat.lsq_model(fp, s, init_model=init, calib_x=x))
        m, _ = qat.lsq_train(fp, splits, s, init_model=init, calib_x=x, progress=False)
        rel = (steps(m) / before - 1).abs()
        moved[step_lr] = (rel.max().item(), (rel > 1e-3).float().mean().item())
        assert before.max() / before.min() > 10  # steps of very different sizes
    assert moved[1e-9][0] < 1e-6
    # two updates at 1e-2 and 0.5e-2 (cosine): most steps (not those of channels the batches
    # leave without gradient) moved by more than 0.1%, none by more than ~1.5% of itself
    assert moved[1e-2][1] > 0.5 and moved[1e-2][0] < 3e-2, moved


def test_lsq_w4a8_runs_on_the_int8_engine(fp, splits, x):
    s = QATSettings(epochs=1, w_bits=4, a_bits=8, distill=0.5, **FAST)
    m, _ = qat.lsq_train(fp, splits, s, calib_x=x, progress=False)
    steps = qat.act_steps(m)
    assert len(steps) == 21 and all(v[0] > 0 for v in steps.values())
    q = qat.to_int8(m, x, observer="minmax")
    codes = int8.weight_codes_of(q)
    for name, mod in m.named_modules():  # the engine runs the learned 4-bit codes
        if isinstance(mod, (qat.LSQConv2d, qat.LSQLinear)):
            assert torch.equal(codes[name], mod.qtensor().codes), name
    with torch.no_grad():
        assert q(x).shape == (8, NUM_CLASSES)


def test_mixup_distillation_is_seeded_and_moves_the_model(fp, splits, x):
    s = QATSettings(epochs=1, w_bits=4, a_bits=8, distill=1.0, mixup=0.4, **FAST)
    runs = [qat.lsq_train(fp, splits, s, calib_x=x, progress=False)[0] for _ in range(2)]
    start = qat.lsq_model(fp, s, calib_x=x)
    a, b, s0 = (r.state_dict() for r in (*runs, start))
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed, same blends, same model
    assert any(not torch.equal(a[k], s0[k]) for k in a)  # and it trained


def test_lsq_without_validation_trains_the_same_model_and_never_reads_val(fp, splits, x):
    import dataclasses
    s = QATSettings(epochs=2, w_bits=4, a_bits=8, distill=1.0, **FAST)
    m1, h1 = qat.lsq_train(fp, splits, s, calib_x=x, progress=False)
    m2, h2 = qat.lsq_train(fp, dataclasses.replace(splits, val=None), s, calib_x=x, progress=False, validate=False)
    a, b = m1.state_dict(), m2.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(0 <= v <= 1 for v in h1["val_acc"]) and len(h2["val_acc"]) == 2
    assert all(math.isnan(v) for v in h2["val_acc"])
    assert h1["train_loss"] == h2["train_loss"]


@pytest.mark.parametrize("learn", ["steps", "weights"])
def test_learn_moves_only_the_chosen_parameters(fp, splits, x, learn):
    """learn="weights": every step stays exactly at its start, the weights move. learn="steps":
    every weight and bias stays exactly on its start — on its grid point, where LSQ's gradient
    of a weight step, round(w/s) - w/s, is zero — so only the input steps move. Afterwards
    every parameter takes gradients again."""
    s = QATSettings(epochs=1, w_bits=4, a_bits=4, optimizer="adam", lr=1e-2, step_lr=1e-2, learn=learn,
                    distill=1.0, **FAST)
    start = qat.lsq_model(fp, s, init_model=_rtn_w4(fp), calib_x=x).state_dict()
    m, _ = qat.lsq_train(fp, splits, s, init_model=_rtn_w4(fp), calib_x=x, progress=False, validate=False)
    end = m.state_dict()
    learned = [k for k in start if (k.endswith("a_log_step") if learn == "steps" else k.endswith(("weight", "bias")))]
    assert len(learned) == 21 if learn == "steps" else len(learned) == 42
    assert all(torch.equal(start[k], end[k]) for k in start if k not in learned)  # frozen: bit for bit
    assert sum(not torch.equal(start[k], end[k]) for k in learned) > len(learned) / 2  # most moved
    assert all(p.requires_grad for p in m.parameters())


def test_learn_refuses_what_it_cannot_do(fp, splits):
    with pytest.raises(ValueError, match=r"learn='biases': expected one of \('all', 'weights', 'steps'\)"):
        QATSettings(learn="biases")
    with pytest.raises(ValueError, match="learn='steps': the model has no learned steps"):
        qat.train_int8(fp, splits, QATSettings(epochs=2, learn="steps"), progress=False)


def test_smoothed_ptq_is_the_ptq_of_the_smoothed_network(fp, x):
    """The smoothed PTQ at 8/8 bits keeps FP's outputs about as well as the unsmoothed one, it is
    the PTQ (GPTQ weights, calibrated steps) of the smoothed network, and one alpha per smoothed
    group is returned, each in [0, 1]. Mode "shared" (its groups include "bn"'s); the modes'
    smoothing itself is tested in test_smoothquant/test_fold."""
    from qlib import fold, smoothquant
    s = QATSettings(w_bits=8, a_bits=8, keep_8bit=("conv1", "fc"))
    for mode in ["shared"]:
        m, alphas = qat.smoothed_ptq(fp, s, x, mode=mode)
        assert set(alphas) == {g.key for g in fold.scalable_layers(fp, mode)}
        assert all(0 <= a <= 1 for a in alphas.values())
        smooth = smoothquant.apply(fp, smoothquant.search(fp, x, smoothquant.SmoothSettings(alpha=alphas, mode=mode)))
        again = qat.lsq_model(smooth, s, init_model=qat.gptq_init(smooth, 8, x), calib_x=x).state_dict()
        assert all(torch.equal(v, again[k]) for k, v in m.state_dict().items())  # the PTQ of the smoothed network
        with torch.no_grad():
            ref = quant.fold_batchnorm(fp)(x)
            plain = qat.lsq_model(fp, s, init_model=qat.gptq_init(fp, 8, x), calib_x=x)(x)
            err, err0 = ((m(x) - ref).norm() / ref.norm()).item(), ((plain - ref).norm() / ref.norm()).item()
        assert err < 0.05 and err < 2 * err0 + 1e-3, (mode, err, err0)
    with pytest.raises(ValueError, match="a_bits set"):
        qat.smoothed_ptq(fp, QATSettings(w_bits=4, a_bits=None), x)


# ---- int8 QAT -------------------------------------------------------------------------

def test_int8_qat_converts_and_runs(fp, splits, x, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.ao's warnings are silenced inside qlib
        q, hist = qat.train_int8(fp, splits, QATSettings(epochs=2, freeze_epochs=1, **FAST),
                                 progress=False)
        with torch.no_grad():
            out = q(x)
    assert out.shape == (8, NUM_CLASSES) and torch.isfinite(out).all()
    assert type(q.layer1[0].conv1).__module__.startswith("torch.ao.nn.intrinsic.quantized")
    assert set(hist) >= {"train_loss", "train_acc", "val_acc", "seconds"}
    assert len(hist["val_acc"]) == 2
    path = int8.save(q, tmp_path / "qat.pt")
    with torch.no_grad():
        assert torch.equal(int8.load(path)(x), out)


def test_observers_can_be_frozen(fp, x):
    m = int8.prepare_qat(fp)
    m.train()
    m(x)
    obs = m.layer1[0].conv1.activation_post_process
    before = (obs.activation_post_process.min_val.clone(), obs.activation_post_process.max_val.clone())
    int8.observers(m, False)
    m(x * 10)
    assert torch.equal(obs.activation_post_process.min_val, before[0])
    assert torch.equal(obs.activation_post_process.max_val, before[1])


@pytest.fixture(scope="module")
def calib_x(splits):
    return qdata.to_float(splits.train.images)


def _act_qparams(q):
    """(scale, zero_point) of every quantized module's output in an int8 engine model."""
    return {n: (float(m.scale), int(m.zero_point)) for n, m in q.named_modules()
            if hasattr(m, "scale") and hasattr(m, "zero_point") and not isinstance(m.scale, torch.Tensor)}


def test_int8_qat_from_ptq_starts_at_the_ptq_model(fp, calib_x):
    ptq = int8.convert(fp, calib_x, observer="histogram")
    start = int8.convert_qat(int8.prepare_qat(fp, calib_x=calib_x))
    a, b = _act_qparams(ptq), _act_qparams(start)
    assert len(a) > 20 and a.keys() == b.keys()
    for n in a:  # the same calibration: the same activation ranges
        assert b[n][1] == a[n][1] and b[n][0] == pytest.approx(a[n][0], rel=1e-5), n
    mods = dict(ptq.named_modules())
    for n, m in start.named_modules():  # the same weight codes, but for rounding ties: QAT folds
        if callable(getattr(m, "weight", None)):  # BN in float32, convert in float64
            wa, wb = mods[n].weight().int_repr().int(), m.weight().int_repr().int()
            assert (wa - wb).abs().max() <= 1 and (wa != wb).float().mean() < 5e-3, n


def test_int8_qat_from_ptq_keeps_its_ranges(fp, splits, calib_x):
    before = int8.prepare_qat(fp, calib_x=calib_x)
    q, _ = qat.train_int8(fp, splits, QATSettings(epochs=2, lr=1e-2, **FAST), progress=False, calib_x=calib_x)
    ref = int8.convert_qat(before)
    assert _act_qparams(q) == _act_qparams(ref)  # ranges fixed while the weights moved
    assert not torch.equal(q.layer1[0].conv1.weight().int_repr(), ref.layer1[0].conv1.weight().int_repr())


def test_int8_qat_from_ptq_bn_statistics_do_not_move(fp, splits, calib_x):
    m = int8.prepare_qat(fp, calib_x=calib_x)
    stats = {k: v.clone() for k, v in m.state_dict().items() if "running_" in k}
    assert len(stats) == 2 * 20  # running mean and variance of ResNet-18's 20 BatchNorms
    m.train()
    with torch.no_grad():
        m(qdata.to_float(splits.val.images) * 3)  # a training-mode pass on other images
    assert all(torch.equal(m.state_dict()[k], v) for k, v in stats.items())


def test_int8_qat_bad_calibration_images(fp, splits):
    with pytest.raises(ValueError, match=r"calib_x: expected a float tensor \[N, 3, H, W\].*int8.prepare_qat"):
        qat.train_int8(fp, splits, QATSettings(**FAST), progress=False, calib_x=torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="observer='mse'"):
        int8.prepare_qat(fp, calib_x=torch.zeros(2, 3, 32, 32), observer="mse")


# ---- settings -------------------------------------------------------------------------

@pytest.mark.parametrize("kw, name", [
    (dict(w_bits=1), "w_bits=1"), (dict(w_bits=9), "w_bits=9"), (dict(w_bits=4.0), "w_bits=4.0"),
    (dict(a_bits=0), "a_bits=0"), (dict(a_bits=16), "a_bits=16"), (dict(epochs=0), "epochs=0"),
    (dict(epochs=2.5), "epochs=2.5"), (dict(epochs=True), "epochs=True"),
    (dict(epochs=2, freeze_epochs=3), "freeze_epochs=3"), (dict(lr=0), "lr=0"),
    (dict(lr=-1e-3), "lr=-0.001"), (dict(batch_size=0), "batch_size=0"),
    (dict(max_steps=0), "max_steps=0"), (dict(distill=1.5), "distill=1.5"),
    (dict(mixup=-0.2), "mixup=-0.2"), (dict(optimizer="rmsprop"), "optimizer='rmsprop'"),
    (dict(step_lr=0.0), "step_lr=0.0"),
    (dict(w_range="l1"), "w_range='l1'"), (dict(keep_8bit="fc"), "keep_8bit='fc'"),
])
def test_bad_settings_raise(kw, name):
    with pytest.raises(ValueError, match=name.replace(".", r"\.").replace("(", r"\(")):
        QATSettings(**kw)


def test_qat_panel_needs_a_recipe(fp, splits):
    from qlib import widgets
    with pytest.raises(ValueError, match=r"settings=\{'lr': 1e-05\}: expected a qat.QATSettings"):
        widgets.qat_panel(fp, splits, torch.zeros(2, 3, 32, 32), {"lr": 1e-5})


def test_int8_qat_needs_8_bits(fp, splits):
    with pytest.raises(ValueError, match="w_bits=4"):
        qat.train_int8(fp, splits, QATSettings(w_bits=4), progress=False)
    with pytest.raises(ValueError, match=r"freeze_epochs=1 with epochs=1: .*expected freeze_epochs < epochs"):
        qat.train_int8(fp, splits, QATSettings(epochs=1), progress=False)  # ranges never observed
    with pytest.raises(ValueError, match="calib_x"):
        qat.lsq_model(fp, QATSettings(w_bits=4, a_bits=4))
    with pytest.raises(ValueError, match="'head'"):
        qat.lsq_model(fp, QATSettings(w_bits=4, a_bits=None, keep_8bit=("head",)))


# ---- the fine-tune measured along the way (lsq_curve, python -m qlib.qat) ----------------

def test_lsq_curve_measures_without_changing_the_training(fp, splits, x):
    from qlib import measure
    ref = measure.Reference(fp, splits)
    s = QATSettings(epochs=2, w_bits=4, a_bits=4, optimizer="adam", lr=1e-3, step_lr=1e-2,
                    distill=1.0, mixup=0.4, **{**FAST, "max_steps": 4})
    seen = []
    m, rows = qat.lsq_curve(fp, splits, s, ref, every=3, calib_x=x, progress=False, on_row=seen.append)
    assert [r["step"] for r in rows] == [0, 3, 4] and seen == rows  # every 3 steps, and the end
    assert rows[0] == {"step": 0, "train_seconds": 0.0, "recovered": 0.0, **ref.row(qat.lsq_model(fp, s, calib_x=x))}
    assert 0 < rows[1]["train_seconds"] <= rows[2]["train_seconds"]
    assert rows[2] == {**ref.row(m), "step": 4, "train_seconds": rows[2]["train_seconds"],
                       "recovered": qat.recovery(rows[0]["agreement"], rows[2]["agreement"])}
    plain, _ = qat.lsq_train(fp, splits, s, calib_x=x, progress=False, validate=False)
    a, b = m.state_dict(), plain.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # measuring changed nothing in the training
    assert any(not torch.equal(a[k], v) for k, v in qat.lsq_model(fp, s, calib_x=x).state_dict().items())
    with pytest.raises(ValueError, match="every=0: expected an integer >= 1"):
        qat.lsq_curve(fp, splits, s, ref, every=0, calib_x=x)


def test_on_step_sees_the_start_and_every_optimizer_step(fp, splits, x):
    s = QATSettings(epochs=2, w_bits=4, a_bits=8, **{**FAST, "max_steps": 4})
    calls = []
    qat.lsq_train(fp, splits, s, calib_x=x, progress=False, validate=False,
                  on_step=lambda m, k: (m.eval(), calls.append(k)))
    assert calls == [0, 1, 2, 3, 4]  # the start, then every optimizer step


def test_recovery_is_the_share_of_the_ptq_loss_won_back():
    assert qat.recovery(0.9, 0.95) == pytest.approx(0.5)  # half of the 10% PTQ lost
    assert qat.recovery(0.9, 1.0) == pytest.approx(1.0) and qat.recovery(0.9, 0.9) == 0.0
    assert qat.recovery(0.9, 0.8) == pytest.approx(-1.0)  # lost as much again
    assert math.isnan(qat.recovery(1.0, 0.99))  # nothing to win back
    for bad in (1.5, -0.1, float("nan"), "0.9", True):
        with pytest.raises(ValueError, match=r"agreement=.*expected an agreement in \[0, 1\]"):
            qat.recovery(0.9, bad)


def _tracks(n_tracks, per_track, ptq_lost, qat_lost):
    """Per-image agreement of two models on n_tracks tracks of per_track frames, each model
    disagreeing with FP on every frame of the listed tracks (frames of a track flip together)."""
    groups = [f"track{t}" for t in range(n_tracks) for _ in range(per_track)]
    agree = lambda lost: torch.tensor([int(g[5:]) not in lost for g in groups])
    return agree(ptq_lost), agree(qat_lost), groups


def test_recovery_ci_is_recovery_with_a_track_bootstrap_interval():
    p, q, groups = _tracks(40, 5, ptq_lost={0, 1, 2, 3}, qat_lost={0, 1})
    r, lo, hi = qat.recovery_ci(p, q, groups, seed=1)
    assert r == pytest.approx(qat.recovery(p.double().mean().item(), q.double().mean().item())) == pytest.approx(0.5)
    assert lo <= r <= hi and lo < hi
    # the same flips counted as independent images give a narrower interval: tracks flip together
    _, lo_i, hi_i = qat.recovery_ci(p, q, [str(i) for i in range(len(p))], seed=1)
    assert hi_i - lo_i < hi - lo
    # a QAT model with the same answers wins nothing back, in every replicate
    assert qat.recovery_ci(p, p.clone(), groups) == (0.0, 0.0, 0.0)
    # QAT only ever fixes PTQ's tracks here, so no replicate can exceed all of the loss
    assert hi <= 1.0
    # PTQ agreeing everywhere leaves nothing to recover: NaN, not a number made up
    ok = torch.ones(len(p), dtype=torch.bool)
    assert all(math.isnan(v) for v in qat.recovery_ci(ok, q, groups))


def test_recovery_ci_refuses_mismatched_or_non_boolean_input():
    p, q, groups = _tracks(10, 3, ptq_lost={0}, qat_lost=set())
    for args, match in (((p, q[:-1], groups), "expected two boolean vectors"),
                        ((p, q, groups[:-1]), "one group per image"),
                        ((p.float(), q.float(), groups), "expected two boolean vectors"),
                        ((p[:0], q[:0], []), "non-zero length")):
        with pytest.raises(ValueError, match=match):
            qat.recovery_ci(*args)
    for kw in ({"n_boot": 0}, {"level": 1.0}, {"n_boot": 2.5}):
        with pytest.raises(ValueError, match=r"n_boot=.*level=.*expected"):
            qat.recovery_ci(p, q, groups, **kw)


@pytest.mark.parametrize("steps,n_train,epochs,per_pass", [(270, 6946, 5, 54), (45, 6946, 1, 45),
                                                            (55, 6946, 1, 55), (56, 6946, 2, 28), (60, 700, 10, 6)])
def test_with_steps_spreads_a_step_budget_over_passes(steps, n_train, epochs, per_pass):
    base = QATSettings(lr=1e-5, w_bits=4, a_bits=4, seed=3)
    s = base.with_steps(steps, n_train)
    assert (s.epochs, s.max_steps) == (epochs, steps)
    assert per_pass <= math.ceil(n_train / s.batch_size)  # no pass longer than the split
    assert epochs * per_pass == steps and math.ceil(steps / s.epochs) == per_pass  # _fit's cap per pass
    assert replace(s, epochs=base.epochs, max_steps=None) == base  # nothing else changed
    for bad in (dict(steps=0, n_train=10), dict(steps=5, n_train=0), dict(steps=2.5, n_train=10)):
        name = "steps" if bad["steps"] != 5 else "n_train"
        with pytest.raises(ValueError, match=f"{name}=.*expected an integer >= 1 \\(QATSettings.with_steps\\)"):
            base.with_steps(**bad)


@pytest.mark.parametrize("config,bits", [("W2A4", (2, 4)), ("W4A8", (4, 8)), ("W8A2", (8, 2))])
def test_parse_config(config, bits):
    assert qat.parse_config(config) == bits


@pytest.mark.parametrize("config", ["W1A4", "W2A9", "w2a4", "W2", "W16A4", "", 24])
def test_parse_config_rejects_what_is_not_a_config(config):
    with pytest.raises(ValueError, match=f"config={config!r}: expected 'W<bits>A<bits>'"):
        qat.parse_config(config)


def test_command_line_rejects_bad_arguments_before_loading_data(capsys, monkeypatch):
    monkeypatch.setenv("QLIB_DATA", "/nonexistent/folder")  # never read: the arguments fail first
    assert qat.main(["--config", "W9A4"]) == 2
    assert "config='W9A4'" in capsys.readouterr().err
    assert qat.main(["--steps", "0"]) == 2
    assert "--steps 0: expected an integer >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        qat.main(["--learn", "biases"])
    assert "invalid choice: 'biases'" in capsys.readouterr().err


def test_command_line_runs_end_to_end_in_smoke_mode(tmp_path, monkeypatch, capsys):
    """Data, baseline, GPTQ start, the measured fine-tune and its JSON (synthetic smoke data)."""
    import json
    monkeypatch.setenv("QLIB_SMOKE", "1")
    monkeypatch.setenv("QLIB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "runs" / "w4a8.json"
    assert qat.main(["--config", "W4A8", "--steps", "3", "--every", "2", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["config"] == "W4A8" and res["settings"]["max_steps"] == 3
    assert [r["step"] for r in res["rows"]] == [0, 2, 3]
    assert all(0 <= r["agreement"] <= 1 and r["kl"] >= 0 for r in res["rows"])
    assert list(out.parent.iterdir()) == [out]  # written under a temporary name, then renamed
    printed = capsys.readouterr().out
    assert "W4A8: 3 steps" in printed and printed.count("agreement") == 4  # header + 3 rows
