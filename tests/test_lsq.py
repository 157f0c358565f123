"""Unit tests of qlib.lsq: the LSQ quantizer and its gradients, LSQ models and their fine-tune,
and configurations by name."""
import math

import pytest
import torch

from qlib import export, int8, lsq, quant
from qlib.qat import QATSettings
from qlib.quant import QuantSettings
from tiny import FAST, NUM_CLASSES, fp, splits, x  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ---- the LSQ quantizer ----------------------------------------------------------------

def test_ste_passes_gradient_inside_the_clipping_range_only():
    step, qmin, qmax = 0.5, -2, 1  # 2-bit signed: levels -1.0 .. 0.5
    x = torch.tensor([-1.6, -1.25, -0.9, -0.2, 0.0, 0.3, 0.5, 0.74, 0.8, 3.0],
                     requires_grad=True)
    s = torch.tensor(step, requires_grad=True)
    y = lsq.lsq_quant(x, s, qmin, qmax)
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
    lsq.lsq_quant(x, s, -4, 3, g).sum().backward()
    v = x / 0.4
    expect = torch.where(v < -4, torch.tensor(-4.0),
                         torch.where(v > 3, torch.tensor(3.0), torch.round(v) - v))
    assert math.isclose(s.grad.item(), g * expect.sum().item(), rel_tol=1e-5, abs_tol=1e-6)


def test_steps_receive_gradients_and_stay_positive(fp, x):
    m = lsq.lsq_model(fp, QATSettings(w_bits=4, a_bits=4, w_range="minmax", keep_8bit=("fc",)),
                      calib_x=x)
    layers = [mod for mod in m.modules() if isinstance(mod, (lsq.LSQConv2d, lsq.LSQLinear))]
    assert len(layers) == 21
    assert (m.fc.w_bits, m.fc.a_bits, m.conv1.w_bits, m.conv1.a_bits) == (8, 8, 4, 4)
    assert layers[0].a_signed and not any(mod.a_signed for mod in layers[1:])  # image vs ReLU inputs
    m.train()
    m(x).logsumexp(1).sum().backward()
    for mod in layers:
        assert mod.w_log_step.grad is not None and mod.w_log_step.grad.abs().sum() > 0
        assert mod.a_log_step.grad is not None and mod.a_log_step.grad.abs() > 0
    opt = torch.optim.SGD([p for n, p in m.named_parameters() if n.endswith("step")], lr=1.0)
    for mod in layers:  # an update that would drive every step to exp(-1000) = 0
        mod.w_log_step.grad = torch.full_like(mod.w_log_step, 1000.0)
        mod.a_log_step.grad = torch.full_like(mod.a_log_step, 1000.0)
    opt.step()
    lsq.clamp_steps_(m)
    for mod in layers:
        assert (mod.w_step >= lsq.STEP_MIN * (1 - 1e-6)).all() and mod.a_step >= lsq.STEP_MIN * (1 - 1e-6)


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
    m0 = lsq.lsq_model(fp, s, init_model=init)
    with torch.no_grad():
        assert torch.equal(m0(x), init(x))  # step 0 is the RTN solution
    m, hist = lsq.lsq_train(fp, splits, s, init_model=init, progress=False)
    assert hist["epoch"] == [1] and hist["steps"] == [2]
    plain = lsq.export_model(m)
    with torch.no_grad():
        assert torch.equal(plain(x), m(x))  # the learned codes x float16 steps, exactly
    path = export.save(plain, tmp_path / "lsq.safetensors")
    with torch.no_grad():
        assert torch.equal(export.load(path)(x), m(x))
    bad = quant.fold_batchnorm(fp)
    export.attach(bad.fc, quant.quantize(bad.fc.weight, QuantSettings(bits=3)))
    with pytest.raises(ValueError, match="3-bit"):
        lsq.lsq_model(fp, s, init_model=bad)


def test_code_changes_counts_the_weights_that_moved_to_another_code(fp):
    init = _rtn_w4(fp)
    s = QATSettings(w_bits=4, a_bits=None)
    m0 = lsq.lsq_model(fp, s, init_model=init)
    assert lsq.code_changes(m0, m0) == {"changed": 0, "total": sum(
        mod.weight.numel() for mod in m0.modules() if isinstance(mod, (lsq.LSQConv2d, lsq.LSQLinear))), "share": 0.0}
    m1 = lsq.lsq_model(fp, s, init_model=init)
    step = m1.fc.w_step.detach()[0]
    q = (m1.fc.weight.detach()[0, :3] / step).round()
    with torch.no_grad():  # three weights moved from their code towards zero by 0.4 of a step (the same code),
        # 0.6 of a step and a whole step (new codes)
        m1.fc.weight[0, :3] = (q + torch.tensor([0.4, 0.6, 1.0]) * torch.where(q < 0, 1.0, -1.0)) * step
    c = lsq.code_changes(m0, m1)
    assert c["changed"] == 2 and c["share"] == 2 / c["total"]
    with pytest.raises(ValueError, match="same layers"):
        lsq.code_changes(m0, fp)


def test_adam_moves_every_step_by_a_fraction_of_itself(fp, splits, x):
    """Steps are learned as logarithms: with Adam each step (a 4-bit activation step ~1e-1 or a
    weight step ~1e-3) changes by about ``step_lr`` *of itself* per update, whatever the scale
    of its gradient; a zero-ish step_lr keeps them where they started."""
    init = _rtn_w4(fp)

    def steps(m):
        mods = [mod for mod in m.modules() if isinstance(mod, (lsq.LSQConv2d, lsq.LSQLinear))]
        return torch.cat([torch.cat([mod.w_step.detach().reshape(-1), mod.a_step.detach().reshape(1)])
                          for mod in mods])

    moved = {}
    for step_lr in (1e-9, 1e-2):
        s = QATSettings(epochs=1, w_bits=4, a_bits=4, optimizer="adam", lr=1e-9, step_lr=step_lr, **FAST)
        before = steps(lsq.lsq_model(fp, s, init_model=init, calib_x=x))
        m, _ = lsq.lsq_train(fp, splits, s, init_model=init, calib_x=x, progress=False)
        rel = (steps(m) / before - 1).abs()
        moved[step_lr] = (rel.max().item(), (rel > 1e-3).float().mean().item())
        assert before.max() / before.min() > 10  # steps of very different sizes
    assert moved[1e-9][0] < 1e-6
    # two updates at 1e-2 and 0.5e-2 (cosine): most steps (not those of channels the batches
    # leave without gradient) moved by more than 0.1%, none by more than ~1.5% of itself
    assert moved[1e-2][1] > 0.5 and moved[1e-2][0] < 3e-2, moved


def test_lsq_w4a8_runs_on_the_int8_engine(fp, splits, x):
    s = QATSettings(epochs=1, w_bits=4, a_bits=8, distill=0.5, **FAST)
    m, _ = lsq.lsq_train(fp, splits, s, calib_x=x, progress=False)
    steps = lsq.act_steps(m)
    assert len(steps) == 21 and all(v[0] > 0 for v in steps.values())
    q = lsq.to_int8(m, x, observer="minmax")
    codes = int8.weight_codes_of(q)
    for name, mod in m.named_modules():  # the engine runs the learned 4-bit codes
        if isinstance(mod, (lsq.LSQConv2d, lsq.LSQLinear)):
            assert torch.equal(codes[name], mod.qtensor().codes), name
    with torch.no_grad():
        assert q(x).shape == (8, NUM_CLASSES)


def test_mixup_distillation_is_seeded_and_moves_the_model(fp, splits, x):
    s = QATSettings(epochs=1, w_bits=4, a_bits=8, distill=1.0, mixup=0.4, **FAST)
    runs = [lsq.lsq_train(fp, splits, s, calib_x=x, progress=False)[0] for _ in range(2)]
    start = lsq.lsq_model(fp, s, calib_x=x)
    a, b, s0 = (r.state_dict() for r in (*runs, start))
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed, same blends, same model
    assert any(not torch.equal(a[k], s0[k]) for k in a)  # and it trained


def test_lsq_without_validation_trains_the_same_model_and_never_reads_val(fp, splits, x):
    import dataclasses
    s = QATSettings(epochs=2, w_bits=4, a_bits=8, distill=1.0, **FAST)
    m1, h1 = lsq.lsq_train(fp, splits, s, calib_x=x, progress=False)
    m2, h2 = lsq.lsq_train(fp, dataclasses.replace(splits, val=None), s, calib_x=x, progress=False, validate=False)
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
    start = lsq.lsq_model(fp, s, init_model=_rtn_w4(fp), calib_x=x).state_dict()
    m, _ = lsq.lsq_train(fp, splits, s, init_model=_rtn_w4(fp), calib_x=x, progress=False, validate=False)
    end = m.state_dict()
    learned = [k for k in start if (k.endswith("a_log_step") if learn == "steps" else k.endswith(("weight", "bias")))]
    assert len(learned) == 21 if learn == "steps" else len(learned) == 42
    assert all(torch.equal(start[k], end[k]) for k in start if k not in learned)  # frozen: bit for bit
    assert sum(not torch.equal(start[k], end[k]) for k in learned) > len(learned) / 2  # most moved
    assert all(p.requires_grad for p in m.parameters())


def test_smoothed_ptq_is_the_ptq_of_the_smoothed_network(fp, x, monkeypatch):
    """The smoothed PTQ at 8/8 bits keeps FP's outputs about as well as the unsmoothed one, it is
    the PTQ (GPTQ weights, calibrated steps) of the smoothed network, and one alpha per smoothed
    group is returned, each in [0, 1]. Mode "shared" (its groups include "bn"'s); the modes'
    smoothing itself is tested in test_smoothquant/test_fold. The real gptq_init runs once for
    the smoothed network (recorded, not replaced) and once for the plain one."""
    from qlib import fold, smoothquant
    s = QATSettings(w_bits=8, a_bits=8, keep_8bit=("conv1", "fc"))
    calls, real_init = [], lsq.gptq_init
    def spy(model_fp, w_bits, calib_x, keep_8bit=("conv1", "fc")):
        init = real_init(model_fp, w_bits, calib_x, keep_8bit)
        calls.append((model_fp, w_bits, calib_x, tuple(keep_8bit), init))
        return init
    monkeypatch.setattr(lsq, "gptq_init", spy)
    mode = "shared"
    m, alphas = lsq.smoothed_ptq(fp, s, x, mode=mode)
    assert set(alphas) == {g.key for g in fold.scalable_layers(fp, mode)}
    assert all(0 <= a <= 1 for a in alphas.values())
    smooth = smoothquant.apply(fp, smoothquant.search(fp, x, smoothquant.SmoothSettings(alpha=alphas, mode=mode)))
    assert len(calls) == 1
    given, w_bits, cx, keep, init = calls[0]
    assert (w_bits, keep) == (8, ("conv1", "fc")) and torch.equal(cx, x)
    sd = smooth.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in given.state_dict().items())  # GPTQ saw the smoothed network
    again = lsq.lsq_model(smooth, s, init_model=init, calib_x=x).state_dict()
    assert all(torch.equal(v, again[k]) for k, v in m.state_dict().items())  # the PTQ of the smoothed network
    with torch.no_grad():
        ref = quant.fold_batchnorm(fp)(x)
        plain = lsq.lsq_model(fp, s, init_model=real_init(fp, 8, x), calib_x=x)(x)
        err, err0 = ((m(x) - ref).norm() / ref.norm()).item(), ((plain - ref).norm() / ref.norm()).item()
    assert err < 0.05 and err < 2 * err0 + 1e-3, (mode, err, err0)
    with pytest.raises(ValueError, match="a_bits set"):
        lsq.smoothed_ptq(fp, QATSettings(w_bits=4, a_bits=None), x)


def test_smoothed_start_is_the_same_float_function_with_its_gptq_solution(fp, x):
    """smoothed_start's network computes FP's outputs (smoothing is an equivalence transform)
    and its solution carries GPTQ codes at the asked bits (keep_8bit layers at 8); lsq_train can
    start from the pair, and it is what smoothed_ptq quantizes."""
    s = QATSettings(w_bits=4, a_bits=4, keep_8bit=("conv1", "fc"))
    smooth, init, alphas = lsq.smoothed_start(fp, s, x, mode="bn")
    with torch.no_grad():
        ref, out = fp.eval()(x), smooth.eval()(x)
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    bits = {n: m.qweight.bits for n, m in init.named_modules() if getattr(m, "qweight", None) is not None}
    assert bits["conv1"] == bits["fc"] == 8 and {b for n, b in bits.items() if n not in ("conv1", "fc")} == {4}
    assert alphas and all(0 <= a <= 1 for a in alphas.values())
    with pytest.raises(ValueError, match="a_bits set"):
        lsq.smoothed_start(fp, QATSettings(w_bits=4, a_bits=None), x)


def test_lsq_model_needs_calibration_images_and_known_layers(fp):
    with pytest.raises(ValueError, match="calib_x"):
        lsq.lsq_model(fp, QATSettings(w_bits=4, a_bits=4))
    with pytest.raises(ValueError, match="'head'"):
        lsq.lsq_model(fp, QATSettings(w_bits=4, a_bits=None, keep_8bit=("head",)))


# ---- block-wise reconstruction ------------------------------------------------------------

def test_units_compose_to_the_model(fp, x):
    """The units reconstruction fits one after the other are the whole network, in order."""
    y = x
    for _, u in lsq._units(fp.eval()):
        y = u(y)
    assert torch.allclose(y, fp(x), atol=1e-5)


def test_reconstruct_lowers_the_unit_errors_and_learns_only_steps_and_biases(fp, x):
    m0 = lsq.lsq_model(fp, QATSettings(w_bits=4, a_bits=4, w_range="minmax"), calib_x=x)
    before = {k: v.clone() for k, v in m0.state_dict().items()}
    fp_before = {k: v.clone() for k, v in fp.state_dict().items()}
    m, hist = lsq.reconstruct(m0, fp, x, iters=30, progress=False)
    assert [h["unit"] for h in hist] == ["stem"] + [f"layer{i}.{j}" for i in (1, 2, 3, 4) for j in (0, 1)] + ["head"]
    for k, v in m0.state_dict().items():  # neither input model is changed
        assert torch.equal(v, before[k]), k
    for k, v in fp.state_dict().items():
        assert torch.equal(v, fp_before[k]), k
    after = m.state_dict()
    for k, v in before.items():
        if k.endswith("weight"):  # the weights stay on their grid points
            assert torch.equal(after[k], v), k
    assert any(not torch.equal(after[k], v) for k, v in before.items() if k.endswith("log_step"))
    assert any(not torch.equal(after[k], v) for k, v in before.items() if k.endswith("bias"))
    assert all(p.requires_grad for p in m.parameters())  # handed back trainable
    assert sum(h["mse_after"] for h in hist) < sum(h["mse_before"] for h in hist)
    assert all((v >= lsq.LOG_STEP_MIN).all() for k, v in after.items() if k.endswith("log_step"))


def test_reconstruct_rejects_bad_arguments(fp, x):
    m0 = lsq.lsq_model(fp, QATSettings(w_bits=4, a_bits=4, w_range="minmax"), calib_x=x)
    with pytest.raises(ValueError, match="iters=0: expected an integer >= 1"):
        lsq.reconstruct(m0, fp, x, iters=0)
    with pytest.raises(ValueError, match="step_lr=-0.1"):
        lsq.reconstruct(m0, fp, x, step_lr=-0.1)
    with pytest.raises(ValueError, match=r"x: expected a non-empty float batch of images \[N, C, H, W\], got \(8, 3072\)"):
        lsq.reconstruct(m0, fp, x.flatten(1))
    with pytest.raises(ValueError, match="has no LSQ layers"):
        lsq.reconstruct(fp, fp, x)


# ---- the fine-tune's callback and configurations by name ------------------------------

def test_on_step_sees_the_start_and_every_optimizer_step(fp, splits, x):
    s = QATSettings(epochs=2, w_bits=4, a_bits=8, **{**FAST, "max_steps": 4})
    calls = []
    lsq.lsq_train(fp, splits, s, calib_x=x, progress=False, validate=False,
                  on_step=lambda m, k: (m.eval(), calls.append(k)))
    assert calls == [0, 1, 2, 3, 4]  # the start, then every optimizer step


@pytest.mark.parametrize("config,bits", [("W2A4", (2, 4)), ("W4A8", (4, 8)), ("W8A2", (8, 2))])
def test_parse_config(config, bits):
    assert lsq.parse_config(config) == bits


@pytest.mark.parametrize("config", ["W1A4", "W2A9", "w2a4", "W2", "W16A4", "", 24])
def test_parse_config_rejects_what_is_not_a_config(config):
    with pytest.raises(ValueError, match=f"config={config!r}: expected 'W<bits>A<bits>'"):
        lsq.parse_config(config)
