"""qlib.data: the YOLO reader, the track split, the cache, bad input."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qlib import Config
from qlib import data as qdata
from qlib import yolo

NAMES = ["alpha", "beta", "gamma"]


def write_export(root: Path, layout: str = "flat", val_name: str = "val", tracks_per_class: int = 4,
                 frames: int = 3, size: int = 48):
    """A tiny Roboflow-style YOLO export: 3 classes, GTSRB-style names, leaky random split."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text(
        "train: /content/images/train\nval: /content/images/val\ntest: /content/images/test\n"
        f"nc: {len(NAMES)}\nnames: {NAMES}\n")
    rng = np.random.default_rng(0)
    files = []
    for c in range(len(NAMES)):
        for t in range(tracks_per_class):
            for f in range(frames):
                files.append((c, f"{c:05d}_{t:05d}_{f:05d}_png_jpg.rf.{rng.integers(1e9):x}"))
    files.append((2, "extra_png_jpg.rf.abc"))  # a file without a GTSRB id
    splits = ["train", val_name, "test"]
    for i, (c, stem) in enumerate(files):
        sp = splits[i % 3]
        img_dir = root / "images" / sp if layout == "flat" else root / sp / "images"
        lab_dir = root / "labels" / sp if layout == "flat" else root / sp / "labels"
        img_dir.mkdir(parents=True, exist_ok=True)
        lab_dir.mkdir(parents=True, exist_ok=True)
        arr = np.full((size, size, 3), 40 + 80 * c, dtype=np.uint8)
        arr[10:30, 10:30] = 255
        Image.fromarray(arr).save(img_dir / f"{stem}.jpg")
        boxes = f"{c} 0.4 0.4 0.5 0.5\n"
        if i == 0:  # a multi-box file (same class), the larger box wins
            boxes += f"{c} 0.5 0.5 0.2 0.2\n"
        (lab_dir / f"{stem}.txt").write_text(boxes)
    return root


def cfg_for(root, tmp_path, **kw):
    return Config(data=str(root), image_size=kw.pop("image_size", 16), cache_dir=str(tmp_path / "cache"), **kw)


@pytest.mark.parametrize("layout,val_name", [("flat", "val"), ("nested", "valid"), ("flat", "valid")])
def test_yolo_reader_both_layouts(tmp_path, layout, val_name):
    root = write_export(tmp_path / "exp", layout, val_name)
    s = qdata.load(cfg_for(root, tmp_path, split="export"))
    assert s.classes == NAMES
    assert len(s.train) + len(s.val) + len(s.test) == 3 * 4 * 3 + 1
    assert s.train.images.dtype == torch.uint8 and s.train.images.shape[1:] == (3, 16, 16)
    assert set(s.train.labels.tolist()) <= {0, 1, 2}
    assert "file:extra_png_jpg" in sum((sp.groups for _, sp in s), [])


def test_crop_uses_the_box(tmp_path):
    root = write_export(tmp_path / "exp")
    cropped = qdata.load(cfg_for(root, tmp_path, split="export"))
    whole = qdata.load(cfg_for(root, tmp_path, split="export", crop=False))
    # the box (0.4, 0.4, 0.5, 0.5) holds the white square: cropping makes it fill more of the image
    frac = lambda s: (s.train.images.float().mean(1) > 250).float().mean().item()  # noqa: E731
    assert frac(cropped) > frac(whole) * 1.5


def test_export_split_leaks_and_track_split_does_not(tmp_path):
    root = write_export(tmp_path / "exp")
    leaky = qdata.load(cfg_for(root, tmp_path, split="export"))
    assert qdata.leakage(leaky)["train-test"] > 0
    fair = qdata.load(cfg_for(root, tmp_path, split="tracks"))
    assert qdata.leakage(fair) == {"train-val": 0, "train-test": 0, "val-test": 0}
    for _, sp in fair:  # stratified: every class in every split
        assert set(sp.labels.tolist()) == {0, 1, 2}


def _tracks(n_classes, n_tracks, max_frames, seed):
    """Labels and group ids of n_classes x n_tracks tracks of 5..max_frames-1 frames."""
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for c in range(n_classes):
        for t in range(n_tracks):
            n = int(rng.integers(5, max_frames))
            labels += [c] * n
            groups += [f"{c}_{t}"] * n
    return labels, groups


def test_group_split_stratified_deterministic_and_fractional():
    labels, groups = _tracks(5, 20, 40, seed=1)
    a = qdata.group_split(labels, groups, seed=3)
    assert a == qdata.group_split(labels, groups, seed=3)
    assert a != qdata.group_split(labels, groups, seed=4)
    for g in set(groups):  # a group is never cut
        assert len({a[i] for i in range(len(groups)) if groups[i] == g}) == 1
    frac = {s: a.count(s) / len(a) for s in ("train", "val", "test")}
    assert abs(frac["train"] - 0.70) < 0.06 and abs(frac["val"] - 0.15) < 0.05 and abs(frac["test"] - 0.15) < 0.05
    for c in range(5):
        assert {a[i] for i in range(len(a)) if labels[i] == c} == {"train", "val", "test"}


def test_halves_are_track_disjoint_stratified_and_cover_the_split():
    labels, groups = _tracks(4, 12, 30, seed=2)
    sp = qdata.Split(torch.zeros(len(labels), 3, 2, 2, dtype=torch.uint8), torch.tensor(labels), groups,
                     [str(i) for i in range(len(labels))])
    ia, ib = qdata.halves(sp, seed=0)
    a, b = sp.subset(ia), sp.subset(ib)
    assert sorted(ia.tolist() + ib.tolist()) == list(range(len(sp)))  # a partition
    assert not set(a.groups) & set(b.groups)
    assert 0.45 < len(a) / len(sp) < 0.55
    assert set(a.labels.tolist()) == set(b.labels.tolist()) == {0, 1, 2, 3}
    assert torch.equal(qdata.halves(sp, seed=0)[0], ia) and not torch.equal(qdata.halves(sp, seed=1)[0], ia)
    one_track_per_class = sp.subset([i for i, g in enumerate(groups) if g.endswith("_0")])
    a1, b1 = (one_track_per_class.subset(i) for i in qdata.halves(one_track_per_class))
    assert len(a1) and len(b1) and not set(a1.groups) & set(b1.groups)  # one track per class: both halves filled
    with pytest.raises(ValueError, match="at least 2"):
        qdata.halves(sp.subset([0]))


def test_track_of():
    assert yolo.track_of("00012_00003_00029_png_jpg.rf.ab.jpg") == "00012_00003"
    assert yolo.track_of("13_png_jpg.rf.c2.jpg") == "file:13_png_jpg"


def test_cache_is_reused_and_survives_a_corrupt_file(tmp_path, capsys):
    root = write_export(tmp_path / "exp")
    cfg = cfg_for(root, tmp_path)
    first = qdata.load(cfg)
    files = list(Path(cfg.cache_dir).glob("data-*.pt"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    second = qdata.load(cfg)
    assert files[0].stat().st_mtime_ns == mtime  # reused, not rewritten
    assert torch.equal(first.train.images, second.train.images)
    files[0].write_bytes(files[0].read_bytes()[:100])  # a truncated (interrupted) file
    third = qdata.load(cfg)
    assert "unreadable" in capsys.readouterr().out
    assert torch.equal(first.train.images, third.train.images)


def test_synthetic_source_and_smoke(tmp_path):
    cfg = Config.from_env(smoke=True, cache_dir=str(tmp_path))
    s = qdata.load(cfg)
    assert s.num_classes == 29 and s.train.images.shape[-1] == 32
    assert qdata.leakage(s) == {"train-val": 0, "train-test": 0, "val-test": 0}
    with pytest.raises(ValueError, match="split='export'"):
        qdata.load(Config(data="synthetic", split="export", cache_dir=str(tmp_path)))


# --- bad input -----------------------------------------------------------------------

def test_missing_path(tmp_path):
    with pytest.raises(qdata.DataError, match="no such folder"):
        qdata.load(cfg_for(tmp_path / "nope", tmp_path))


def test_folder_without_data_yaml(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(qdata.DataError, match="no data.yaml"):
        qdata.load(cfg_for(tmp_path / "empty", tmp_path))


def test_nc_not_matching_names(tmp_path):
    root = write_export(tmp_path / "exp")
    (root / "data.yaml").write_text("nc: 5\nnames: ['a', 'b']\n")
    with pytest.raises(qdata.DataError, match="nc=5 does not match the 2 entries"):
        qdata.load(cfg_for(root, tmp_path))


def test_label_out_of_range(tmp_path):
    root = write_export(tmp_path / "exp")
    lab = sorted((root / "labels" / "train").iterdir())[1]
    lab.write_text("7 0.5 0.5 0.2 0.2\n")
    with pytest.raises(qdata.DataError, match=r"class id 7 out of range 0\.\.2"):
        qdata.load(cfg_for(root, tmp_path))


def test_malformed_label(tmp_path):
    root = write_export(tmp_path / "exp")
    sorted((root / "labels" / "train").iterdir())[1].write_text("1 0.5 oops\n")
    with pytest.raises(qdata.DataError, match="expected 'class cx cy w h'"):
        qdata.load(cfg_for(root, tmp_path))


def test_undecodable_image_warns_with_its_name(tmp_path):
    root = write_export(tmp_path / "exp")
    bad = sorted((root / "images" / "train").iterdir())[2]
    bad.write_bytes(b"not a jpeg")
    with pytest.warns(UserWarning, match=bad.name):
        s = qdata.load(cfg_for(root, tmp_path, split="export"))
    assert bad.name not in s.train.files


def test_many_undecodable_images_is_an_error(tmp_path):
    root = write_export(tmp_path / "exp")
    for p in sorted((root / "images" / "train").iterdir())[:12]:
        p.write_bytes(b"junk")
    with pytest.raises(qdata.DataError, match="could not be decoded"):
        qdata.load(cfg_for(root, tmp_path))


@pytest.mark.parametrize("kw,match", [
    ({"split": "random"}, "split='random'"),
    ({"image_size": 8}, "image_size=8"),
    ({"device": "tpu"}, "device='tpu'"),
    ({"epochs": 0}, "epochs=0"),
    ({"precision": "fp16"}, "precision='fp16'.*QLIB_PRECISION"),
])
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        Config(**kw)


def test_unknown_config_parameter():
    with pytest.raises(ValueError, match="unknown Config parameter"):
        Config.from_env(colour="red")


def test_config_from_env(monkeypatch):
    monkeypatch.setenv("QLIB_IMAGE_SIZE", "48")
    monkeypatch.setenv("QLIB_SEED", "3")
    cfg = Config.from_env(seed=5)
    assert cfg.image_size == 48 and cfg.seed == 5  # parameters win over the environment
    assert cfg.precision == "fp32"  # the default: bf16 autocast is slower on CPUs without AMX
    monkeypatch.setenv("QLIB_PRECISION", "bf16-mixed")
    assert Config.from_env().precision == "bf16-mixed"
    monkeypatch.delenv("QLIB_PRECISION")
    monkeypatch.setenv("QLIB_IMAGE_SIZE", "big")
    with pytest.raises(ValueError, match="QLIB_IMAGE_SIZE='big'"):
        Config.from_env()


def test_gtsrb_offline_names_the_alternatives(tmp_path, monkeypatch):
    import torchvision

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "GTSRB", offline)
    with pytest.raises(qdata.DataError, match="synthetic"):
        qdata.load(Config(data="gtsrb", cache_dir=str(tmp_path)))


@pytest.mark.skipif(not os.environ.get("QLIB_DATA"), reason="QLIB_DATA does not point at a real export")
def test_real_export():
    cfg = Config.from_env()
    s = qdata.load(cfg)
    assert qdata.leakage(s) == {"train-val": 0, "train-test": 0, "val-test": 0}
    ex = qdata.load(Config.from_env(split="export"))
    assert qdata.leakage(ex)["train-test"] > 0
    assert sum(len(x) for _, x in s) == sum(len(x) for _, x in ex)
