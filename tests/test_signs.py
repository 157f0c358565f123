"""Tests of the synthetic traffic-sign generator (small sizes: the whole file runs in seconds)."""
import re

import numpy as np
import pytest

from qlib import scenes, signs

SIZE = 32


@pytest.fixture(scope="module")
def data():
    return scenes.generate(12, size=SIZE, seed=0)  # two tracks per class: 10 + 2 frames


def test_class_names():
    assert len(signs.CLASS_NAMES) == signs.NUM_CLASSES == 29
    assert len(set(signs.CLASS_NAMES)) == 29
    assert signs.CLASS_NAMES[0] == "Road narrows on right"
    assert signs.CLASS_NAMES[1] == "Speed limit 50"
    assert signs.CLASS_NAMES[22] == "Stop"
    assert signs.CLASS_NAMES[28] == "Uneven road"


def test_shapes_dtypes_and_balance(data):
    x, y, groups = data
    assert x.shape == (29 * 12, SIZE, SIZE, 3) and x.dtype == np.uint8
    assert y.shape == (29 * 12,) and y.dtype == np.int64
    assert len(groups) == len(y)
    assert np.array_equal(np.bincount(y, minlength=29), np.full(29, 12))


def test_image_statistics(data):
    x, y, _ = data
    per_image_std = x.reshape(len(x), -1).std(1)
    assert per_image_std.min() > 3, "some image is (nearly) constant"
    assert 40 < x.mean() < 200 and 25 < x.std() < 110
    means = np.stack([x[y == c].mean(0) for c in range(29)]).reshape(29, -1)
    dists = np.abs(means[:, None] - means[None]).mean(-1)
    assert dists[~np.eye(29, dtype=bool)].min() > 1, "two classes give the same images"


def test_determinism():
    a = scenes.generate(2, size=16, seed=3)
    b = scenes.generate(2, size=16, seed=3)
    c = scenes.generate(2, size=16, seed=4)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert not np.array_equal(a[0], c[0])


def test_frames_do_not_depend_on_how_many_are_asked():
    short, _, _ = scenes.generate(1, size=16, seed=5)
    long, y, _ = scenes.generate(3, size=16, seed=5)
    assert np.array_equal(short, long[::3])
    assert np.array_equal(scenes.variations(7, n=2, size=16, seed=5)[0], long[y == 7][0])


def test_groups_are_tracks_of_one_class(data):
    _, y, groups = data
    pattern = re.compile(r"^syn_(\d{5})_(\d{5})$")
    by_group = {}
    for g, label in zip(groups, y):
        m = pattern.match(g)
        assert m, g
        assert int(m.group(1)) == label
        by_group.setdefault(g, set()).add(int(label))
    assert all(len(v) == 1 for v in by_group.values())
    sizes = sorted({groups.count(g) for g in by_group})
    assert sizes == [2, scenes.TRACK_LEN]
    assert len(by_group) == 29 * 2


def test_frames_of_a_track_are_alike(data):
    x, _, groups = data
    x = x.astype(np.float32)
    idx = [i for i, g in enumerate(groups) if g == "syn_00003_00000"]
    other = [i for i, g in enumerate(groups) if g == "syn_00003_00001"]
    within = np.abs(x[idx[0]] - x[idx[1]]).mean()
    across = np.abs(x[idx[0]] - x[other[0]]).mean()
    assert within < across


def test_variations_and_clean():
    v = scenes.variations(20, n=3, size=SIZE, seed=1)
    assert v.shape == (3, SIZE, SIZE, 3) and v.dtype == np.uint8
    assert not np.array_equal(v[0], v[1])
    clean = [signs.render_clean(c, size=SIZE) for c in range(29)]
    assert all(im.shape == (SIZE, SIZE, 3) and im.dtype == np.uint8 for im in clean)
    assert np.array_equal(clean[0], signs.render_clean(0, size=SIZE))
    flat = np.stack(clean).reshape(29, -1).astype(np.int16)
    assert min(np.abs(flat[i] - flat[j]).max() for i in range(29) for j in range(i)) > 30
    # mirror pairs differ, and are (nearly) mirror images of each other
    left, right = signs.render_clean(26, size=SIZE), signs.render_clean(27, size=SIZE)
    assert np.abs(left.astype(int) - right[:, ::-1]).mean() < np.abs(left.astype(int) - right).mean()


@pytest.mark.parametrize("call, name, value", [
    (lambda: scenes.generate(0), "n_per_class", "0"),
    (lambda: scenes.generate(2, size=8), "size", "8"),
    (lambda: scenes.generate(2, size=16, seed=-1), "seed", "-1"),
    (lambda: scenes.generate(1.5), "n_per_class", "1.5"),
    (lambda: scenes.variations(29), "cls", "29"),
    (lambda: scenes.variations(-1), "cls", "-1"),
    (lambda: scenes.variations(0, n=0), "n", "0"),
    (lambda: signs.render_clean(3, size=15), "size", "15"),
    (lambda: signs.render_clean(True), "cls", "True"),
])
def test_bad_arguments(call, name, value):
    with pytest.raises(ValueError, match=rf"^{name}={re.escape(value)}: expected an integer"):
        call()
