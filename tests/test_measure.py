"""qlib.measure and qlib.results: the protocol every chapter uses."""
import json
import math
import time

import pytest
import torch

from qlib import Config, measure, models, results
from qlib import data as qdata


def test_accuracy_ci_brackets_and_widens_with_correlation():
    labels = torch.arange(200) % 5
    pred = labels.clone()
    pred[:40] = (pred[:40] + 1) % 5  # 80% correct
    indep = [str(i) for i in range(200)]
    tracks = [str(i // 20) for i in range(200)]  # errors concentrated in two tracks
    acc, lo, hi = measure.accuracy_ci(pred, labels, indep)
    assert acc == pytest.approx(0.8) and lo < 0.8 < hi
    _, lo2, hi2 = measure.accuracy_ci(pred, labels, tracks)
    assert hi2 - lo2 > hi - lo  # correlated frames: a wider, honest interval


def test_fidelity_identity_and_flip():
    z = torch.randn(50, 7)
    f = measure.fidelity(z, z)
    assert f["agreement"] == 1.0 and abs(f["kl"]) < 1e-6
    assert measure.fidelity(-z, z)["agreement"] < 0.5


def test_temperature_fit_finds_a_pure_rescaling_and_never_beats_nothing():
    ref = torch.randn(300, 10, generator=torch.Generator().manual_seed(0)) * 3
    tau, kl = measure.temperature_fit(ref * 0.5, ref)  # under-confident by 2x: tau 0.5 undoes it
    assert tau == pytest.approx(0.5, rel=0.02) and kl < 1e-3
    noisy = ref + torch.randn(300, 10, generator=torch.Generator().manual_seed(1))
    tau, kl = measure.temperature_fit(noisy, ref)
    assert kl <= measure.fidelity(noisy, ref)["kl"] + 1e-12  # tau = 1 is on the grid
    assert kl > 0.01  # noise that changes logits differently per class is no rescaling
    for bad in (dict(lo=1.5), dict(hi=0.9), dict(n=1)):
        with pytest.raises(ValueError, match="expected 0 < lo < 1 < hi"):
            measure.temperature_fit(noisy, ref, **bad)
    with pytest.raises(ValueError, match="same shape"):
        measure.temperature_fit(noisy[:, :5], ref)


def test_margin_error_is_zero_for_the_reference_and_negative_past_the_margin_on_a_flip():
    ref = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.5, 2.0]])
    m, e = measure.margin_error(ref + 7.0, ref)  # a constant per image changes no margin
    assert torch.allclose(m, torch.tensor([2.0, 0.5], dtype=m.dtype)) and torch.all(e.abs() < 1e-12)
    q = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 2.5]])  # image 2: the runner-up goes ahead
    m, e = measure.margin_error(q, ref)
    assert e[0] == 0 and e[1] == pytest.approx(-1.0) and e[1] < -m[1]
    assert (q.argmax(1) != ref.argmax(1)).tolist() == (e < -m).tolist()
    with pytest.raises(ValueError, match="same shape"):
        measure.margin_error(q, ref[:1])


def test_noise_model_predicts_the_flips_of_gaussian_margin_noise():
    # two-class logits: the margin is z0 - z1; noise of known sd on the margin flips
    # Phi(-margin / sd) of the images in expectation — the model must count that many
    g = torch.Generator().manual_seed(0)
    n, sd = 20000, 0.8
    margin = torch.rand(n, generator=g, dtype=torch.double) * 4
    ref = torch.stack([margin, torch.zeros(n, dtype=torch.double)], 1)
    noisy = ref + torch.stack([torch.randn(n, generator=g, dtype=torch.double) * sd,
                               torch.zeros(n, dtype=torch.double)], 1)
    nm = measure.noise_model(noisy, ref)
    assert nm["sd"] == pytest.approx(sd, rel=0.02) and abs(nm["mean"]) < 0.03
    assert nm["predicted"] == pytest.approx(nm["disagreements"], rel=0.05)
    assert nm["disagreements"] > 0.05 * n
    # no error, no predicted flip; a mask restricts where the error is measured
    assert measure.noise_model(ref, ref)["predicted"] == 0.0
    near = margin < 1.0
    assert measure.noise_model(noisy, ref, where=near)["sd"] == pytest.approx(sd, rel=0.05)
    with pytest.raises(ValueError, match="boolean mask"):
        measure.noise_model(noisy, ref, where=near[:10])
    with pytest.raises(ValueError, match="same shape"):
        measure.noise_model(noisy[:, :1], ref)


def test_expected_flips_grows_with_the_spread_and_sd_for_flips_inverts_it():
    m = torch.linspace(0, 5, 1001, dtype=torch.double)
    flips = [measure.expected_flips(m, 0.0, s) for s in (0.0, 0.2, 0.5, 1.0)]
    assert flips[0] == 0.5 and flips == sorted(flips)  # margin 0 counts half at zero spread
    for target in (10.0, 100.0):
        s = measure.sd_for_flips(m, 0.0, target)
        assert measure.expected_flips(m, 0.0, s) == pytest.approx(target, rel=1e-4)
    assert measure.expected_flips(m, -1.0, 0.0) > 150  # a negative mean error flips by itself
    with pytest.raises(ValueError, match="expected at least"):
        measure.sd_for_flips(m, -1.0, 10.0)
    with pytest.raises(ValueError, match="fewer than"):
        measure.sd_for_flips(m, 0.0, 600.0)
    with pytest.raises(ValueError, match="margins >= 0"):
        measure.expected_flips(-m, 0.0, 1.0)
    with pytest.raises(ValueError, match="sd >= 0"):
        measure.expected_flips(m, 0.0, -1.0)


def close(a, b):
    # the same images in batches of another size: equal up to float rounding of the matmul
    return torch.allclose(a, b, rtol=0, atol=1e-5)


def test_reference_measures_held_out_images_only(tmp_path):
    cfg = Config.from_env(smoke=True, cache_dir=str(tmp_path))
    s = qdata.load(cfg)
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 29)).eval()
    ref = measure.Reference(m, s)
    assert len(ref.fid_set) == len(s.val) + len(s.test)
    assert torch.equal(ref.fid_set.images, torch.cat([s.val.images, s.test.images]))
    row = ref.row(m)
    assert row["agreement"] == 1.0 and row["n_test"] == len(s.test)
    assert ref.fid_groups == list(s.val.groups) + list(s.test.groups)  # each fidelity image's track
    # the one-pass logits equal separate passes over the test split and the fidelity set
    test, fid = ref.logits(m)
    assert close(test, models.predict(m, s.test)) and close(fid, models.predict(m, ref.fid_set))


def test_reference_subsample_keeps_the_whole_test_split(tmp_path):
    cfg = Config.from_env(smoke=True, cache_dir=str(tmp_path))
    s = qdata.load(cfg)
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 29)).eval()
    ref = measure.Reference(m, s, fidelity_limit=7, seed=3)
    assert len(ref.fid_set) == 7 and len(ref.fp_test) == len(s.test)
    held = torch.cat([s.val.images, s.test.images])
    groups = list(s.val.groups) + list(s.test.groups)
    for img, g in zip(ref.fid_set.images, ref.fid_groups):  # the subsample's tracks follow its images
        assert g in {groups[i] for i in range(len(held)) if torch.equal(held[i], img)}
    test, fid = ref.logits(m)
    assert close(fid, models.predict(m, ref.fid_set)) and close(test, models.predict(m, s.test))
    with pytest.raises(ValueError, match="fidelity_limit=0"):
        measure.Reference(m, s, fidelity_limit=0)


def test_latency_protocol():
    m = torch.nn.Conv2d(3, 4, 3).eval()
    r = measure.latency(m, image_size=16, batch_size=4, runs=3, warmup=1)
    assert r["runs"] == 3 and r["spread"] >= 1.0 and r["images_per_s"] > 0
    with pytest.raises(ValueError, match="runs=0"):
        measure.latency(m, runs=0)


def test_latencies_interleave_the_models_timed_batches():
    calls = []

    class Named(torch.nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, x):
            calls.append((self.name, torch.is_inference_mode_enabled()))
            return x

    r = measure.latencies({"a": Named("a"), "b": Named("b")}, image_size=8, batch_size=2, warmup=1, runs=3)
    assert [n for n, _ in calls] == ["a", "b"] + ["a", "b"] * 3  # warm-ups, then A B A B A B
    assert all(inference for _, inference in calls)  # no autograd graph is recorded
    assert set(r) == {"a", "b"} and all(v["runs"] == 3 and v["ms_min"] <= v["ms_per_batch"] <= v["ms_max"]
                                        for v in r.values())
    with pytest.raises(ValueError, match="expected a non-empty dict"):
        measure.latencies({})


def test_latencies_blocks_time_cold_and_warm_batches(monkeypatch):
    """block=3: each round runs a model three times back to back (A A A B B B); the first batch of
    a block is the cold one, the two after it the warm ones. A fake clock makes a model's first
    batch after another model's take 10 ms and a repeated one 1 ms."""
    clock = {"now": 0.0, "last": None}
    monkeypatch.setattr(measure.time, "perf_counter", lambda: clock["now"])
    calls = []

    class Cached(torch.nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, x):
            clock["now"] += 0.001 if clock["last"] == self.name else 0.010
            clock["last"] = self.name
            calls.append(self.name)
            return x

    r = measure.latencies({"a": Cached("a"), "b": Cached("b")}, image_size=8, batch_size=2, warmup=1, runs=2, block=3)
    assert calls == ["a", "b"] + ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3
    for v in r.values():
        assert v["ms_cold"] == pytest.approx(10.0) and v["ms_per_batch"] == pytest.approx(1.0)
        assert v["spread"] == pytest.approx(1.0) and v["runs"] == 2 and v["block"] == 3
    one = measure.latencies({"a": Cached("a"), "b": Cached("b")}, image_size=8, batch_size=2, warmup=0, runs=3)
    assert all(v["ms_cold"] == v["ms_per_batch"] == pytest.approx(10.0) for v in one.values())  # block 1: every batch is a first
    with pytest.raises(ValueError, match="block=0"):
        measure.latencies({"a": Cached("a")}, block=0)


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")  # torch.ao deprecation
def test_memory_mb_counts_the_tensors_as_stored():
    lin = torch.nn.Linear(100, 100)
    assert measure.memory_mb(lin) == pytest.approx((100 * 100 + 100) * 4 / 1e6)
    q = torch.ao.nn.quantized.Linear(100, 100)  # int8 weight (1 byte each), float bias, scale, zero point
    assert measure.memory_mb(q) * 1e6 == pytest.approx(100 * 100 + 100 * 4, abs=32)


def test_file_size_is_the_real_file(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"x" * 1_500_000)
    assert measure.file_size_mb(p) == 1.5


def test_results_record_and_table(tmp_path, monkeypatch):
    monkeypatch.setenv("QLIB_RESULTS", str(tmp_path))
    results.record("04_gptq", [{"method": "gptq", "bits": 4, "accuracy": torch.tensor(0.9)}], data="synthetic")
    results.record("03_basics", [{"method": "rtn", "bits": 8, "accuracy": 0.95}])
    rows = json.loads((tmp_path / "04_gptq.json").read_text())
    assert rows[0]["accuracy"] == pytest.approx(0.9) and rows[0]["chapter"] == "04_gptq"
    (tmp_path / "bench.json").write_text(json.dumps({"rows": [{"variant": "fp32"}]}))  # not a chapter's rows
    df = results.table()
    assert set(df["method"]) == {"gptq", "rtn"} and "commit" in df.columns and len(df) == 2
    with pytest.raises(ValueError, match="method"):
        results.record("x", [{"bits": 4}])


def test_write_json_never_leaves_a_partial_file(tmp_path):
    path = tmp_path / "out" / "rows.json"
    assert results.write_json({"rows": [1, torch.tensor(2.5)]}, path) == path
    assert json.loads(path.read_text()) == {"rows": [1, 2.5]}
    loop = [1]
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular reference"):
        results.write_json({"rows": loop}, path)  # fails halfway through the dump
    assert json.loads(path.read_text()) == {"rows": [1, 2.5]}  # the old file, whole
    assert [p.name for p in path.parent.iterdir()] == ["rows.json"]  # and no temporary file left


def test_smoke_results_never_touch_the_book(tmp_path, monkeypatch):
    monkeypatch.delenv("QLIB_RESULTS", raising=False)
    cfg = Config.from_env(smoke=True, cache_dir=str(tmp_path))
    path = results.record("99_test", [{"method": "x"}], cfg)
    assert str(path).startswith(str(tmp_path))


def test_recovery_is_the_share_of_the_ptq_loss_won_back():
    assert measure.recovery(0.9, 0.95) == pytest.approx(0.5)  # half of the 10% PTQ lost
    assert measure.recovery(0.9, 1.0) == pytest.approx(1.0) and measure.recovery(0.9, 0.9) == 0.0
    assert measure.recovery(0.9, 0.8) == pytest.approx(-1.0)  # lost as much again
    assert math.isnan(measure.recovery(1.0, 0.99))  # nothing to win back
    for bad in (1.5, -0.1, float("nan"), "0.9", True):
        with pytest.raises(ValueError, match=r"agreement=.*expected an agreement in \[0, 1\]"):
            measure.recovery(0.9, bad)


def _tracks(n_tracks, per_track, ptq_lost, qat_lost):
    """Per-image agreement of two models on n_tracks tracks of per_track frames, each model
    disagreeing with FP on every frame of the listed tracks (frames of a track flip together)."""
    groups = [f"track{t}" for t in range(n_tracks) for _ in range(per_track)]
    agree = lambda lost: torch.tensor([int(g[5:]) not in lost for g in groups])
    return agree(ptq_lost), agree(qat_lost), groups


def test_recovery_ci_is_recovery_with_a_track_bootstrap_interval():
    p, q, groups = _tracks(40, 5, ptq_lost={0, 1, 2, 3}, qat_lost={0, 1})
    r, lo, hi = measure.recovery_ci(p, q, groups, seed=1)
    assert r == pytest.approx(measure.recovery(p.double().mean().item(), q.double().mean().item())) == pytest.approx(0.5)
    assert lo <= r <= hi and lo < hi
    # the same flips counted as independent images give a narrower interval: tracks flip together
    _, lo_i, hi_i = measure.recovery_ci(p, q, [str(i) for i in range(len(p))], seed=1)
    assert hi_i - lo_i < hi - lo
    # a QAT model with the same answers wins nothing back, in every replicate
    assert measure.recovery_ci(p, p.clone(), groups) == (0.0, 0.0, 0.0)
    # QAT only ever fixes PTQ's tracks here, so no replicate can exceed all of the loss
    assert hi <= 1.0
    # PTQ agreeing everywhere leaves nothing to recover: NaN, not a number made up
    ok = torch.ones(len(p), dtype=torch.bool)
    assert all(math.isnan(v) for v in measure.recovery_ci(ok, q, groups))


def test_recovery_ci_refuses_mismatched_or_non_boolean_input():
    p, q, groups = _tracks(10, 3, ptq_lost={0}, qat_lost=set())
    for args, match in (((p, q[:-1], groups), "expected two boolean vectors"),
                        ((p, q, groups[:-1]), "one group per image"),
                        ((p.float(), q.float(), groups), "expected two boolean vectors"),
                        ((p[:0], q[:0], []), "non-zero length")):
        with pytest.raises(ValueError, match=match):
            measure.recovery_ci(*args)
    for kw in ({"n_boot": 0}, {"level": 1.0}, {"n_boot": 2.5}):
        with pytest.raises(ValueError, match=r"n_boot=.*level=.*expected"):
            measure.recovery_ci(p, q, groups, **kw)


def test_timeline_times_every_model_and_the_probe_in_each_round():
    class Sleeper(torch.nn.Module):
        def forward(self, x):
            time.sleep(0.003)
            return x

    old = torch.get_num_threads()
    tl = measure.timeline({"ref": torch.nn.Identity(), "slow": Sleeper()}, seconds=0.3, image_size=8, batch_size=2,
                          threads=1, per_round=2, probe_size=32)
    n = len(tl["t"])
    assert n >= 1 and len(tl["probe_ms"]) == n and all(len(v) == n for v in tl["ms"].values())
    assert tl["t"] == sorted(tl["t"]) and tl["t"][-1] < 0.3  # a round starts only within the time asked
    assert all(ms >= 3.0 for ms in tl["ms"]["slow"]) and all(p > 0 for p in tl["probe_ms"])
    assert len(tl["round_ms"]) == len(tl["steal_ms"]) == n and all(r >= 2 * 3.0 for r in tl["round_ms"])
    assert all(st is None or st >= 0 for st in tl["steal_ms"])
    assert torch.get_num_threads() == old  # the thread count is restored
    with pytest.raises(ValueError, match="seconds=0"):
        measure.timeline({"a": torch.nn.Identity()}, seconds=0)
    with pytest.raises(ValueError, match="expected a non-empty dict"):
        measure.timeline({})
    with pytest.raises(ValueError, match="min_rounds=0"):
        measure.timeline({"a": torch.nn.Identity()}, min_rounds=0)


def test_timeline_runs_its_minimum_rounds_when_the_time_is_too_short_for_them():
    class Sleeper(torch.nn.Module):  # one batch outlasts the whole time asked: without min_rounds, one round
        def forward(self, x):
            time.sleep(0.02)
            return x

    tl = measure.timeline({"slow": Sleeper()}, seconds=0.01, image_size=8, batch_size=2, threads=1, per_round=1,
                          probe_size=32, min_rounds=3)
    assert len(tl["t"]) == 3 and tl["t"][1] > 0.01  # the later rounds start after the time asked
    assert measure.timeline_speedups({**tl, "ms": {"ref": tl["ms"]["slow"], "slow": tl["ms"]["slow"]}}, "ref")["rounds"] == 3


def test_stolen_ms_reads_the_hypervisors_count_or_none(monkeypatch, tmp_path):
    got = measure.stolen_ms()
    assert got is None or got >= 0
    fake = tmp_path / "stat"
    fake.write_text("cpu  1 2 3 4 5 6 7 25 0 0\ncpu0 1 2 3 4 5 6 7 25 0 0\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: real_open(fake if p == "/proc/stat" else p, *a, **k))
    assert measure.stolen_ms() == pytest.approx(25 * 1e3 / measure.os.sysconf("SC_CLK_TCK"))
    fake.write_text("intr 1 2\n")
    assert measure.stolen_ms() is None


def test_timeline_speedups_split_the_rounds_by_the_probe():
    """Eight rounds. The probe's fastest half (1, 1, 1, 1.1 ms: median 1) is the quiet set; a round
    whose probe takes at least 1.2 times that is loaded (the three at 2 and 3 ms). Each round's
    speed-up is measured in that round."""
    tl = {"t": list(range(8)), "probe_ms": [2, 1, 1, 3, 1, 1.1, 3, 1.15],
          "ms": {"fp": [10.0] * 8, "q": [5.0, 1.0, 1.0, 5.0, 1.0, 2.0, 5.0, 2.0]}}
    s = measure.timeline_speedups(tl, "fp")
    assert s["rounds"] == 8 and s["loaded_rounds"] == 3 and s["probe_threshold_ms"] == pytest.approx(1.2)
    assert set(s["models"]) == {"q"}
    assert s["models"]["q"] == {"all": 5.0, "quiet": 10.0, "loaded": 2.0}
    assert s["ms"]["q"] == {"quiet": 1.0, "loaded": 5.0} and s["ms"]["fp"] == {"quiet": 10.0, "loaded": 10.0}
    assert s["ms"]["probe"] == {"quiet": 1.0, "loaded": 3.0}
    assert s["probe_fast_ms"] == pytest.approx(1.0) and s["quiet_excess"] == pytest.approx(1.0)  # half the run was quiet
    assert s["quiet_ok"] is True and s["quiet_tol"] == 1.1
    # most of a run loaded: the quiet half (1, 1.5, 1.5, 1.5: median 1.5) is itself 50% slower than the fastest round
    mostly = measure.timeline_speedups({**tl, "probe_ms": [1.0, 1.5, 1.5, 1.5, 2.0, 2.0, 2.0, 2.0]}, "fp")
    assert mostly["probe_fast_ms"] == 1.0 and mostly["quiet_excess"] == pytest.approx(1.5) and mostly["quiet_ok"] is False
    lenient = measure.timeline_speedups({**tl, "probe_ms": [1.0, 1.5, 1.5, 1.5, 2.0, 2.0, 2.0, 2.0]}, "fp", quiet_tol=1.6)
    assert lenient["quiet_ok"] is True  # the judgement follows the tolerance given
    assert set(s["ms"]) == {"fp", "q", "probe"} and s["round_ms"] == {}  # a timeline without rounds' durations or steal
    timed = measure.timeline_speedups({**tl, "round_ms": [50, 30, 30, 60, 30, 31, 55, 31], "steal_ms": [0, 0, 0, 10, 0, 0, 0, 0]}, "fp")
    assert timed["round_ms"] == {"duration": {"quiet": 30.0, "loaded": 55.0}, "stolen": {"quiet": 0.0, "loaded": 0.0}}
    assert set(timed["ms"]) == {"fp", "q", "probe"}  # only the models and the probe
    uncounted = measure.timeline_speedups({**tl, "round_ms": [50, 30, 30, 60, 30, 31, 55, 31], "steal_ms": [None] * 8}, "fp")
    assert set(uncounted["round_ms"]) == {"duration"}  # a system that does not count steal
    steady = measure.timeline_speedups({**tl, "probe_ms": [1.0] * 8}, "fp")  # the machine held its speed
    assert steady["loaded_rounds"] == 0 and steady["models"]["q"]["loaded"] is None
    with pytest.raises(ValueError, match="ref='nope'"):
        measure.timeline_speedups(tl, "nope")
    with pytest.raises(ValueError, match="loaded=1"):
        measure.timeline_speedups(tl, "fp", loaded=1)
    with pytest.raises(ValueError, match="quiet_tol=0.9"):
        measure.timeline_speedups(tl, "fp", quiet_tol=0.9)
    with pytest.raises(ValueError, match="1 round"):
        measure.timeline_speedups({**tl, "probe_ms": [1], "ms": {"fp": [1], "q": [1]}}, "fp")
