"""Unit tests of qlib.lsq_curve: the fine-tune measured along the way (``run``) and its command
line (``python -m qlib.lsq_curve``)."""
import pytest
import torch

from qlib import lsq, lsq_curve, measure
from qlib.qat import QATSettings
from tiny import FAST, fp, splits, x  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

def test_run_measures_without_changing_the_training(fp, splits, x):
    ref = measure.Reference(fp, splits)
    s = QATSettings(epochs=2, w_bits=4, a_bits=4, optimizer="adam", lr=1e-3, step_lr=1e-2,
                    distill=1.0, mixup=0.4, **{**FAST, "max_steps": 4})
    seen = []
    m, rows = lsq_curve.run(fp, splits, s, ref, every=3, calib_x=x, progress=False, on_row=seen.append)
    assert [r["step"] for r in rows] == [0, 3, 4] and seen == rows  # every 3 steps, and the end
    assert rows[0] == {"step": 0, "train_seconds": 0.0, "recovered": 0.0, **ref.row(lsq.lsq_model(fp, s, calib_x=x))}
    assert 0 < rows[1]["train_seconds"] <= rows[2]["train_seconds"]
    assert rows[2] == {**ref.row(m), "step": 4, "train_seconds": rows[2]["train_seconds"],
                       "recovered": measure.recovery(rows[0]["agreement"], rows[2]["agreement"])}
    plain, _ = lsq.lsq_train(fp, splits, s, calib_x=x, progress=False, validate=False)
    a, b = m.state_dict(), plain.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # measuring changed nothing in the training
    assert any(not torch.equal(a[k], v) for k, v in lsq.lsq_model(fp, s, calib_x=x).state_dict().items())
    with pytest.raises(ValueError, match="every=0: expected an integer >= 1"):
        lsq_curve.run(fp, splits, s, ref, every=0, calib_x=x)


def test_command_line_rejects_bad_arguments_before_loading_data(capsys, monkeypatch):
    monkeypatch.setenv("QLIB_DATA", "/nonexistent/folder")  # never read: the arguments fail first
    assert lsq_curve.main(["--config", "W9A4"]) == 2
    assert "config='W9A4'" in capsys.readouterr().err
    assert lsq_curve.main(["--steps", "0"]) == 2
    assert "--steps 0: expected an integer >= 1" in capsys.readouterr().err
    assert lsq_curve.main(["--minutes", "0"]) == 2
    assert "minutes=0.0: expected a number in (0.0, 1440.0]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        lsq_curve.main(["--learn", "biases"])
    assert "invalid choice: 'biases'" in capsys.readouterr().err


def test_command_line_runs_end_to_end_in_smoke_mode(tmp_path, monkeypatch, capsys):
    """Data, baseline, GPTQ start, the measured fine-tune and its JSON (synthetic smoke data)."""
    import json
    monkeypatch.setenv("QLIB_SMOKE", "1")
    monkeypatch.setenv("QLIB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "runs" / "w4a8.json"
    assert lsq_curve.main(["--config", "W4A8", "--steps", "3", "--every", "2", "--no-augment", "--minutes", "10",
                           "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["config"] == "W4A8" and res["settings"]["max_steps"] == 3 and res["settings"]["augment"] is False
    assert res["settings"]["minutes"] == 10
    assert [r["step"] for r in res["rows"]] == [0, 2, 3]
    assert all(0 <= r["agreement"] <= 1 and r["kl"] >= 0 for r in res["rows"])
    assert list(out.parent.iterdir()) == [out]  # written under a temporary name, then renamed
    printed = capsys.readouterr().out
    assert "W4A8: 3 steps at most, as many as 10 min of training hold" in printed and printed.count("agreement") == 4  # header + 3 rows
