"""Unit tests of qlib.qat: the shared fine-tuning settings and int8 QAT on PyTorch's engine."""
import math
from dataclasses import replace
import warnings

import pytest
import torch

from qlib import int8, qat
from qlib import data as qdata
from qlib.qat import QATSettings
from tiny import FAST, NUM_CLASSES, calib_x, fp, splits, x  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


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
    (dict(augment="no"), "augment='no'"), (dict(augment=1), "augment=1"),
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


def test_learn_refuses_what_it_cannot_do(fp, splits):
    with pytest.raises(ValueError, match=r"learn='biases': expected one of \('all', 'weights', 'steps'\)"):
        QATSettings(learn="biases")
    with pytest.raises(ValueError, match="learn='steps': the model has no learned steps"):
        qat.train_int8(fp, splits, QATSettings(epochs=2, learn="steps"), progress=False)


@pytest.mark.parametrize("steps,n_train,epochs,per_pass", [(270, 6946, 5, 54), (240, 6946, 5, 48), (45, 6946, 1, 45),
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


class _Probe(torch.nn.Module):
    """A model with one bias that keeps the batches it is trained on."""

    def __init__(self, seen):
        super().__init__()
        self.bias, self.seen = torch.nn.Parameter(torch.zeros(NUM_CLASSES)), seen

    def forward(self, x):
        if self.training:
            self.seen.append(x.detach().clone())
        return self.bias.expand(len(x), -1) + 0 * x.mean()


def test_augment_false_trains_on_the_images_as_they_are(splits):
    """augment=False (and no mixup): every image of a training batch is one of the train split's
    images, exactly; the default augments every one of them."""
    train = qdata.to_float(splits.train.images).flatten(1)
    for augment in (False, True):
        seen = []
        qat.fit(_Probe(seen), splits, QATSettings(epochs=1, batch_size=8, augment=augment),
                progress=False, evaluate=lambda m: 0.0)
        batch = torch.cat(seen).flatten(1)
        assert len(batch) == len(train)
        exact = (batch[:, None] == train[None]).all(2).any(1)  # each seen image equals a train image
        assert exact.all() if not augment else not exact.any(), augment


class _Clock:
    """A fake clock for ``qat.fit``: each training forward takes ``pace(step)`` seconds."""

    def __init__(self, pace):
        self.now, self.steps, self.pace = 0.0, 0, pace

    def __call__(self):
        return self.now


class _Timed(_Probe):
    def __init__(self, clock):
        super().__init__([])
        self.clock = clock

    def forward(self, x):
        if self.training:
            self.clock.steps += 1
            self.clock.now += self.clock.pace(self.clock.steps)
        return super().forward(x)


def _timed_fit(splits, pace, minutes, steps=100):
    clock = _Clock(pace)
    s = QATSettings(batch_size=8, lr=0.1, minutes=minutes).with_steps(steps, len(splits.train))

    def after_step(m):  # e.g. a measurement: 7 s that are not training
        clock.now += 7.0

    hist = qat.fit(_Timed(clock), splits, s, progress=False, evaluate=lambda m: 0.0, clock=clock,
                   after_step=after_step)
    return hist, clock


def test_time_box_fits_the_schedule_to_the_budget(splits):
    """At 1 s per step a 25-second budget holds 25 of the 100 steps allowed: the run takes exactly
    25, says the box ended it, and its cosine schedule ends at learning rate 0. Time spent in
    callbacks (7 s after each step here) is not counted."""
    hist, clock = _timed_fit(splits, lambda k: 1.0, minutes=25 / 60)
    assert sum(hist["steps"]) == clock.steps == 25 and hist["max_steps"] >= 100
    assert hist["train_seconds"] == 25.0 and hist["stopped_at_budget"]
    assert hist["lr"][-1] == pytest.approx(0.0, abs=1e-12)
    # a budget larger than the steps asked for changes nothing: the run takes all of them
    unboxed, _ = _timed_fit(splits, lambda k: 1.0, minutes=None, steps=30)
    hist, clock = _timed_fit(splits, lambda k: 1.0, minutes=1000 / 60, steps=30)
    assert sum(hist["steps"]) == hist["max_steps"] == sum(unboxed["steps"]) == unboxed["max_steps"] >= 30
    assert hist["lr"] == unboxed["lr"] and hist["train_seconds"] == clock.steps
    assert not hist["stopped_at_budget"] and not unboxed["stopped_at_budget"]


def test_time_box_follows_the_machines_pace(splits):
    """The schedule runs over the minutes, not over a step count guessed from the first steps: a
    run that turns slower (1 s, then 2 s per step) stops as soon as its 25 s are spent (step 18:
    10 + 8 x 2 = 26 s), one that turns faster (2 s, then 1 s) uses the whole box (step 15:
    10 x 2 + 5 = 25 s); both end at learning rate 0."""
    for pace, n, seconds in ((lambda k: 1.0 if k <= 10 else 2.0, 18, 26.0),
                             (lambda k: 2.0 if k <= 10 else 1.0, 15, 25.0)):
        hist, clock = _timed_fit(splits, pace, minutes=25 / 60)
        assert sum(hist["steps"]) == clock.steps == n and hist["train_seconds"] == seconds
        assert hist["stopped_at_budget"] and hist["lr"][-1] == pytest.approx(0.0, abs=1e-12)


def test_time_box_refuses_what_it_cannot_do(fp, splits):
    for bad in (0, -1.0, float("nan"), 1e9, "5"):
        with pytest.raises(ValueError, match=r"minutes=.*expected a number in \(0\.0, 1440\.0\] \(QATSettings.minutes\)"):
            QATSettings(minutes=bad)
    with pytest.raises(ValueError, match=r"minutes=1\.0: int8 QAT freezes its last epochs"):
        qat.train_int8(fp, splits, QATSettings(epochs=2, minutes=1.0), progress=False)
