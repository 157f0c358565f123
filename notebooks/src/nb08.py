import sys; import os; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbbuild import md, code, params, write

cells = [
md(r"""
# 8. Results: what works on a CNN, and what the seed paper got wrong

Every chapter recorded its variants as rows (`book/results/<chapter>.json`): accuracy on the
track-split test set with its 95% interval, agreement and KL with the FP32 model on the
fidelity set, and the size of the real file each variant is saved to. This chapter re-times
every saved variant in one process (`python -m qlib.bench`: interleaved rounds, so drift of
the machine hits every variant alike), puts the seed paper's Table 1 beside ours, measures how
much the calibration sample moves each post-training method, and answers each of the seed
paper's conclusions.
"""),
params("""
data = None
image_size = None
split = None
seed = None
smoke = None
calib_seeds = [0, 1, 2]
fidelity_limit = None   # fidelity images for the calibration-seed study (None: all)
bench_rounds = 15
timeline_seconds = 45   # the machine-speed timeline below
"""),
code("""
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import display, Markdown
from qlib import Config, atomic, data as qdata, int8, models, measure, results, plots, bench

plots.style()
torch.set_num_threads(2)
cfg = Config.from_env(data=data, image_size=image_size, split=split, seed=seed, smoke=smoke)
splits = qdata.load(cfg)
plots.header(cfg, splits)
fp, _ = models.baseline(cfg, splits)
df = results.table(cfg)
df = df[df["chapter"] != "08_results"].reset_index(drop=True) if len(df) else df
chapters = {"02_baseline": "FP32 baseline", "03_basics": "RTN", "04_gptq": "GPTQ", "05_awq": "AWQ",
            "06_smoothquant": "SmoothQuant / int8 engine", "07_qat": "QAT"}
have = set(df["chapter"]) if len(df) else set()
missing = [f"{k} ({v})" for k, v in chapters.items() if k not in have]
display(Markdown(f"Rows recorded: **{len(df)}** from chapters {', '.join(sorted(have)) or 'none'}." +
                 (f" **Missing:** {', '.join(missing)} — their rows are absent from every table and figure below." if missing else "")))
"""),
md("""
## One benchmark for every saved variant

The chapters saved the model files of some of their variants; the table below lists every
saved file, and this chapter times each one. A variant whose file no chapter saved has nothing to
time, and its CPU time stays blank in the tables below. Each is loaded the way it runs: a packed low-bit file (`qlib.export`) dequantizes into a float
model and runs in FP32 arithmetic; an `.int8.pt` file runs on PyTorch's int8 engine (x86).
A batch of 64 images, 2 threads, rounds interleaved. In each round a variant runs a block of
batches back to back. The first batch of a block comes after every other variant ran, and the
variants' weights together are larger than this CPU's last-level cache: if fetching the weights
from memory cost time, this **cold** batch would be slower than the **warm** ones after it, which
find the weights where the batch before left them, as a model serving batches alone does. The
tables and figures of this chapter use the warm time; the figure shows both.
"""),
code("""
from qlib import export
export.save(fp, results.variant_path(cfg, "fp32"))  # the reference every speed-up is measured against, in the same run
vdir = results.variant_path(cfg, "fp32").parent
found = bench.discover(vdir)
folded, plain_sp = pd.DataFrame(columns=["variant", "speedup_vs_fp32"]), pd.Series(dtype=float)
if found:
    bres = bench.run(vdir, batch_size=64, threads=2, image_size=cfg.image_size, rounds=3 if cfg.smoke else bench_rounds)
    results.write_json(bres, results.results_dir(cfg) / "bench.json")
    bdf = pd.DataFrame(bres["rows"]).sort_values("size_mb", ascending=False)
    display(bdf[["variant", "engine", "size_mb", "int8_file_mb", "memory_mb", "ms_per_batch", "spread", "images_per_s", "speedup_vs_fp32",
                 "ms_cold", "speedup_cold"]].rename(columns={"ms_per_batch": "ms warm", "speedup_vs_fp32": "x FP32 warm", "ms_cold": "ms cold",
                                                             "speedup_cold": "x FP32 cold"}).style.hide(axis="index").format(precision=2, na_rep=""))
    fig = plots.latency_bars(bres["rows"], title=f"Time per batch of 64, warm and cold ({bres['rounds']} rounds of {bres['block']} batches)")
    e8 = bdf[bdf["engine"] == "int8 engine"]
    l3 = bres.get("l3_cache_mb")
    if len(e8) and "fp32" in set(bdf["variant"]):
        fp_b = bdf.set_index("variant").loc["fp32"]
        cold_extra = bdf["ms_cold"] / bdf["ms_per_batch"] - 1   # how much longer a cold batch takes than a warm one
        display(Markdown(f"The variants hold {bdf['memory_mb'].sum():.0f} MB of weights in memory"
                         + (f", the CPU's L3 cache is {l3:.0f} MB" if l3 else "") + f". Warm, the int8-engine variants run "
                         f"**{results.span(e8['speedup_vs_fp32'])}x** faster than FP32; cold, "
                         f"**{results.span(e8['speedup_cold'])}x** (FP32 {fp_b['ms_per_batch']:.0f} ms "
                         f"warm, {fp_b['ms_cold']:.0f} ms cold). A cold batch's time differs from a warm one's of the same "
                         f"variant by {results.span(cold_extra, '{:+.0%}', ' to ')}, against a spread of "
                         f"{results.span(bdf['spread'])}x (slowest over fastest warm batch) within each."))
        # bench.run records whether a loaded model had BatchNorm left: a float file without it ran with BatchNorm folded
        # into the convolutions (the LSQ export); the weight-only GPTQ and AWQ files and FP32 run their BatchNorms, the
        # int8 engine always folds them (qlib.int8)
        flt = bdf[(bdf["engine"] == "float32") & (bdf["variant"] != "fp32")]
        folded = flt[flt["bn_folded"]]
        plain_sp = flt.loc[~flt["variant"].isin(folded["variant"]), "speedup_vs_fp32"]  # weight-only files as they run
else:
    bres, bdf = None, pd.DataFrame(columns=["variant", "ms_per_batch", "images_per_s", "speedup_vs_fp32"])
    display(Markdown("No saved variant found: run the method chapters first."))
# variants a chapter's rows name whose file is not in this cache (a new checkout has the results, not the files)
untimed = bench.missing(vdir, results.results_dir(cfg))
if untimed:
    display(Markdown(f"**Not timed:** {len(untimed)} variant(s) recorded by the chapters have no saved file here — "
                     + bench.describe_missing(untimed, code=True) + ". Their rows show the chapter's own timing and no speed-up; run those chapters again to time them here."))
"""),
md("""
## Why the speed-up moves: a shared machine

The int8 engine's speed-up over FP32 has not been one number in this study. It depends on the
CPU's int8 instructions: an Intel CPU with AMX tile units built earlier versions of this book,
and the next cell names those of the machine that built this one. On one machine and one day it
moved too: on 6 December 2026 the AMX machine gave between 3.3x and 8.3x, with the same files
and the same code. To see why, the next cell runs FP32 and the int8-engine variants for a fixed
time in short rounds (each model three batches back to back, as a model serving alone; with them a float file that has
its BatchNorm folded, to measure what folding alone gains), and after each round a
**probe** that has nothing to do with quantization: five products of one fixed FP32 matrix.
If the probe slows in some rounds, the machine itself slowed; the models' times in the same
rounds show how much each one feels it, and each round's speed-up is measured inside that round.
The text compares the quiet half of the rounds (the probe's fastest) with the loaded ones (the
probe at least 20% slower than in the quiet half).
"""),
code("""
if bres is not None and len(e8) and "fp32" in set(bdf["variant"]):
    found = bench.discover(vdir)
    # the BN-folded float files run too: how much of the int8 speed-up is folding, measured in the same quiet rounds
    tl = measure.timeline({k: bench.load_runnable(found[k])[0] for k in ["fp32", *e8["variant"], *folded["variant"]]},
                          seconds=5 if cfg.smoke else timeline_seconds, image_size=cfg.image_size, progress=True)
    results.write_json(tl, results.results_dir(cfg) / "timeline.json")
    tls = measure.timeline_speedups(tl, "fp32")  # quiet half and loaded rounds (the probe 20% slower) of the rounds
    fig = plots.timeline(tl, title=f"FP32, the int8 engine" + (" and the BN-folded float file" if len(folded) else "")
                         + f" over {timeline_seconds if not cfg.smoke else 5} s of this machine", loaded_ms=tls["probe_threshold_ms"])
    sp = {k: v for k, v in tls["models"].items() if k in set(e8["variant"])}  # the int8 variants' speed-ups
    ms_ = tls["ms"]
    text = (f"This CPU's int8 instructions: **{int8.matrix_units()}**. "
            f"{tls['rounds']} rounds. In the quiet half of them (the probe's fastest, median {ms_['probe']['quiet']:.0f} ms) the "
            f"int8-engine variants ran **{results.span([v['quiet'] for v in sp.values()])}x** faster than FP32. ")
    quiet_ok = tls["quiet_ok"]  # the split assumes at least half of the run was quiet
    if not quiet_ok:
        text += (f"But most of this run was slowed: even the quiet half's probe ({ms_['probe']['quiet']:.0f} ms) took "
                 f"{tls['quiet_excess'] - 1:.0%} longer than in the run's fastest round ({tls['probe_fast_ms']:.0f} ms), so neither "
                 "set shows the quiet machine: they compare a loaded machine with a more loaded one. ")
    if not tls["loaded_rounds"]:
        text += (f"No round took the probe {tls['loaded_factor'] - 1:.0%} longer than that" +
                 (": the machine held its speed through this run, and these are the quiet machine's speed-ups." if quiet_ok else "."))
    else:
        slow = {k: v["loaded"] / v["quiet"] for k, v in ms_.items()}  # how much longer each takes when the machine is loaded
        s8 = [slow[k] for k in sp]
        # Signed figures print with Python's "z" option ("{:+z.0%}", PEP 682): one that rounds to zero reads +0%, not -0%
        # (results.span drops that minus itself, so its formats need no "z").
        moves = (f"FP32 took {slow['fp32'] - 1:+z.0%} longer, the int8 variants {results.span([v - 1 for v in s8], '{:+.0%}', ' to ')}"
                 if min(slow["fp32"], *s8) >= 1 else  # a model faster in loaded rounds: "took -5% longer" would not read
                 f"FP32's time changed by {slow['fp32'] - 1:+z.0%}, the int8 variants' by {results.span([v - 1 for v in s8], '{:+.0%}', ' to ')}")
        text += (f"In {tls['loaded_rounds']} round(s) the probe took at least {tls['loaded_factor'] - 1:.0%} longer (right of the "
                 f"dashed line; median {ms_['probe']['loaded']:.0f} ms): the machine itself was slower. In those rounds {moves}, "
                 f"and the speed-up was **{results.span([v['loaded'] for v in sp.values()])}x**. ")
        rms = tls["round_ms"]
        if "stolen" in rms and "duration" in rms:  # Linux counts the CPU time the hypervisor gives to others ("steal")
            extra, stolen = rms["duration"]["loaded"] - rms["duration"]["quiet"], rms["stolen"]["loaded"]
            if extra > 0:
                text += (f"A loaded round took {extra:.0f} ms longer than a quiet one (medians), and the system counted {stolen:.0f} ms "
                         "of CPU time stolen by the hypervisor in it: "
                         + ("the virtual CPUs were not taken away, they ran slower. " if stolen < 0.25 * extra else
                            "the hypervisor ran something else on these CPUs for much of it. "))
            else:
                text += (f"A loaded round took no longer than a quiet one ({extra:+z.0f} ms, medians), and the system counted "
                         f"{stolen:.0f} ms of CPU time stolen by the hypervisor in it. ")
        if min(s8) - 1 > max(0.1, 2 * (slow["fp32"] - 1)):  # int8 slowed by over 10% and over twice FP32's slowing
            text += ("The int8 engine's kernels lose far more than FP32's when the machine is loaded: a timing taken in a loaded "
                     "stretch gives a lower speed-up, one taken in a quiet stretch a higher, and the benchmark above reports "
                     "whichever mix of the two its rounds met. The slowing comes from outside the models (the probe, a plain "
                     "matrix product, slows with them)" + (": the quiet figure is the engine's speed on an unloaded machine." if quiet_ok
                                                             else "; in this run no figure shows the unloaded machine."))
        else:
            moved = [v["loaded"] / v["quiet"] - 1 for v in sp.values()]  # each int8 variant's speed-up, loaded over quiet rounds
            text += (f"Between quiet and loaded rounds the speed-up moved by {results.span(moved, '{:+.0%}', ' to ')}: "
                     + ("the int8 engine slowed about as much as FP32 (or neither slowed much), so the speed-up held." if min(moved) >= -0.1 and max(moved) <= 0.1
                        else "the int8 engine slowed more than FP32 for some variants, so a loaded stretch lowers their speed-up." if min(moved) < -0.1
                        else "the int8 engine slowed less than FP32, so a loaded stretch raises the speed-up."))
    display(Markdown(text))
    if len(folded):  # bench.run found these float files without BatchNorm: it is folded into their convolutions
        half = "quiet" if quiet_ok else "all"
        fold_x = float(np.median([tls["models"][v][half] for v in folded["variant"]]))
        int8_x = [v[half] for v in sp.values()]
        names = ", ".join(f"`{v}`" for v in folded["variant"])
        chs = sorted(set(df.loc[df["variant_file"].isin(folded["variant"]), "chapter"].str[:2])) if "variant_file" in df else []
        one = len(folded) == 1
        where = "in the quiet half of the rounds" if quiet_ok else "over all the rounds"
        display(Markdown(
            f"The float file{'' if one else 's'} {names}" + (f" (chapter {', '.join(chs)})" if chs else "")
            + f" {'is' if one else 'are'} saved with BatchNorm folded into the convolutions; FP32's file keeps its BatchNorm "
            f"layers. Run as float32, {'it was' if one else 'they were'} **{fold_x:.2f}x** as fast as FP32 {where} "
            f"({results.span(folded['speedup_vs_fp32'], '{:.2f}')}x in the benchmark above): "
            + (f"folding alone makes a model about {fold_x:.2f}x faster here. The int8 engine folds BatchNorm too, so part of "
               f"its speed-up is folding: {results.span(int8_x)}x ÷ {fold_x:.2f} = **{results.span(np.asarray(int8_x) / fold_x)}x** "
               "is what the int8 kernels add."
               if round(fold_x, 2) >= 1.05 else "folding alone gains little here, and the int8 engine's speed-up is its kernels'.")))
"""),
code("""
# the benchmark's timings replace each chapter's own (same run, same protocol); the FP32 row
# (no variant file of its own in chapter 02's results) takes the benchmark's "fp32" file. A timing goes
# only to a row measured on the engine it was timed on: chapter 07 records LSQ W2A8 twice with one file,
# as fake quantization and on the int8 engine, and the benchmark times that file on the int8 engine
if len(df) and "variant_file" in df:
    timing = bdf.set_index("variant")[["ms_per_batch", "images_per_s", "speedup_vs_fp32"]]
    bench_key = df["variant_file"].where(df["variant_file"].notna(), df["method"].where(df["method"] == "fp32"))
    bench_int8 = bench_key.map(bdf.set_index("variant")["engine"].eq("int8 engine"))
    row_int8 = df["engine"].astype(str).eq("int8") if "engine" in df else pd.Series(False, index=df.index)
    same_engine = bench_int8.eq(row_int8)
    for col in timing.columns:
        df[col + "_bench"] = bench_key.map(timing[col]).where(same_engine)
fp_row = df[df["method"] == "fp32"].iloc[0] if (len(df) and (df["method"] == "fp32").any()) else None
fp_acc = float(fp_row["accuracy"]) if fp_row is not None else models.evaluate(fp, splits.test)["accuracy"]
fp_mb = float(fp_row["size_mb"]) if fp_row is not None and pd.notna(fp_row.get("size_mb")) else measure.file_size_mb(results.variant_path(cfg, "fp32"))
if len(df):  # every method chapter labels its rows; chapter 02's one row is the baseline
    df.loc[df["method"].eq("fp32") & df["label"].isna(), "label"] = "FP32 baseline"
    assert df["label"].notna().all(), df.loc[df["label"].isna(), ["chapter", "method", "bits"]]
def main_rows(d):
    \"\"\"A method's own variants: no sweep points, no ablation variants (AWQ's 'scales only', RTN's weight-error
    clipping) and not chapter 07's PTQ starting points (GPTQ weights again, the A4 ones with per-tensor steps no engine here runs).\"\"\"
    keep = pd.Series(True, index=d.index)
    if "sweep" in d:
        keep &= ~d["sweep"].astype("boolean").fillna(False).astype(bool)
    if "variant" in d:
        keep &= ~d["variant"].isin(["AWQ scales only", "RTN+clip (mse)"])
    keep &= ~((d["chapter"] == "07_qat") & (d["method"] == "gptq"))
    return d[keep]
"""),
md("""
## The seed paper's Table 1 beside ours

Per method, two of our rows: the **recommended** setting (the smallest file whose top-1
agreement with FP32 is at least 99.5%) and the **most aggressive working** one (the smallest
file whose test accuracy is within 1 point of FP32). The seed's rows are its own published
figures (224x224, its leaky split, an unstated timing protocol): compare them by pattern, not
digit by digit. Our CPU time is per batch of 64 images at the book's image size, 2 threads, warm
(the benchmark above); the speed-up is over FP32 in the same run. Below the table: the rows
with no CPU time, and why.
"""),
code("""
def pick(rows, rule):
    \"\"\"The smallest file among ``rows`` that satisfy ``rule`` (None if none does); of rows with the same
    file, the one the benchmark timed (the file as it runs).\"\"\"
    ok = rows[rule(rows)]
    if not len(ok):
        return None
    timed = ok["ms_per_batch_bench"].notna() if "ms_per_batch_bench" in ok else pd.Series(False, index=ok.index)
    return ok.loc[pd.DataFrame({"size": ok["size_mb"], "untimed": ~timed}).sort_values(["size", "untimed"]).index[0]]

ours = []
for method, rows in main_rows(df[df["method"] != "fp32"]).groupby("method"):
    rows = rows.dropna(subset=["size_mb", "accuracy", "agreement"])
    for role, rule in (("recommended", lambda r: r["agreement"] >= 0.995),
                       ("most aggressive", lambda r: r["accuracy"] >= fp_acc - 0.01)):
        r = pick(rows, rule)
        if r is not None:
            ours.append({**r.to_dict(), "role": role})
ours = pd.DataFrame(ours).drop_duplicates(subset=["label"]) if ours else pd.DataFrame()
seed_tab = pd.DataFrame(results.SEED_TABLE1).rename(columns={"model": "model", "accuracy": "accuracy (%)", "size_mb": "size (MB)", "cpu_time_s": "CPU time"})
seed_tab["model"] = "seed paper (published): " + seed_tab["model"]
def ms(r):
    v = r.get("ms_per_batch_bench")
    v = v if v is not None and not pd.isna(v) else r.get("ms_per_batch")
    return np.nan if v is None or pd.isna(v) else v
our_tab = pd.DataFrame([{"model": f"this book, ch. {r['chapter'][:2]}: {r['label']}" + (f" ({r['role']})" if "role" in r else ""),
                         "accuracy (%)": round(100 * r["accuracy"], 2),
                         "95% CI": f"{100 * r['acc_lo']:.1f}–{100 * r['acc_hi']:.1f}",
                         "size (MB)": round(r["size_mb"], 2), "CPU time": ms(r),
                         "agreement (%)": round(100 * r["agreement"], 2), "KL": r["kl"],
                         "speed-up": r.get("speedup_vs_fp32_bench"), "fidelity images": r.get("n_fidelity")}
                        for r in ([fp_row.to_dict() | {"label": "FP32 baseline"}] if fp_row is not None else []) + ours.to_dict("records")],
                       columns=["model", "accuracy (%)", "95% CI", "size (MB)", "CPU time", "agreement (%)", "KL", "speed-up",
                                "fidelity images"])  # the columns even with no row (only some chapters run)
our_tab["CPU time"] = our_tab["CPU time"].map(lambda v: "" if pd.isna(v) else f"{v:.1f} ms / 64 img")
table = pd.concat([seed_tab.assign(**{"CPU time": seed_tab["CPU time"].map(lambda v: f"{v} s (protocol not stated)")}), our_tab], ignore_index=True)
display(table.style.hide(axis="index").format({"accuracy (%)": "{:.2f}", "size (MB)": "{:.2f}", "agreement (%)": "{:.2f}", "KL": "{:.4f}",
                                               "speed-up": "{:.1f}x", "fidelity images": "{:.0f}"}, na_rep=""))
notes = []  # a row whose chapter kept layers at 8 bits, and that chapter's like-for-like PTQ row
for r in ours.to_dict("records"):
    keep = r["settings"].get("keep_8bit") if isinstance(r.get("settings"), dict) else None
    if not (keep and r["label"].startswith("LSQ")):
        continue
    twin = df[(df["chapter"] == r["chapter"]) & (df["label"] == r["label"].replace("LSQ", "GPTQ"))]
    if len(twin):
        notes.append(f"{r['label']} (chapter {r['chapter'][:2]}) keeps {' and '.join(keep)} at 8 bits; beside it, at the same "
                     f"bits and with the same layers kept, chapter {r['chapter'][:2]}'s {twin.iloc[0]['label']} agrees "
                     f"{100 * twin.iloc[0]['agreement']:.2f}%.")
untimed_rows = [r for r in ours.to_dict("records") if pd.isna(ms(r))]  # a blank CPU time, and why
no_file = [r["label"] for r in untimed_rows if pd.isna(r.get("variant_file"))]
not_here = [r["label"] for r in untimed_rows if not pd.isna(r.get("variant_file"))]
own = [r["label"] for r in ours.to_dict("records") if pd.isna(r.get("ms_per_batch_bench")) and not pd.isna(ms(r))]
if no_file:
    notes.append(f"A blank CPU time: the chapters saved no file for {', '.join(no_file)}, so the benchmark had nothing to time"
                 + (f" (a weight-only file dequantizes and runs as float32: the saved ones run at {results.span(plain_sp)}x "
                    "FP32's speed)." if len(plain_sp) else "."))
if not_here:
    notes.append(f"{', '.join(not_here)}: the chapter saved a file, but it is not in this cache (**Not timed** above).")
if own:
    notes.append(f"{', '.join(own)}: the CPU time is the chapter's own timing, taken in another run.")
display(Markdown("Agreement and KL are measured on the *fidelity images*: validation + test, which no variant trained or "
                 "calibrated on (a subsample where the column says fewer). " + " ".join(notes)))
"""),
md("""
## Trade-offs: accuracy against size and speed

Every recorded variant is a point; the dashed line is the Pareto front (no other variant is both
smaller — or faster — and more accurate).
"""),
code("""
d = df.dropna(subset=["size_mb"]).copy()
d["label"] = "ch. " + d["chapter"].str[:2] + ": " + d["label"]  # the front's key: two chapters record a "GPTQ W2A8 (int8 engine)"
fig = plots.tradeoff(d, "size_mb", "accuracy", "file size (MB, log scale)", title="Accuracy vs file size", fp_y=fp_acc)
if not cfg.smoke:
    plots.save(fig, results.results_dir(cfg) / "pareto.png")
# how far the test split's own noise reaches: chapter 02 records FP32's interval (a bootstrap over tracks)
fp_ci = df[(df["method"] == "fp32")].dropna(subset=["acc_lo", "acc_hi"]) if {"acc_lo", "acc_hi"} <= set(df) else df.iloc[0:0]
if len(fp_ci):
    lo, hi = float(fp_ci["acc_lo"].iloc[0]), float(fp_ci["acc_hi"].iloc[0])
    da = d.dropna(subset=["accuracy"]).reset_index(drop=True)
    q = da[da["method"] != "fp32"]
    fr = plots.pareto_rows(d, "size_mb", "accuracy")  # the front the figure above numbers
    above = fr[(fr["method"] != "fp32") & (fr["accuracy"] > fp_acc)]
    inside = int(((q["accuracy"] >= lo) & (q["accuracy"] <= hi)).sum())
    display(Markdown(
        f"FP32's test accuracy is {fp_acc:.2%}, with a 95% interval of {lo:.2%} to {hi:.2%} (chapter 02: a bootstrap over "
        f"the test split's tracks). {inside} of the {len(q)} quantized variants lie inside that interval, so where they sit "
        "on the accuracy front is partly the luck of the test tracks"
        + (f"; {len(above)} front point{'s' if len(above) > 1 else ''} ("
           + "; ".join(f"{r['label']}: {r['accuracy']:.2%}" for _, r in above.iterrows())
           + f") {'are' if len(above) > 1 else 'is'} above FP32 itself, inside its interval: not evidence of a better model"
           if len(above) else "")
        + ". The agreement front below measures each variant against FP32 image by image, on more images, and is the "
        "steadier ranking of how much quantization changed the model."))
fig = plots.tradeoff(d, "size_mb", "agreement", "file size (MB, log scale)", title="Agreement with FP32 vs file size", fp_y=1.0)
"""),
code("""
# only the benchmark's timings (one run, every variant interleaved): a chapter's own timing was taken at another
# time, and this machine's speed moves (the int8 engine's most, the timeline above), so it would place a variant by the clock, not the model
bench_ips = df["images_per_s_bench"] if "images_per_s_bench" in df else pd.Series(np.nan, index=df.index)
t = df[bench_ips.notna()].copy()
own_only = df[bench_ips.isna() & df.get("images_per_s", pd.Series(np.nan, index=df.index)).notna()]
if len(t):
    t["label"] = "ch. " + t["chapter"].str[:2] + ": " + t["label"]
    fig = plots.tradeoff(t, "images_per_s_bench", "accuracy", "images / s (batch 64, 2 threads; the benchmark above)", logx=False,
                         title="Accuracy vs throughput", fp_y=fp_acc, front="max")
    if len(own_only):
        display(Markdown(f"Left out: {len(own_only)} variant(s) timed only in their own chapter's run ("
                         + ", ".join(f"ch. {r['chapter'][:2]}: {r['label']}" for _, r in own_only.iterrows())
                         + "): their images/s come from another hour of this machine and are not comparable with the benchmark's."))
"""),
code("""
# agreement, not test accuracy: the best of several settings picked on test accuracy would pick the test split's noise too
# and a method's own variants (main_rows): a sweep's points, e.g. chapter 06's ten alphas each on a subsample of the
# images, would let the best of many noisy measurements stand for the method
b = main_rows(df[df["method"] != "fp32"].dropna(subset=["bits", "agreement"]))
b = b[b["act_bits"].fillna(32) >= 8] if "act_bits" in b else b
if len(b):
    best = b.loc[b.groupby(["method", "bits"])["agreement"].idxmax()].reset_index(drop=True)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    plots.bits_sweep(best, y="agreement", hue="method", ax=axes[0], title="Agreement with FP32")
    # the same points as the share of answers changed, on a log scale: the 8-bit variants, all near 100% on the left, apart
    plots.bits_sweep(best, y="disagreement", hue="method", ax=axes[1], title="Answers changed (log scale)")
    axes[1].get_legend().remove()
    fig.suptitle("The best of each method's own variants in any chapter, per weight bits (activations >= 8 bits)",
                 fontweight="bold")
    fig.tight_layout()
    plt.show()  # the figure above the sentence that reads it
    top = best[best["bits"] == best["bits"].max()].sort_values("agreement", ascending=False)
    if len(top) > 1 and "n_fidelity" in top and top["n_fidelity"].notna().all():
        changed = ((1 - top["agreement"]) * top["n_fidelity"]).round().astype(int)
        display(Markdown(
            f"At {top['bits'].iloc[0]:g} bits the methods change " + ", ".join(
                f"{k} of {int(n):,} answers ({m})" for m, k, n in zip(top["method"], changed, top["n_fidelity"]))
            + f": between {changed.min()} and {changed.max()} images each"
            + (f", counted on {' or '.join(f'{int(n):,}' for n in sorted(top['n_fidelity'].unique()))} images" if top["n_fidelity"].nunique() > 1 else "")
            + ". The log scale sets them apart; these counts say how many images each gap between them is."))
"""),
md("""
## How much does the calibration sample matter?

Each post-training method is re-run with three calibration samples (different seeds, same
size, all from the train split) at a setting where it is not lossless; RTN uses no data and
does not move. The differences the text below claims must exceed these spreads.
"""),
code("""
from qlib import calib, quant, gptq, awq, smoothquant, int8
var = []
ref = measure.Reference(fp, splits, fidelity_limit=fidelity_limit)  # held out: the same for every calibration seed
def chapter_settings(variant, **default):
    \"\"\"The settings chapter 06 recorded for a saved variant (so the seeds vary only the calibration sample).\"\"\"
    hit = df[df["variant_file"] == variant] if len(df) and "variant_file" in df else df.iloc[0:0]
    got = hit["settings"].iloc[0] if len(hit) and isinstance(hit["settings"].iloc[0], dict) else {}
    return {k: got.get(k, v) for k, v in default.items()}
ptq_set = chapter_settings("int8_ptq", observer="histogram")
sq_set = chapter_settings("sq_w8a8", observer="histogram", alpha=0.5, mode="bn")
print("int8 PTQ:", ptq_set, "· SmoothQuant W8A8:", sq_set)
for s in calib_seeds:
    x, idx = calib.sample(splits, cfg.calib_size, s)
    runs = {"GPTQ W2 per-channel": lambda: gptq.quantize_model(fp, x, gptq.GPTQSettings(quant=quant.QuantSettings(bits=2), act_order=True), progress=False)[0],
            "AWQ W3 per-channel": lambda: awq.apply(fp, awq.search(fp, x, awq.AWQSettings(quant=quant.QuantSettings(bits=3))), awq.AWQSettings(quant=quant.QuantSettings(bits=3))),
            "int8 static PTQ (int8 engine)": lambda: int8.convert(fp, x, observer=ptq_set["observer"]),
            "SmoothQuant W8A8 (int8 engine)": lambda: int8.convert(smoothquant.apply(fp, smoothquant.search(
                fp, x, smoothquant.SmoothSettings(sq_set["alpha"], sq_set["mode"]))), x, observer=sq_set["observer"])}
    for name, make in runs.items():
        var.append({"method": name, "calib_seed": s, **ref.row(make())})
var = pd.DataFrame(var)
spread = var.groupby("method")[["accuracy", "agreement", "kl"]].agg(["mean", "std"])
display((spread * [100, 100, 100, 100, 1, 1]).round(3))
"""),
md("""
## The seed paper's conclusions, tested
"""),
code("""
def best(method, rule=lambda r: r["accuracy"] >= fp_acc - 0.01, weight_only=True):
    \"\"\"The smallest of a method's own variants within 1 point of FP32 (weight-only: float activations).\"\"\"
    rows = main_rows(df[df["method"] == method]).dropna(subset=["size_mb"])
    if weight_only:
        rows = rows[(rows.get("engine", "float") == "float") & (rows.get("act_bits", 32).fillna(32) >= 32)]
    return pick(rows, rule)

lines = []
g, a = best("gptq"), best("awq")
fast = df[df.get("engine", pd.Series(dtype=str)).astype(str) == "int8"] if "engine" in df else df.iloc[0:0]
def seeds(label, col="accuracy"):
    \"\"\"A row's values over the calibration samples of the study above (by its label); None if the study did not re-run it.\"\"\"
    v = var.loc[var["method"] == label, col] if len(var) and "method" in var else []
    return [float(x) for x in v] if len(v) > 1 else None
def bench_sp(r):
    v = r.get("speedup_vs_fp32_bench")
    return None if v is None or pd.isna(v) else float(v)
g_acc = seeds(g["label"]) if g is not None else None
if g is not None and a is not None:
    ratios = [fp_mb / g["size_mb"], fp_mb / a["size_mb"]]
    odd = [n for n, r in zip(("GPTQ's", "AWQ's"), ratios) if not 3.5 <= r < 4.5]  # not ~4x smaller
    four = not odd
    wo = [v for v in (bench_sp(g), bench_sp(a)) if v is not None]  # the weight-only files as they run
    e8sp = fast["speedup_vs_fp32_bench"].dropna() if "speedup_vs_fp32_bench" in fast else pd.Series(dtype=float)
    int8_fast = len(e8sp) > 0 and e8sp.min() > 1.5
    lines.append(f"1. *\\"AWQ, GPTQ and QAT reduced size ~4x but did not improve throughput.\\"* "
                 f"**{'Confirmed' if four and not int8_fast and not (wo and max(wo) >= 1.1) else 'Refined'}.** Stored as real packed files, "
                 f"GPTQ reaches {g['size_mb']:.2f} MB ({g['label']}, accuracy {g['accuracy']:.2%}"
                 + (f" with chapter {int(g['chapter'][:2])}'s calibration sample, point 3" if g_acc else "") + f") and AWQ {a['size_mb']:.2f} MB "
                 f"({a['label']}, {a['accuracy']:.2%}) — {ratios[0]:.0f}x and {ratios[1]:.0f}x smaller than FP32" + ("" if four else ", not 4x" if len(odd) == 2 else f", {odd[0]} not 4x")
                 + ". Weight-only formats dequantize to float"
                 + (f", so alone they do not run faster ({results.span(wo)}x FP32's speed in the benchmark)" if wo and max(wo) < 1.1 else
                    f"; timed here they run at {results.span(wo)}x FP32's speed" if wo else ", so alone they should not run faster (not timed here)")
                 + (f"; executed on the int8 engine (points 2 and 4) quantized models run {results.span(e8sp)}x faster." if int8_fast else
                    f"; on the int8 engine quantized models ran at {results.span(e8sp)}x FP32's speed here." if len(e8sp) else "."))
sq = df[df["label"] == "SmoothQuant W8A8"]
if len(sq):
    sqr = sq.iloc[0]
    ssp = bench_sp(sqr)
    small = sqr["size_mb"] <= fp_mb / 3  # an int8 file is a quarter of FP32's plus its scales and metadata
    quick = ssp is not None and ssp > 1.5
    if ssp is not None:
        verdict = {(True, True): "Refuted", (False, True): "Confirmed", (True, False): "Refuted", (False, False): "Partly confirmed"}[small, quick]
        what = "it reduced " + {(True, True): "both size and time", (False, True): "time, not size", (True, False): "size, not time",
                                (False, False): "neither size nor time"}[small, quick]
    else:
        verdict = "Refuted on size" if small else "Not refuted here"
        what = ("it reduced size" if small else "it did not reduce size") + " (its time was not measured here)"
    line = (f"2. *\\"SmoothQuant reduced inference time but not model size.\\"* **{verdict}.** SmoothQuant W8A8 (chapter 6) is stored in "
            f"{sqr['size_mb']:.2f} MB, {fp_mb / sqr['size_mb']:.1f}x smaller than FP32's {fp_mb:.2f} MB (the test here: at most a third of "
            f"FP32's size, as an int8 file is a quarter plus its scales and metadata), at accuracy {sqr['accuracy']:.2%} (FP32 {fp_acc:.2%})"
            + (f", and runs {ssp:.1f}x faster than FP32 in the same benchmark run" if ssp is not None else "")
            + f": {what}. The seed's 42.67 MB was the float model's parameter bytes, not its int8 file.")
    f = fast.sort_values("size_mb").iloc[0] if len(fast) else None
    if f is not None and f["label"] != sqr["label"] and f["size_mb"] < sqr["size_mb"]:
        fsp = bench_sp(f)
        line += (f" On the same engine {f['label']} goes further: {f['size_mb']:.2f} MB at accuracy {f['accuracy']:.2%}"
                 + (f", {fsp:.1f}x faster than FP32." if fsp is not None else "."))
    lines.append(line)
if g is not None:
    low = min(g_acc) if g_acc else None
    lines.append(f"3. *\\"AWQ and GPTQ showed significant degradation: limited suitability for CNNs.\\"* "
                 f"**{'Refuted' if g['bits'] < 8 else 'Refuted at 8 bits only'}.** Correctly implemented, "
                 f"GPTQ keeps accuracy within a point of FP32 down to {int(g['bits'])} bits" + (f" with chapter {int(g['chapter'][:2])}'s calibration sample" if g_acc else "")
                 + f" ({g['label']}: {g['accuracy']:.2%}, agreement {g['agreement']:.2%})"
                 + (f"; over {len(g_acc)} calibration samples (the study above) its accuracy spans "
                    f"{results.span([100 * v for v in g_acc], '{:.2f}', '–')}%" if g_acc else "")
                 + ("" if not g_acc else ", every one within a point of FP32" if low >= fp_acc - 0.01 else
                    f", the lowest {100 * (fp_acc - low):.2f} points below FP32 ({fp_acc:.2%}): within a point with some samples, not all")
                 + (f". AWQ keeps it within a point down to {int(a['bits'])} bits ({a['accuracy']:.2%})" if a is not None else "")
                 + ". The seed's 63.2% and 75.5% came from a GPTQ that never saw activations and an AWQ that was not an equivalence transform (chapters 4 and 5).")
w4a8 = df[df["label"] == "GPTQ W4A8 (int8 engine)"]
if len(w4a8):
    w = w4a8.iloc[0]
    sp = w.get("speedup_vs_fp32_bench")
    sp = sp if sp is not None and not pd.isna(sp) else None
    both = sp is not None and sp > 1.5 and w["size_mb"] < fp_mb / 4 and w["accuracy"] >= fp_acc - 0.015
    lines.append("4. *\\"Reducing both size and time without losing accuracy needs more sophisticated strategies.\\"* "
                 + ("**Refuted with standard tools.** " if both else "**Not refuted here.** ")
                 + f"GPTQ's 4-bit weights executed on PyTorch's int8 engine (W4A8): {w['size_mb']:.2f} MB, accuracy {w['accuracy']:.2%} "
                 f"(FP32 {fp_acc:.2%}), agreement {w['agreement']:.2%}" + (f", {sp:.1f}x FP32's throughput in the benchmark." if sp else "."))
display(Markdown("\\n\\n".join(lines) if lines else "Not enough chapters have recorded rows to answer the conclusions yet."))
"""),
md("""
## What a practitioner should use

Each recommendation below is built from the rows the chapters recorded (a missing chapter drops
its line).
"""),
code("""
lab = lambda l: df[df["label"] == l].iloc[0] if len(df) and (df["label"] == l).any() else None
tips = []
p8, s8, w4 = lab("int8 PTQ (torch default, no smoothing)"), lab("SmoothQuant W8A8"), lab("GPTQ W4A8 (int8 engine)")
if p8 is not None:
    sq_vs = ""  # what smoothing changes, against the spread over calibration samples (the study above)
    if s8 is not None:
        d = (s8["agreement"] - p8["agreement"]) * 100
        by_seed = (var.pivot_table(index="calib_seed", columns="method", values="agreement")
                   if len(var) and "method" in var else pd.DataFrame())
        pair = ["SmoothQuant W8A8 (int8 engine)", "int8 static PTQ (int8 engine)"]
        dd = list(100 * (by_seed[pair[0]] - by_seed[pair[1]]).dropna()) if set(pair) <= set(by_seed.columns) else []
        sq_vs = f"; SmoothQuant's smoothing moves that by {d:+z.2f} points" + (
            "" if len(dd) < 2 else
            f", within the spread over calibration samples ({results.span(dd, '{:+.2f}', ' to ')} points over {len(dd)} samples): "
            "the activations have no LLM-style outlier channels for it to fix (chapter 6)" if min(dd) <= 0 <= max(dd) else
            f", {'up' if min(dd) > 0 else 'down'} with every calibration sample ({results.span(dd, '{:+.2f}', ' to ')} points over {len(dd)} samples; chapter 6)")
    tips.append(f"- **Need speed on a CPU?** Static int8 on PyTorch's x86 engine. Its default recipe keeps {p8['agreement']:.2%} "
                f"agreement with FP32 in {p8['size_mb']:.1f} MB" + sq_vs
                + (f"; with GPTQ's 4-bit codes on the same engine (W4A8) the file is {w4['size_mb']:.2f} MB at {w4['agreement']:.2%} agreement"
                   if w4 is not None else "") + ".")
g = best("gptq")
if g is not None:
    g_acc = seeds(g["label"])
    tips.append(f"- **Need the smallest file?** {'' if g['label'].startswith('GPTQ') else 'GPTQ, '}{g['label']}: {g['size_mb']:.2f} MB at {g['accuracy']:.2%} accuracy"
                + (f" ({results.span([100 * v for v in g_acc], '{:.2f}', '–')}% over {len(g_acc)} calibration samples)" if g_acc else "")
                + f" and {g['agreement']:.2%} agreement with FP32"
                + (f": it gives another class than FP32 to about 1 image in {1 / (1 - g['agreement']):.0f}, where the 99.5% this chapter "
                   "recommends allows 1 in 200" if g["agreement"] < 0.995 else ", above the 99.5% this chapter recommends")
                + ". It takes seconds on a CPU.")
a3, c3, r3 = lab("AWQ W3 per-channel"), lab("RTN+clip (mse) W3 per-channel"), lab("RTN W3 per-channel")
if a3 is not None and c3 is not None and r3 is not None:
    rtn_best = max(r3["agreement"], c3["agreement"])
    a_agr = seeds(a3["label"], "agreement")
    lead = a3["agreement"] > rtn_best and (a_agr is None or min(a_agr) > rtn_best)  # ahead with every calibration sample
    tips.append(f"- **AWQ?** At W3 it keeps {a3['agreement']:.2%} agreement"
                + (f" ({results.span([100 * v for v in a_agr], '{:.2f}', '–')}% over {len(a_agr)} calibration samples)" if a_agr else "")
                + f" against RTN's {r3['agreement']:.2%} and RTN with a weight-error clipping search's {c3['agreement']:.2%}"
                + ("; its gain here comes from choosing the clipping on the layer's output, not from salient channels (chapter 5)." if lead else
                   "; it is not ahead of RTN with every calibration sample here (chapter 5)." if a3["agreement"] > rtn_best else
                   "; it does not beat RTN here (chapter 5)."))
l4, p4, a4 = lab("LSQ W4A4"), lab("GPTQ W4A4"), lab("GPTQ W4A4 (every layer 4-bit)")
if l4 is not None and p4 is not None:
    keep_helps = a4 is None or p4["agreement"] > a4["agreement"]
    tips.append(("- **4-bit activations?** Keep the first layer (it reads the image) and the classifier at 8 bits" if keep_helps else
                 "- **4-bit activations?** Keeping the first layer (it reads the image) and the classifier at 8 bits does not help here")
                + (f": with every layer at 4 bits W4A4 PTQ keeps {a4['agreement']:.2%} agreement on held-out images, "
                   f"with those two at 8 bits {p4['agreement']:.2%}" if a4 is not None else f" (W4A4 PTQ: {p4['agreement']:.2%} agreement)")
                + f". LSQ fine-tuning {'raises' if l4['agreement'] > p4['agreement'] else 'does not raise'} it "
                f"({l4['agreement']:.2%} after {l4['seconds'] / 60:.1f} min of CPU training, chapter 7).")
tips.append("- Measure fidelity (agreement, KL) on every image you can, not only accuracy on a small test split: with "
            f"{splits.test.labels.numel():,} test images from few tracks, accuracy differences under about a point are noise.")
display(Markdown("\\n".join(tips)))
"""),
code("""
if not cfg.smoke and len(our_tab):
    readme = results.ROOT / "README.md"
    text = readme.read_text()
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    if start in text and end in text:
        block = (start + "\\n" + table.astype(object).where(table.notna(), "").to_markdown(index=False, floatfmt=("", ".2f", ".2f", "", "", ".2f", ".4f", ".1f", ".0f")) + "\\n\\n![Accuracy vs file size](book/results/pareto.png)\\n" + end)
        with atomic.replacing(readme) as tmp:   # never a half-written README
            tmp.write_text(text.split(start)[0] + block + text.split(end)[1])
        print("README results table updated")
results.record("08_results", [{"method": r["method"], "label": r["method"], "calib_seed": int(r["calib_seed"]),
                               "accuracy": r["accuracy"], "agreement": r["agreement"], "kl": r["kl"]} for _, r in var.iterrows()],
               cfg, data=splits.source);  # ';': the cell shows nothing (record returns the file's path)
"""),
]
write(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "notebooks", "08_results.ipynb"), cells)
