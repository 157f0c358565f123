"""qlib.models: the pretrained path (offline, from a local cache), training, the cached baseline."""
from dataclasses import replace

import pytest
import torch
import torchvision

from qlib import Config, models
from qlib import data as qdata


def test_pretrained_from_local_torch_home(tmp_path, monkeypatch):
    ref = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        ref.conv1.weight.normal_()
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    name = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1]
    torch.save(ref.state_dict(), ckpt / name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    m = models.resnet18(29, pretrained=True)
    assert m.pretrained and m.fc.out_features == 29
    assert torch.equal(m.conv1.weight, ref.conv1.weight)


def test_pretrained_offline_falls_back_with_one_note(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    m = models.resnet18(29, pretrained=True)
    out = capsys.readouterr().out
    assert not m.pretrained and out.count("training from scratch") == 1


@pytest.mark.parametrize("bad", [0, 1, "29"])
def test_bad_num_classes(bad):
    with pytest.raises(ValueError, match="num_classes"):
        models.resnet18(bad)


def test_bad_arch_and_epochs(tmp_path):
    with pytest.raises(ValueError, match="arch='vgg'"):
        models.build("vgg", 10)
    cfg = Config.from_env(smoke=True, cache_dir=str(tmp_path))
    s = qdata.load(cfg)
    with pytest.raises(ValueError, match="epochs=0"):
        models.train(models.resnet18(29), s, cfg, epochs=0)


def test_precision_is_part_of_the_baseline_key(monkeypatch, tmp_path):
    cfg = Config.from_env(smoke=True, cache_dir=str(tmp_path))
    assert models.baseline_key(cfg)["precision"] == "fp32"
    with pytest.raises(ValueError, match="precision='fp16'"):
        models.mixed_precision("cpu", "fp16")
    # bf16-mixed keys (and trains) a different checkpoint, or says clearly that the CPU cannot
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with pytest.raises(ValueError, match="no bfloat16 support.*QLIB_PRECISION=fp32"):
        models.baseline_key(replace(cfg, precision="bf16-mixed"))
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert models.baseline_path(replace(cfg, precision="bf16-mixed")) != models.baseline_path(cfg)


def test_augment_keeps_shape_and_changes_images():
    x = torch.randn(4, 3, 32, 32)
    y = models.augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and not torch.allclose(x, y)


def test_baseline_cached_deterministic_and_mismatch_retrains(tmp_path, capsys):
    cfg = Config.from_env(smoke=True, cache_dir=str(tmp_path))
    s = qdata.load(cfg)
    m1, h1 = models.baseline(cfg, s, progress=False)
    assert len(h1["epoch"]) == 1 and 0.0 <= h1["val_acc"][0] <= 1.0
    # the history names what the weights' rounding depends on
    assert h1["machine"]["kernels"] == torch.backends.cpu.get_cpu_capability()
    assert h1["machine"]["threads"] == torch.get_num_threads() and h1["machine"]["torch"] == torch.__version__
    path = models.baseline_path(cfg)
    m2, _ = models.baseline(cfg, s, progress=False)  # loaded from the cache
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    # a retrain from scratch with the same seed on the same machine gives bit-identical weights
    # (another CPU or thread count does not: see models.machine)
    path.unlink()
    m3, _ = models.baseline(cfg, s, progress=False)
    for a, b in zip(m1.state_dict().values(), m3.state_dict().values()):
        assert torch.equal(a, b)
    # a checkpoint of another configuration under this name is reported and retrained
    ck = torch.load(path, weights_only=False)
    ck["key"]["seed"] = 99
    torch.save(ck, path)
    models.baseline(cfg, s, progress=False)
    assert "another configuration" in capsys.readouterr().out
    path.write_bytes(b"garbage")
    models.baseline(cfg, s, progress=False)
    assert "unreadable" in capsys.readouterr().out


def test_evaluate_confusion_sums(tmp_path):
    cfg = Config.from_env(smoke=True, cache_dir=str(tmp_path))
    s = qdata.load(cfg)
    r = models.evaluate(models.resnet18(29).eval(), s.test)
    assert r["confusion"].sum().item() == len(s.test)
    assert r["logits"].shape == (len(s.test), 29)
    assert abs(r["accuracy"] - r["confusion"].diag().sum().item() / len(s.test)) < 1e-9


def test_cpuinfo_reads_one_key_and_misses_cleanly():
    """The shared /proc/cpuinfo reader (models.machine's CPU, int8.matrix_units' flags): a missing
    key is None, and machine() names the CPU it returns."""
    assert models.cpuinfo("no such key in cpuinfo") is None
    name = models.cpuinfo("model name")
    assert models.machine()["cpu"] == (name or "unknown")
    flags = models.cpuinfo("flags")
    if flags is not None:  # Linux on x86: int8.matrix_units reads these same flags when given none
        from qlib import int8
        assert int8.matrix_units() == int8.matrix_units(flags.split())
