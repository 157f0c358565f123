"""qlib.calib: calibration sample from the train split only, input hooks and statistics."""
import pytest
import torch
from torch import nn

from qlib import calib
from qlib import data as qdata
from qlib.models import resnet18

NUM_CLASSES = 29


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return resnet18(NUM_CLASSES).eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _split(n, value):
    images = torch.full((n, 3, 8, 8), value, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)  # tells the images apart
    return qdata.Split(images, torch.zeros(n, dtype=torch.long), [f"g{i}" for i in range(n)],
                       [f"f{i}" for i in range(n)])


def _splits(n_train=20):
    return qdata.Splits(train=_split(n_train, 10), val=_split(7, 200), test=_split(9, 250),
                        classes=["a", "b"], source="test", split="tracks")


def _no_hooks(model):
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("n_train,n", [(20, 5), (20, 20), (20, 300), (1, 256)])
def test_indices_never_exceed_the_train_split(n_train, n):
    idx = calib.indices(n_train, n, seed=3)
    assert len(idx) == min(n, n_train)
    assert int(idx.min()) >= 0 and int(idx.max()) < n_train
    assert len(set(idx.tolist())) == len(idx)
    assert torch.equal(idx, calib.indices(n_train, n, seed=3))  # seeded


def test_sample_takes_train_images_only():
    s = _splits(20)
    xs, idx = calib.sample(s, n=6, seed=0)
    assert xs.shape == (6, 3, 8, 8) and int(idx.max()) < len(s.train)
    assert torch.equal(xs, qdata.to_float(s.train.images[idx]))
    xs_all, idx_all = calib.sample(s, n=1000)
    assert len(idx_all) == len(s.train) == len(xs_all)  # val/test (values 200, 250) never used
    assert float(xs_all[:, 1].max()) == float(qdata.to_float(s.train.images)[:, 1].max())


@pytest.mark.parametrize("n", [0, -1, 2.5])
def test_bad_calibration_size(n):
    with pytest.raises(ValueError, match="n="):
        calib.indices(20, n)


def test_input_stats_shapes_and_values(model, x):
    stats = calib.input_stats(model, x, batch_size=3)
    names = calib.layer_names(model)
    assert list(stats) == names and len(names) == 21
    mods = dict(model.named_modules())
    for n in names:
        m = mods[n]
        c_in = m.in_channels if isinstance(m, nn.Conv2d) else m.in_features
        assert stats[n]["absmax"].shape == (c_in,) and stats[n]["absmean"].shape == (c_in,)
        assert bool((stats[n]["absmean"] <= stats[n]["absmax"] + 1e-6).all())
        assert bool((stats[n]["absmean"] >= 0).all())
    assert torch.allclose(stats["conv1"]["absmax"], x.abs().amax(dim=(0, 2, 3)))
    assert torch.allclose(stats["conv1"]["absmean"], x.abs().mean(dim=(0, 2, 3)), atol=1e-6)
    assert _no_hooks(model)


def test_layer_inputs_match_the_forward(model, x):
    got = calib.layer_inputs(model, x, ["conv1", "fc", "layer2.0.downsample.0"], batch_size=5)
    assert torch.equal(got["conv1"], x)
    with torch.no_grad():
        feats = torch.flatten(model.avgpool(model.layer4(model.layer3(model.layer2(model.layer1(
            model.maxpool(model.relu(model.bn1(model.conv1(x))))))))), 1)
    assert got["fc"].shape == (8, 512) and torch.allclose(got["fc"], feats, atol=1e-5)
    assert got["layer2.0.downsample.0"].shape == (8, 64, 8, 8)
    assert _no_hooks(model)


def test_hooks_removed_after_an_error(model, x):
    def boom(v):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with calib.input_hooks(model, {"layer1.0.conv1": boom}):
            calib.run(model, x[:2])
    assert _no_hooks(model)


def test_run_restores_training_mode_and_keeps_outputs(model, x):
    m = resnet18(NUM_CLASSES).train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    y = calib.run(m, x, batch_size=4, keep=True)
    assert m.training and y.shape == (8, NUM_CLASSES)
    for k, v in m.state_dict().items():  # eval mode: BN running stats untouched
        assert torch.equal(v, before[k]), k
    assert calib.run(model, x[:1]) is None


def test_bad_inputs_raise_clear_errors(model):
    with pytest.raises(ValueError, match="calib_x"):
        calib.input_stats(model, torch.zeros(0, 3, 32, 32))
    with pytest.raises(ValueError, match="no submodule"):
        with calib.input_hooks(model, {"layer9": lambda v: None}):
            pass
    with pytest.raises(ValueError, match="batch_size"):
        calib.run(model, torch.zeros(1, 3, 32, 32), batch_size=0)
