"""qlib.bench: the benchmark of every saved variant."""
import json

import pytest
import torch

from qlib import bench, export, models


def test_run_times_a_saved_variant_and_names_the_machine(tmp_path):
    export.save(models.resnet18(29), tmp_path / "fp32.safetensors")
    res = bench.run(tmp_path, batch_size=4, threads=1, image_size=32, rounds=1, warmup=1, progress=False)
    assert [r["variant"] for r in res["rows"]] == ["fp32"]
    assert res["rows"][0]["ms_per_batch"] > 0 and res["rows"][0]["speedup_vs_fp32"] == pytest.approx(1.0)
    # the times belong to this machine: bench.json says which
    assert res["machine"]["kernels"] == torch.backends.cpu.get_cpu_capability() and res["threads"] == 1


def test_run_reports_warm_and_cold_times_and_memory(tmp_path):
    fp = models.resnet18(29)
    export.save(fp, tmp_path / "fp32.safetensors")
    res = bench.run(tmp_path, batch_size=2, threads=1, image_size=32, rounds=2, warmup=0, progress=False, block=2)
    (row,) = res["rows"]
    assert res["block"] == 2 and row["ms_cold"] > 0 and row["speedup_cold"] == pytest.approx(1.0)
    assert row["memory_mb"] == pytest.approx(sum(t.numel() * t.element_size() for t in fp.state_dict().values()) / 1e6)
    assert "ms cold" in bench.format_table(res) and "fp32" in bench.format_table(res)
    with pytest.raises(ValueError, match="block=0"):
        bench.run(tmp_path, block=0, progress=False)


def test_run_records_which_models_ran_with_batchnorm_folded(tmp_path):
    from qlib import quant

    fp = models.resnet18(29).eval()
    export.save(fp, tmp_path / "fp32.safetensors")
    export.save(quant.fold_batchnorm(fp), tmp_path / "folded.safetensors")
    res = bench.run(tmp_path, batch_size=2, threads=1, image_size=32, rounds=1, warmup=0, progress=False, block=1)
    assert {r["variant"]: r["bn_folded"] for r in res["rows"]} == {"fp32": False, "folded": True}


def test_run_rejects_an_empty_folder_and_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="no saved variant"):
        bench.run(tmp_path, progress=False)
    with pytest.raises(ValueError, match="rounds=0"):
        bench.run(tmp_path, rounds=0, progress=False)


def test_missing_names_the_recorded_variants_without_a_file(tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "r").mkdir()
    export.save(models.resnet18(29), tmp_path / "v" / "gptq_w4.safetensors")
    (tmp_path / "r" / "04_gptq.json").write_text(json.dumps(
        [{"variant_file": "gptq_w4"}, {"variant_file": "gptq_w2"}, {"variant_file": None}, {"method": "rtn"}]))
    (tmp_path / "r" / "07_qat.json").write_text(json.dumps([{"variant_file": "gptq_w2"}, {"variant_file": "lsq_w4a4"}]))
    (tmp_path / "r" / "bench.json").write_text(json.dumps({"rows": [{"variant_file": "not_a_chapter"}]}))
    absent = bench.missing(tmp_path / "v", tmp_path / "r")
    assert absent == {"gptq_w2": ["04_gptq", "07_qat"], "lsq_w4a4": ["07_qat"]}
    assert bench.describe_missing(absent) == "gptq_w2 (04_gptq/07_qat), lsq_w4a4 (07_qat)"
    assert bench.describe_missing(absent, code=True) == "`gptq_w2` (04_gptq/07_qat), `lsq_w4a4` (07_qat)"


def test_command_line_says_which_recorded_variants_it_cannot_time(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("QLIB_SMOKE", "1")
    monkeypatch.delenv("QLIB_RESULTS", raising=False)
    from qlib import Config, results
    cfg = Config.from_env()
    vdir = results.variant_path(cfg, "fp32").parent
    vdir.mkdir(parents=True, exist_ok=True)  # variant_path makes the folder
    export.save(models.resnet18(29), vdir / "fp32.safetensors")
    rdir = results.results_dir(cfg)
    rdir.mkdir(parents=True, exist_ok=True)
    (rdir / "05_awq.json").write_text(json.dumps([{"variant_file": "awq_w4"}]))
    out = tmp_path / "bench.json"
    assert bench.main(["--rounds", "1", "--threads", "1", "--image-size", "32", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "awq_w4 (05_awq)" in err and "not timed" in err
    assert [r["variant"] for r in json.loads(out.read_text())["rows"]] == ["fp32"]


def test_missing_after_leaves_out_what_the_chapters_to_run_will_save(tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "04_gptq.json").write_text(json.dumps([{"variant_file": "gptq_w2"}]))
    (tmp_path / "r" / "07_qat.json").write_text(json.dumps([{"variant_file": "lsq_w4a4"}]))
    assert bench.missing_after(tmp_path / "v", tmp_path / "r", "08") == {"gptq_w2": ["04_gptq"], "lsq_w4a4": ["07_qat"]}
    assert bench.missing_after(tmp_path / "v", tmp_path / "r", "07 08") == {"gptq_w2": ["04_gptq"]}
    assert bench.missing_after(tmp_path / "v", tmp_path / "r", ["04", "07", "08"]) == {}
    with pytest.raises(ValueError, match=r"\['8'\] are not two-digit chapter numbers"):
        bench.missing_after(tmp_path / "v", tmp_path / "r", "07 8")


def test_check_fails_naming_the_missing_files_and_the_chapters_to_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("QLIB_RESULTS", str(tmp_path / "r"))
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "05_awq.json").write_text(json.dumps([{"variant_file": "awq_w4"}]))
    assert bench.main(["--check", "08"]) == 1
    err = capsys.readouterr().err
    assert "awq_w4 (05_awq)" in err and 'make book CHAPTERS="05 08"' in err and "MISSING_OK=1" in err
    assert bench.main(["--check", "05 08"]) == 0          # chapter 05 will save it
    vdir = tmp_path / "cache" / "variants"
    vdir.mkdir(parents=True)
    export.save(models.resnet18(29), vdir / "awq_w4.safetensors")
    assert bench.main(["--check", "08"]) == 0             # the file is there
    assert bench.main(["--check", "8"]) == 2 and "two-digit" in capsys.readouterr().err
    assert not (tmp_path / "r" / "bench.json").exists()   # a check times nothing and writes nothing
