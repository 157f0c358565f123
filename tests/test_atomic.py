"""qlib.atomic: a file is replaced whole or not at all."""
import os
import stat

import pytest
import torch

from qlib import atomic


def test_a_failed_write_leaves_neither_target_nor_temporary(tmp_path, monkeypatch):
    target = tmp_path / "c" / "x.pt"

    def boom(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic.torch_save({"a": 1}, target)
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "rows.json"
    target.write_text("old")
    with pytest.raises(OSError, match="simulated"):
        with atomic.replacing(target) as tmp:
            tmp.write_text("half of the n")
            raise OSError("disk full (simulated)")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["rows.json"]


def test_a_finished_write_replaces_the_file_with_ordinary_permissions(tmp_path):
    target = tmp_path / "deep" / "model.pt"
    mask = os.umask(0o022)
    try:
        assert atomic.torch_save({"w": torch.arange(3)}, target) == target
    finally:
        os.umask(mask)
    assert torch.equal(torch.load(target)["w"], torch.arange(3))
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not mkstemp's private 0600
    assert os.listdir(target.parent) == ["model.pt"]
