"""qlib.bench: the benchmark of every saved variant."""
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


def test_run_rejects_an_empty_folder_and_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="no saved variant"):
        bench.run(tmp_path, progress=False)
    with pytest.raises(ValueError, match="rounds=0"):
        bench.run(tmp_path, rounds=0, progress=False)
