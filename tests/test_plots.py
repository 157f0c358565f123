"""Figures whose readability is a property of the code: labels that do not overlap, and loss
curves put on a common footing when they are different losses."""
import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from qlib import plots, plots_ptq, plots_qat  # noqa: E402


def _overlapping(fig, texts):
    """Pairs of ``texts`` whose drawn boxes overlap."""
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    return [(a, b) for i, (a, ba) in enumerate(boxes) for b, bb in boxes[:i] if ba.overlaps(bb)]


def _labels_over_markers(fig, ax):
    """(label, marker index) pairs where a text of ``ax`` covers a marker of its scatters (one
    point each): a marker of size s (points^2) spans sqrt(s) points."""
    renderer, marks = fig.canvas.get_renderer(), []
    for c in ax.collections:
        (cx, cy), half = ax.transData.transform(c.get_offsets()[0]), np.sqrt(c.get_sizes()[0]) / 2 * fig.dpi / 72
        marks.append(matplotlib.transforms.Bbox([[cx - half, cy - half], [cx + half, cy + half]]))
    return [(t.get_text(), i) for t in ax.texts for i, m in enumerate(marks) if t.get_window_extent(renderer).overlaps(m)]


# chapter 07's margin-noise table on the real data (book at 800a378): the W2 points crowd within a
# few images of each other, which is where labels used to print over each other, and the W4A4/W8A4
# PTQ points lie beside the large LSQ stars, which is where labels used to print over a marker
NOISE = [("W2A3 PTQ", .883, 134, 193), ("W2A4 PTQ", .720, 130, 165), ("W2A5 PTQ", .686, 120, 150),
         ("W2A6 PTQ", .652, 118, 141), ("W2A8 PTQ", .646, 115, 129), ("W4A3 PTQ", .954, 110, 116),
         ("W4A4 PTQ", .507, 71, 66), ("W4A5 PTQ", .321, 45, 48), ("W4A6 PTQ", .220, 31, 29),
         ("W4A8 PTQ", .168, 24, 24), ("W8A3 PTQ", .947, 115, 116), ("W8A4 PTQ", .482, 65, 57),
         ("W8A5 PTQ", .289, 41, 42), ("W8A6 PTQ", .155, 22, 21), ("W8A8 PTQ", .064, 10, 9),
         ("W8A4 LSQ", .542, 68, 70), ("W4A4 LSQ", .574, 80, 83), ("W2A4 LSQ", .769, 137, 172),
         ("W2A8 LSQ", .671, 118, 144)]


def _noise_df():
    """NOISE as the frame chapter 07 passes to plots_qat.noise_and_flips."""
    return pd.DataFrame([{"model": m, "w_bits": int(m[1]), "a_bits": int(m[3]), "kind": "QAT" if "LSQ" in m else "PTQ",
                          "sd": sd, "predicted": float(p), "disagreements": d} for m, sd, p, d in NOISE])


def test_noise_and_flips_labels_do_not_overlap():
    df = _noise_df()
    fig = plots_qat.noise_and_flips(df, {"W4A4: half of PTQ's loss": 0.215})
    ax = fig.axes[1]
    assert sorted(t.get_text() for t in ax.texts) == sorted(df.model)  # every point labelled once
    assert _overlapping(fig, ax.texts) == []
    matplotlib.pyplot.close(fig)


def test_noise_and_flips_labels_stay_off_the_markers():
    """A label may sit near its point (tied to it by a line) but not print over a marker: the
    LSQ stars are large, and a label placed only off the points' centres touched them."""
    df = _noise_df()
    fig = plots_qat.noise_and_flips(df, {"W4A4: half of PTQ's loss": 0.215})
    ax = fig.axes[1]
    assert len(ax.collections) == len(df)  # one scatter per point
    assert _labels_over_markers(fig, ax) == []
    matplotlib.pyplot.close(fig)


def test_noise_and_flips_names_every_target_line():
    """Two configurations can need almost the same spread (W8A4 0.215, W4A4 0.214 on the real data): both
    lines must still be named, which a text at the line could not do without overprinting."""
    df = _noise_df()
    targets = {"W8A4: half of PTQ's loss": 0.215, "W4A4: half of PTQ's loss": 0.214}
    fig = plots_qat.noise_and_flips(df, targets)
    ax = fig.axes[0]
    named = {t.get_text() for leg in fig.legends for t in leg.get_texts()}
    assert set(targets) <= named
    assert not any(t.get_text() in targets for t in ax.texts)  # not also printed over each other at the lines
    matplotlib.pyplot.close(fig)


def test_noise_and_flips_key_covers_neither_panel():
    df = _noise_df()
    fig = plots_qat.noise_and_flips(df, {"W8A4: half of PTQ's loss": 0.215, "W4A4: half of PTQ's loss": 0.214})
    (key,) = fig.legends
    assert len(key.get_texts()) == 3 * 2 + 2  # PTQ line and LSQ star per weight width, two targets
    _assert_key_clear(fig, key)
    matplotlib.pyplot.close(fig)


def _assert_key_clear(fig, key):
    """``key`` (a figure legend) overlaps no panel and lies inside the figure (is not cut off)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = key.get_window_extent(renderer)
    assert not any(box.overlaps(ax.get_window_extent(renderer)) for ax in fig.axes)
    assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1)


def _hist(loss):
    return {"steps": [15] * len(loss), "train_loss": loss, "val_acc": [0.9] * len(loss)}


@pytest.mark.parametrize("relative", [False, True])
def test_qat_curves_loss_panel(relative):
    curves = {"cross-entropy": _hist([0.65, 0.64, 0.63]), "KL": _hist([3e-4, 2e-4, 1.5e-4])}
    fig = plots_qat.qat_curves(curves, relative_loss=relative)
    lines = fig.axes[1].get_lines()
    ys = [np.asarray(l.get_ydata(), dtype=float) for l in lines if l.get_label() in curves]
    if relative:  # each loss over its own first epoch: both start at 1, and keep their shape
        assert all(y[0] == 1.0 for y in ys)
        np.testing.assert_allclose(ys[1], [1, 2 / 3, 0.5])
    else:  # raw levels, on a log axis so a loss 1000x smaller is not flat on zero
        assert fig.axes[1].get_yscale() == "log"
        np.testing.assert_allclose(ys[0], [0.65, 0.64, 0.63])
    matplotlib.pyplot.close(fig)


def test_tradeoff_front_numbers_do_not_overlap():
    # a Pareto front packed into the smallest files, as chapter 08's is: 2.82-2.91 MB
    size = [2.82, 2.83, 2.85, 2.90, 2.91, 3.24, 4.22, 4.29, 5.63, 5.69, 11.28, 44.8]
    acc = [.902, .943, .958, .959, .960, .962, .965, .986, .992, .993, .999, 1.0]
    df = pd.DataFrame({"size_mb": size, "agreement": acc, "method": ["gptq"] * 11 + ["fp32"]})
    fig = plots.tradeoff(df, "size_mb", "agreement", fp_y=1.0)
    numbers = [t for t in fig.axes[0].texts if t.get_text().isdigit()]
    assert sorted(int(t.get_text()) for t in numbers) == list(range(1, len(size) + 1))  # all on the front
    assert _overlapping(fig, numbers) == []
    matplotlib.pyplot.close(fig)


def test_tradeoff_front_point_below_the_zoom_is_named_in_the_key_only(recwarn):
    # chapter 08 on smoke data: a front point at 0% agreement, far below the zoomed range; its
    # number drawn there stretched the layout ("Tight layout not applied") in front of readers
    df = pd.DataFrame({"size_mb": [2.83, 2.85, 5.6, 44.8], "agreement": [0.0, 0.976, 0.991, 1.0],
                       "method": ["gptq", "gptq", "gptq", "fp32"]})
    fig = plots.tradeoff(df, "size_mb", "agreement", fp_y=1.0)
    ax = fig.axes[0]
    assert sorted(t.get_text() for t in ax.texts if t.get_text().isdigit()) == ["2", "3", "4"]
    key = next(t.get_text() for t in ax.texts if t.get_text().startswith("Pareto front"))
    assert "1  gptq  (2.83 MB, 0.0%)  below the range" in key
    assert not [w for w in recwarn if "layout" in str(w.message).lower()]
    matplotlib.pyplot.close(fig)


def test_tradeoff_zoom_ends_a_point_below_the_lowest_variant_and_names_throughput():
    # chapter 08's accuracy vs throughput: every variant within 2.5 points of FP32, so a range
    # reaching 12 points below FP32 left most of the axes empty
    df = pd.DataFrame({"images_per_s": [572.0, 560.0, 2341.0, 2379.0], "accuracy": [.937, .917, .936, .936],
                       "method": ["fp32", "awq", "int8-ptq", "qat-int8"]})
    fig = plots.tradeoff(df, "images_per_s", "accuracy", logx=False, fp_y=0.936, front="max")
    ax = fig.axes[0]
    assert ax.get_ylim()[0] == pytest.approx(90.7)  # the lowest variant (91.7%) less one point
    key = next(t.get_text() for t in ax.texts if t.get_text().startswith("Pareto front"))
    assert "(2,379 images/s, 93.6%)" in key and "e+03" not in key
    df.loc[1, "accuracy"] = 0.5  # far below: the zoom stops 12 points under FP32
    fig2 = plots.tradeoff(df, "images_per_s", "accuracy", logx=False, fp_y=0.936, front="max")
    assert fig2.axes[0].get_ylim()[0] == pytest.approx(81.6)
    matplotlib.pyplot.close(fig)
    matplotlib.pyplot.close(fig2)


def test_header_names_the_commit_and_the_machine(tmp_path):
    from types import SimpleNamespace

    import torch

    from qlib import Config

    cfg = Config.from_env(smoke=True, cache_dir=str(tmp_path))
    splits = SimpleNamespace(source="a data set", train=[0] * 3, val=[0] * 2, test=[0] * 1)
    text = plots.header(cfg, splits)
    assert "train 3 / val 2 / test 1 images" in text and "**git commit**" in text
    # a chapter's times belong to the machine it ran on
    assert f"{torch.backends.cpu.get_cpu_capability()} kernels · {torch.get_num_threads()} threads" in text
    assert f"PyTorch {torch.__version__}" in text


def _curve(recovered):  # rows of lsq.lsq_curve: one measurement a minute
    return [{"train_seconds": 60.0 * i, "agreement": 0.97 + 0.03 * r, "kl": 0.01, "recovered": r}
            for i, r in enumerate(recovered)]


def test_recovery_curves_shades_the_null_band_in_percent_and_names_it():
    fig = plots_qat.recovery_curves({"W4A4": _curve([0.0, -0.1, -0.2])}, band=("random moves", -0.21, 0.08))
    a = fig.axes[0]
    (span,) = [p for p in a.patches if p.get_label() == "random moves"]
    assert (span.get_y(), span.get_y() + span.get_height()) == pytest.approx((-21.0, 8.0))  # % of the loss, like the curves
    assert "random moves" in [t.get_text() for t in fig.legends[0].get_texts()]


def test_recovery_curves_key_covers_neither_panel():
    # chapter 07's controls figure: six runs, a band and the target, seven to nine keys in all; inside a
    # panel its key covered the target line and the curves
    runs = {f"run {i}": _curve([0.0, -0.1 * i, 0.4, 0.1]) for i in range(6)}
    fig = plots_qat.recovery_curves(runs, draws={"run 0": [(0.8, -0.1), (0.9, 0.0)]}, budget_min=5.0,
                                    band=("random moves", -0.21, 0.08))
    (key,) = fig.legends
    assert len(key.get_texts()) == 9 and all(ax.get_legend() is None for ax in fig.axes)
    _assert_key_clear(fig, key)


@pytest.mark.parametrize("band", [("null", 0.1, -0.1), ("null", 0.1), ("null",)])
def test_recovery_curves_bad_band_is_a_clear_error(band):
    with pytest.raises(ValueError, match="band="):
        plots_qat.recovery_curves({"W4A4": _curve([0.0, 0.1])}, band=band)


def test_size_speed_labels_clear_each_other_the_markers_and_the_title():
    """Chapter 06's int8-engine variants (book at 0f71b01): the two 11.33 MB models lie on top of
    each other and the low-bit ones at the top edge, where labels printed over each other and
    over the title."""
    df = pd.DataFrame([("FP32", 44.84, 647, .9362, "fp32"), ("int8 PTQ (torch default, no smoothing)", 11.33, 2645, .9356, "int8"),
                       ("SmoothQuant W8A8", 11.33, 2582, .9362, "smoothquant"), ("GPTQ W4A8 (int8 engine)", 5.69, 2688, .9323, "gptq"),
                       ("GPTQ W2A8 (int8 engine)", 2.83, 2690, .9343, "gptq")],
                      columns=["variant", "size_mb", "images_per_s", "accuracy", "color"])
    fig = plots_ptq.size_speed(df)
    ax, renderer = fig.axes[0], fig.canvas.get_renderer()
    assert len(ax.texts) == len(df) and _overlapping(fig, ax.texts) == []
    assert len(ax.collections) == len(df) and _labels_over_markers(fig, ax) == []
    title = ax.title.get_window_extent(renderer)
    assert [t.get_text() for t in ax.texts if t.get_window_extent(renderer).overlaps(title)] == []
    matplotlib.pyplot.close(fig)


def test_latency_bars_draw_warm_and_cold_for_every_variant():
    rows = [{"variant": "fp32", "engine": "float32", "ms_per_batch": 97.0, "ms_cold": 138.0, "speedup_vs_fp32": 1.0, "speedup_cold": 1.0},
            {"variant": "qat_int8", "engine": "int8 engine", "ms_per_batch": 15.0, "ms_cold": 35.0,
             "speedup_vs_fp32": 97 / 15, "speedup_cold": 138 / 35}]
    fig = plots.latency_bars(rows)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["fp32 (float32)", "qat_int8 (int8 engine)"]  # fastest on top
    assert sorted(p.get_width() for p in ax.patches) == [15.0, 35.0, 97.0, 138.0]
    assert {t.get_text().strip() for t in ax.texts} == {"1.0x", "6.5x", "3.9x"}
    # the key has a swatch for every colour the bars use: both warm ones and the cold grey
    key = {tuple(np.round(h.get_facecolor(), 3)): h.get_label() for h in ax.get_legend().legend_handles}
    bar_colors = {tuple(np.round(p.get_facecolor(), 3)) for p in ax.patches}
    assert bar_colors == set(key) and len(key) == 3
    assert any("int8" in v for v in key.values()) and any("float32" in v for v in key.values())
    plots.plt.close(fig)


def test_bits_sweep_keeps_methods_that_tie_apart_in_their_colours():
    d = pd.DataFrame({"method": ["gptq", "awq+gptq", "gptq", "awq+gptq"], "bits": [2, 2, 4, 4],
                      "agreement": [0.96, 0.96, 0.99, 0.99]})
    fig = plots.bits_sweep(d, y="agreement", hue="method")
    ax = fig.axes[0]
    pts = {tuple(xy) for line in ax.lines for xy in np.asarray(line.get_xydata()).round(3)}
    assert len(pts) == 4  # the tied points are drawn apart, not on top of each other
    assert [t.get_position()[0] for t in ax.get_xticklabels()] == [2, 4]  # ticks stay at the measured bits
    # each method in the colour the other figures give it, in the key and on the drawn line
    key = {t.get_text(): matplotlib.colors.to_hex(h.get_color())
           for t, h in zip(ax.get_legend().get_texts(), ax.get_legend().legend_handles)}
    assert key == {"gptq": plots.PALETTE["gptq"], "awq+gptq": plots.METHOD_COLORS["awq+gptq"]}
    assert {matplotlib.colors.to_hex(line.get_color()) for line in ax.lines if len(line.get_xdata())} == set(key.values())
    plots.plt.close(fig)


def test_timeline_plots_each_round_and_keeps_its_key_off_the_axis_label():
    tl = {"t": [0.0, 1.0, 2.0, 3.0], "probe_ms": [35.0, 50.0, 36.0, 48.0], "per_round": 3, "batch_size": 64, "probe_size": 1024,
          "ms": {"fp32": [100.0, 140.0, 101.0, 139.0], "a": [14.0, 38.0, 15.0, 36.0], "b": [15.0, 40.0, 14.0, 37.0]}}
    fig = plots.timeline(tl, loaded_ms=42.0)
    ax, bx = fig.axes
    assert [ln.get_xdata()[0] for ln in bx.lines] == [42.0]  # where the loaded rounds begin
    assert len(ax.lines) == 4  # FP32, two models, the probe
    assert [c.get_offsets().shape[0] for c in bx.collections] == [4, 4]  # one point per round per model
    assert bx.collections[0].get_offsets()[1].tolist() == pytest.approx([50.0, 140 / 38])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert not ax.get_legend().get_window_extent(renderer).overlaps(ax.xaxis.label.get_window_extent(renderer))
    plots.plt.close(fig)
    with pytest.raises(ValueError, match="ref='nope'"):
        plots.timeline(tl, ref="nope")


def test_pareto_rows_keeps_only_undominated_variants_in_order_of_x():
    d = pd.DataFrame({"label": ["a", "b", "c", "d", "e"], "size_mb": [1.0, 2.0, 3.0, 2.5, np.nan],
                      "accuracy": [0.80, 0.90, 0.95, 0.85, 0.99]})
    # d is larger than b and less accurate: dominated; e has no size and is left out
    assert list(plots.pareto_rows(d, "size_mb", "accuracy")["label"]) == ["a", "b", "c"]
    # larger x is better (throughput): only the fastest and the most accurate survive
    assert list(plots.pareto_rows(d.rename(columns={"size_mb": "ips"}), "ips", "accuracy", front="max")["label"]) == ["c"]
    with pytest.raises(ValueError, match="front='low'"):
        plots.pareto_rows(d, "size_mb", "accuracy", front="low")


def test_bits_sweep_disagreement_spreads_near_full_agreement_on_a_log_scale():
    d = pd.DataFrame({"method": ["gptq", "rtn", "gptq", "rtn"], "bits": [2, 2, 8, 8],
                      "agreement": [0.96, 0.72, 0.999, 1.0]})
    fig = plots.bits_sweep(d, y="disagreement", hue="method")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    ys = sorted(y for line in ax.lines for y in np.asarray(line.get_ydata(), dtype=float) if np.isfinite(y))
    # 1 - agreement in percent; the variant that changes nothing sits at half the smallest share, and is named
    assert np.allclose(ys, [0.05, 0.1, 4.0, 28.0])
    assert any("1 changing no answer" in t.get_text() for t in ax.texts)
    plots.plt.close(fig)
