import sys; import os; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbbuild import md, code, params, write

cells = [
md(r"""
# 7. Quantization-aware training: int8 on PyTorch's engine, and low bits with learned step sizes

Every method so far quantized a *trained* network after the fact (post-training quantization,
PTQ). Quantization-aware training (QAT) instead keeps training for a little while **with the
quantizer in the forward pass**, so the weights (and, with LSQ, the quantizer's step sizes)
adapt to the grid they will live on. The seed paper described QAT but published no code; the
runs below are this study's own. The question the chapter answers: **when is the extra cost of
training worth it?**

## Fake quantization in the forward pass

A tensor $v$ (a weight, or the input of a layer) with step $s$ and integer range
$[Q_n, Q_p]$ is replaced in the forward pass by

$$
\hat v = s \cdot \left\lfloor \operatorname{clamp}\!\left(\tfrac{v}{s},\, Q_n,\, Q_p\right) \right\rceil .
$$

Weights use signed codes $[-2^{b-1}, 2^{b-1}-1]$ with one step per output channel; activations
after a ReLU use unsigned codes $[0, 2^{b}-1]$ with one step per tensor. The loss is computed on
the quantized network, so the network that is trained computes what the deployed one computes (up to
the int8 engine's own rounding, where a model runs on it; the A4 models are measured in this
fake-quantized form). One step per output channel for the weights is this study's choice (the LSQ
paper has one per layer): it is what GPTQ and the int8 engine use, so LSQ starts from their solution.

## The straight-through estimator

$\lfloor\cdot\rceil$ has zero derivative almost everywhere. The straight-through estimator
(STE) treats it as the identity inside the clipping range and as a constant outside:

$$
\frac{\partial \hat v}{\partial v} \approx
\begin{cases} 1 & Q_n \le v/s \le Q_p \\ 0 & \text{otherwise.} \end{cases}
$$

The float "shadow" weights $v$ receive the gradient of the quantized network and drift until
their rounded values serve the loss; values clipped away get no gradient.

## LSQ: learning the step

Learned Step Size Quantization (Esser et al., ICLR 2020) makes $s$ a parameter. With the same
STE, the gradient of $\hat v$ with respect to the step is

$$
\frac{\partial \hat v}{\partial s} =
\begin{cases} -\,v/s + \lfloor v/s \rceil & Q_n < v/s < Q_p \\ Q_n & v/s \le Q_n \\ Q_p & v/s \ge Q_p , \end{cases}
$$

so the step feels both the rounding error inside the range and the clipping error outside it.
Because one step is shared by $N$ values, its summed gradient is far larger than a weight's;
LSQ scales it by

$$
g = \frac{1}{\sqrt{N \cdot Q_p}} ,
$$

with $N$ the number of weights per output channel (weight steps) or the number of input
elements per image (activation steps), so that steps and weights learn at comparable rates under
SGD. This chapter trains with Adam (below), which divides every update by the gradient's own
running size: $g$ is kept as LSQ defines it, but there it no longer sets how fast a step moves; the
steps' learning rate does.

## The two recipes: `qlib.qat` and `qlib.lsq`

* **int8 QAT** (`qat.train_int8`): torchvision's quantizable ResNet-18 with the baseline's
  weights, conv-BN-ReLU fused, per-channel int8 weights and per-tensor uint8 activations, a few
  epochs at a small learning rate; then converted to the int8 engine of chapter 6 and measured
  like every other variant. Two ways to start it are compared. The **standard recipe** uses
  PyTorch's x86 QAT qconfig: activation ranges are moving averages of what the observers see
  during training, BN normalises with batch statistics, and both are frozen for the last epoch;
  the loss is the labels' cross-entropy. The chapter's recipe **starts from the int8 PTQ model**
  (`calib_x=`): the activation ranges are calibrated exactly as PTQ calibrates them (histogram
  observer, the same 256 images) and stay fixed, BN statistics are frozen from the first step,
  and the loss is distillation towards the FP32 outputs. Only the weights move, so any change
  against PTQ is what the fine-tune did.
* **LSQ** (`lsq.lsq_train`): the BN-folded network with learned steps for weights and
  activations, **initialised from the GPTQ solution** (weights and their scales) and from
  activation steps calibrated on the 256 calibration images (an MSE search of the clipping
  range). At step 0 this *is* a post-training model: GPTQ weights plus calibrated per-tensor
  activations. That model is the PTQ baseline each LSQ run is compared with, so every point the
  LSQ model gains is what training bought. The loss is **distillation** towards the FP32
  outputs (the study measures agreement with FP32) on **mixup blends** of training images,
  $x = \lambda x_i + (1-\lambda) x_j$ with $\lambda \sim \mathrm{Beta}(0.4, 0.4)$. Why blends:
  the baseline has fitted its training images, so on them the quantized network already agrees
  with FP32 almost everywhere and the loss says little; on blends it disagrees more often (measured below),
  and the teacher's outputs there are the signal. The optimizer is **Adam**, at $10^{-5}$ for
  the weights and $10^{-3}$ for the steps, which are learned as **logarithms** ($s = e^{\theta}$).
  With SGD at one learning rate, a step's gradient (scaled by $g$) is so much smaller than a
  weight's that in a one-minute fine-tune the activation steps do not move at all; Adam
  normalises each update, so every parameter moves by about its learning rate. An Adam update
  therefore has a fixed *size*: learned directly, a step would move by the same amount whether
  it is a 2-bit layer's weight step (~$10^{-2}$) or a 4-bit activation step (~$10^{-1}$).
  Learned as a logarithm, every step moves by the same *fraction* of itself. (This study's first
  Adam runs learned the steps directly: an update of $10^{-3}$, a tenth of a small weight step,
  wrecked the low-bit weights within a few updates.) The two rates were chosen on the
  validation images' agreement alone, among $10^{-6}$–$10^{-4}$ and $10^{-3}$–$10^{-2}$. The
  validation images are half of the held-out set the recoveries below are measured on: a
  selection in QAT's favour, which makes a shortfall there the more telling.
* **First and last layer at 8 bits.** As in the LSQ paper, the first convolution (it reads the
  image) and the classifier keep 8-bit weights and inputs, in the PTQ and the QAT models alike.
  At A4 the first layer's input is the *image*, quantized to 16 levels: information lost
  before the network sees it, which no training can restore. Measured below: how much of what
  W4A4 loses with every layer at 4 bits these two layers remove, and the first one alone.
"""),
params("""
data = None
image_size = None
split = None
seed = None
smoke = None
int8_epochs = 3        # int8 QAT: epochs (standard recipe: the last one with frozen observers and BN statistics)
int8_steps = 45        # int8 QAT: optimizer steps in all (batch 128), i.e. 15 per epoch
int8_lr = 1e-3         # int8 QAT: SGD learning rate (cosine-decayed)
int8_other_lrs = [1e-4, 1e-5]  # int8 QAT from PTQ: the same run at these learning rates too
lsq_configs = ["W8A4", "W4A4", "W2A4", "W2A8"]
lsq_epochs = 3         # LSQ: epochs (one validation point each)
lsq_steps = 45         # LSQ: optimizer steps in all per configuration (batch 128)
distill = 1.0          # LSQ: weight of the distillation loss to the FP32 outputs (1: distillation only)
mixup = 0.4            # LSQ: Beta(mixup, mixup) input mixup of the training batches (0: off)
lsq_lr, lsq_step_lr = 1e-5, 1e-3  # LSQ: Adam learning rates of the weights and of the steps' logarithms (a fraction per update)
lsq_keep_8bit = ["conv1", "fc"]   # layers whose weights and inputs stay at 8 bits (the LSQ paper's convention), PTQ and QAT alike
held_config = "W2A4"    # the held-out distillation test: configuration,
held_steps, held_lr = 60, 1e-4  # its optimizer steps (batch 128) and weights' learning rate
spread_seeds = 2       # LSQ: extra fine-tunes of each A4 configuration with other seeds (how much one run's recovery varies)
w2a8_seeds = 2         # W2A8: extra calibration samples, each with its own GPTQ and LSQ run (how much the comparison varies)
recon_images, recon_iters = 1024, 200  # block-wise reconstruction: training images, and Adam updates (batch 64) per unit
budget_minutes = 4.5   # LSQ: the chapter's recipe time-boxed to the 5-minute target: minutes of optimizer steps (building the start model adds seconds)
budget_steps, budget_every = 400, 40  # at most this many steps in the time box (1.0-1.7 s per step from day to day: 160-270), measured every 40 steps
budget_lr, budget_lr_configs, budget_lr_seeds = 3e-4, ["W4A4", "W2A4"], 2  # the 5-minute run again with this weights' learning rate, these configurations, seeds
moved_share = 0.01     # a fine-tune moves the weights when it changes at least this share of their codes (1 in 100)
fidelity_limit = None  # agreement on val + test (held out from QAT training); a number subsamples it
timeline_seconds = 30  # int8 speed: FP32, PTQ and QAT timed round after round beside a probe of the machine (chapter 8)
"""),
code("""
import copy, os, time
from dataclasses import replace
import numpy as np
import pandas as pd
import torch
from IPython.display import display, Markdown
from qlib import Config, atomic, data as qdata, models, measure, results, plots, plots_qat, calib, widgets
from qlib import int8, qat, lsq, lsq_curve, export

plots.style()
torch.set_num_threads(2)
t_chapter = time.time()
cfg = Config.from_env(data=data, image_size=image_size, split=split, seed=seed, smoke=smoke)
splits = qdata.load(cfg)
plots.header(cfg, splits)
if cfg.smoke:  # the same cells on a few steps
    int8_steps, lsq_steps, int8_epochs, lsq_epochs, lsq_configs, held_steps = 2, 2, 2, 1, ["W4A4", "W2A8"], 2
    int8_other_lrs = int8_other_lrs[:1]
    spread_seeds, w2a8_seeds, budget_steps, budget_every, recon_iters, budget_lr_seeds = 1, 1, 2, 1, 2, 1
fp, _ = models.baseline(cfg, splits)
calib_x, calib_idx = calib.sample(splits, cfg.calib_size, cfg.seed)
# QAT trains on the whole train split; the fidelity set (validation + test) is held out from it, as in every chapter
ref = measure.Reference(fp, splits, fidelity_limit=fidelity_limit)
print(f"FP32: test accuracy {ref.fp['accuracy']:.2%}; fidelity set (val + test, held out from training) {ref.fp['n_fidelity']} images; "
      f"train split {len(splits.train)} images = {-(-len(splits.train) // 128)} batches of 128")
"""),
md("""
## int8: QAT against PTQ on the same engine

The PTQ model is chapter 6's: the baseline converted to the int8 engine with histogram-calibrated
activations. The QAT models are fine-tuned from the same baseline, for the same steps, and
converted by the same engine: once with the standard recipe and once from the PTQ model (whose
step 0 *is* that PTQ model, up to rounding ties in folding BN). The chapter's recipe is also run
at smaller learning rates, to show how much the result moves with a setting nobody can tune
on the test split. All are saved with `int8.save` and measured with the same protocol: test
accuracy with a track-level bootstrap interval, agreement with FP32, the real file, and the
latency of a batch of 64 images on 2 threads (FP32, PTQ and the chapter's QAT model timed in
interleaved rounds, as in chapter 8's benchmark).
"""),
code("""
t = time.time()
ptq8 = int8.convert(fp, calib_x, observer="histogram")
ptq8_s = time.time() - t
s8_std = qat.QATSettings(epochs=int8_epochs, lr=int8_lr, max_steps=int8_steps, freeze_epochs=1, seed=cfg.seed)
s8 = replace(s8_std, distill=1.0)  # the chapter's recipe: from the PTQ model, distilled
t = time.time()
qat8_std, hist8_std = qat.train_int8(fp, splits, s8_std, progress=False)
qat8_std_s = time.time() - t
t = time.time()
qat8, hist8 = qat.train_int8(fp, splits, s8, progress=False, calib_x=calib_x)
qat8_s = time.time() - t
lr_runs, lr_s = {}, {}
for lr in int8_other_lrs:
    t = time.time()
    lr_runs[lr] = qat.train_int8(fp, splits, replace(s8, lr=lr), progress=False, calib_x=calib_x)[0]
    lr_s[lr] = time.time() - t
paths = {"qat_int8": results.variant_path(cfg, "qat_int8", ".int8.pt")}
int8.save(qat8, paths["qat_int8"])
ptq8_path = os.path.join(cfg.cache_dir, "ch07_ptq_int8.int8.pt")
int8.save(ptq8, ptq8_path)
qat8 = int8.load(paths["qat_int8"])  # measure what was saved
print(f"int8 PTQ: {ptq8_s:.1f} s; int8 QAT: {qat8_std_s:.0f} s (standard recipe), {qat8_s:.0f} s (from PTQ) for "
      f"{sum(hist8['steps'])} steps each")
"""),
code("""
lat = measure.latencies({"fp32": fp, "ptq": ptq8, "qat": qat8}, cfg.image_size, 64, threads=2, warmup=2 if cfg.smoke else 3,
                        runs=3 if cfg.smoke else 15)  # interleaved rounds: drift of the machine hits all three alike
# this machine's speed moves in stretches and the int8 engine feels it most (chapter 8): the speed-up in the quiet
# half of a timeline's rounds and in its loaded ones (a probe of the machine 20% slower), each round's ratio measured in it
tl8 = measure.timeline({"fp32": fp, "ptq": ptq8, "qat": qat8}, seconds=5 if cfg.smoke else timeline_seconds,
                       image_size=cfg.image_size)
tl8s = measure.timeline_speedups(tl8, "fp32")
sp8_tl = tl8s["models"]["qat"]
tl8_text = (f"{sp8_tl['quiet']:.2f}x in the quiet half of a {tl8s['rounds']}-round timeline, "  # 2 decimals: read against 3.5x
            + (f"{sp8_tl['loaded']:.2f}x in its {tl8s['loaded_rounds']} loaded round{'s' if tl8s['loaded_rounds'] > 1 else ''}" if tl8s["loaded_rounds"] else "which met no loaded round")
            + (f", with {tl8s['round_ms']['stolen']['loaded']:.0f} ms of CPU time stolen by the hypervisor in a loaded round"
               if tl8s["loaded_rounds"] and "stolen" in tl8s["round_ms"] else "")
            + ("" if tl8s["quiet_ok"] else  # the split assumes that at least half of the run was quiet
               f"; but even its quiet half's probe ran {tl8s['quiet_excess'] - 1:.0%} slower than the fastest round, so no set of "
               "this timeline shows the quiet machine"))
r_ptq8 = {**ref.row(ptq8), "size_mb": measure.file_size_mb(ptq8_path), "seconds": ptq8_s}
r_qat8 = {**ref.row(qat8), "size_mb": measure.file_size_mb(paths["qat_int8"]), "seconds": qat8_s}
r_qat8_std = {**ref.row(qat8_std), "seconds": qat8_std_s}
fp_path = os.path.join(cfg.cache_dir, "ch07_fp32.pt")
atomic.torch_save(fp.state_dict(), fp_path)
tab8 = pd.DataFrame([
    {"model": "FP32", **ref.fp, "size_mb": measure.file_size_mb(fp_path), "seconds": 0.0, **lat["fp32"]},
    {"model": "int8 PTQ (histogram)", **r_ptq8, **lat["ptq"]},
    {"model": "int8 QAT", **r_qat8, **lat["qat"]}]).set_index("model")
tab8["speedup"] = tab8.loc["FP32", "ms_per_batch"] / tab8["ms_per_batch"]
display(tab8[["accuracy", "acc_lo", "acc_hi", "agreement", "kl", "size_mb", "ms_per_batch", "speedup", "seconds"]].round(4))
n_fid8 = ref.fp["n_fidelity"]
runs8 = [("int8 PTQ (histogram)", "-", r_ptq8), ("QAT, standard recipe", f"{int8_lr:g}", r_qat8_std),
         ("QAT from PTQ (the chapter's)", f"{int8_lr:g}", r_qat8)] + \
        [("QAT from PTQ", f"{lr:g}", ref.row(m)) for lr, m in lr_runs.items()]
recipes8 = pd.DataFrame([{"model": name, "lr": lr, "accuracy": r["accuracy"], "vs FP32 (points)": (r["accuracy"] - ref.fp["accuracy"]) * 100,
                          "agreement": r["agreement"], "disagreements": round((1 - r["agreement"]) * n_fid8), "kl": r["kl"]}
                         for name, lr, r in runs8]).set_index("model")
display(recipes8.round(4))
own8 = recipes8.iloc[2:]  # the runs from the PTQ model, one per learning rate
"""),
code("""
lab_std, lab_own = "standard recipe (loss: cross-entropy)", "from PTQ (loss: KL to FP32)"
fig = plots_qat.qat_curves({lab_std: hist8_std, lab_own: hist8}, starts={lab_own: models.evaluate(ptq8, splits.val)["accuracy"]},
                           title="int8 QAT: the standard recipe (ranges and BN statistics frozen for the last epoch) and from PTQ (fixed from the start)",
                           relative_loss=True)  # two different losses: their changes compare, their levels do not
# Signed figures print with Python's "z" option ("{:+z.2f}", PEP 682): one that rounds to zero reads +0.00, not -0.00
# (results.span drops that minus itself, so its formats need no "z").
d_acc = (r_qat8["accuracy"] - r_ptq8["accuracy"]) * 100
ptq_dis, std_dis, own_dis = recipes8["disagreements"].iloc[0], recipes8["disagreements"].iloc[1], own8["disagreements"]
display(Markdown(
    f"int8 QAT from PTQ reaches **{r_qat8['accuracy']:.2%}** test accuracy (PTQ: {r_ptq8['accuracy']:.2%}, FP32: "
    f"{ref.fp['accuracy']:.2%}; {d_acc:+z.2f} points vs PTQ) and **{r_qat8['agreement']:.2%}** agreement with "
    f"FP32 (PTQ: {r_ptq8['agreement']:.2%}), in a {r_qat8['size_mb']:.2f} MB file running "
    f"{tab8.loc['int8 QAT', 'speedup']:.1f}x faster than FP32 in the table's timing ({tl8_text}). It cost {qat8_s / 60:.1f} min of training against "
    f"{ptq8_s:.1f} s of calibration. PTQ disagrees with FP32 on {ptq_dis} of {n_fid8:,} held-out images; started from it, "
    f"the fine-tune ends at {results.span(own_dis, '{}', '–')} disagreements over the {len(own_dis)} learning rates "
    f"({results.span(own8['vs FP32 (points)'], '{:+.2f}', ' to ')} points of "
    f"test accuracy vs FP32). The standard recipe — moving-average ranges, BN statistics re-estimated from a few dozen "
    f"augmented batches, labels instead of FP32's outputs — ends at **{std_dis}**" +
    (f", further from FP32 than the PTQ model it could have started from" if std_dis > ptq_dis else "") +
    ". " + (f"At 8 bits PTQ is already within noise of FP32 ({ptq_dis} disagreements): there is little for training to win back, "
           + ("and no learning rate wins any of it." if own_dis.min() >= ptq_dis else
              f"and the best learning rate wins back {ptq_dis - own_dis.min()} of them.")
           if r_ptq8["agreement"] >= 0.995 else
           f"PTQ loses {1 - r_ptq8['agreement']:.2%} of agreement here; the fine-tune ends at {results.span(own_dis, '{}', '–')}.")))
"""),
md("""
## Low bits: LSQ against PTQ of the same bits

With float activations GPTQ is within noise of FP32 at W4 and loses a few points of agreement at W2
(chapter 4). What no post-training method here can remove is the loss of **4-bit activations**:
one step per tensor for the whole post-ReLU distribution, which smoothing does not help (below). So
the comparison is made at W8A4, whose 8-bit weights leave the activations as the only source of
loss, at W4A4 and W2A4, and at W2A8, where only the 2-bit weights lose, to see whether training
wins back what GPTQ leaves there.

First the GPTQ solutions (BN folded, symmetric per-channel, min-max ranges, act-order: chapter
04's settings; `conv1` and `fc` at 8 bits), timed: they are the PTQ weights and the LSQ starting
points.
"""),
code("""
def gptq_solution(w, keep_8bit):  # the chapter's GPTQ solution at w bits (keep_8bit layers at 8), and its seconds
    t = time.time()
    g = lsq.gptq_init(fp, w, calib_x, tuple(keep_8bit))
    return g, time.time() - t
gq, gptq_s = {}, {}
for w in sorted({lsq.parse_config(c)[0] for c in lsq_configs}):
    gq[w], gptq_s[w] = gptq_solution(w, lsq_keep_8bit)
    print(f"GPTQ W{w}: {gptq_s[w]:.1f} s")
"""),
md("""
Then, for each configuration: the PTQ model (the LSQ model at step 0: GPTQ weights,
MSE-calibrated activation steps), the LSQ fine-tune, and for W2A8 both again on the int8 engine
(the 2-bit codes in int8 containers, activations calibrated by the engine's histogram observer,
exactly as chapter 6 runs GPTQ W2A8).
"""),
code("""
lsq_recipe = qat.QATSettings(epochs=lsq_epochs, lr=lsq_lr, step_lr=lsq_step_lr, optimizer="adam", max_steps=lsq_steps,
                             distill=distill, mixup=mixup, keep_8bit=tuple(lsq_keep_8bit), seed=cfg.seed)
low, curves, starts, lsq_models, ptq_models, fid_logits, train_min = [], {}, {}, {}, {}, {}, {}
def int8_pair(g, m, x):  # on the int8 engine, both calibrated on x: GPTQ's PTQ model, then the LSQ fine-tune
    return ref.row(int8.convert(g, x, "histogram")), ref.row(lsq.to_int8(m, x))
for c in lsq_configs:
    w, a = lsq.parse_config(c)
    s = replace(lsq_recipe, w_bits=w, a_bits=a)
    m0 = lsq.lsq_model(fp, s, init_model=gq[w], calib_x=calib_x)
    starts[c], ptq_models[c] = models.evaluate(m0, splits.val)["accuracy"], m0
    lg = ref.logits(m0)
    fid_logits[(c, "PTQ")] = lg[1]
    low.append({"config": c, "kind": "PTQ", "engine": "float (fake-quant)", **ref.row(logits=lg), "seconds": gptq_s[w],
                "size_mb": measure.saved_size_mb(gq[w])})
    t = time.time()
    m, curves[c] = lsq.lsq_train(fp, splits, s, init_model=gq[w], calib_x=calib_x, progress=False)
    train_s = time.time() - t
    train_min[c] = train_s / 60
    lg = ref.logits(m)
    fid_logits[(c, "QAT")] = lg[1]
    low.append({"config": c, "kind": "QAT", "engine": "float (fake-quant)", **ref.row(logits=lg), "seconds": gptq_s[w] + train_s,
                "size_mb": measure.saved_size_mb(lsq.export_model(m))})
    lsq_models[c] = m
    if a == 8:
        p8, q8 = int8_pair(gq[w], m, calib_x)
        low.append({"config": c, "kind": "PTQ", "engine": "int8", **p8, "seconds": gptq_s[w], "size_mb": low[-2]["size_mb"]})
        low.append({"config": c, "kind": "QAT", "engine": "int8", **q8, "seconds": low[-2]["seconds"], "size_mb": low[-2]["size_mb"]})
lowdf = pd.DataFrame(low)
display(lowdf[["config", "kind", "engine", "accuracy", "agreement", "kl", "size_mb", "seconds"]].round(4))
"""),
code("""
fig = plots_qat.qat_curves(curves, starts, title="LSQ fine-tuning from GPTQ (step 0 = the PTQ model)")
"""),
md("""
A configuration's **recovery** is the share of PTQ's agreement loss that QAT wins back,
$(a_\\text{QAT} - a_\\text{PTQ}) / (1 - a_\\text{PTQ})$ for agreements $a$ with FP32 (`measure.recovery`).
Its uncertainty is not that of three thousand independent images: held-out frames of one track are
near-duplicates that flip together, so the interval below resamples whole tracks, with the PTQ and the
QAT model on the same resampled images (`measure.recovery_ci`, a paired cluster bootstrap).
"""),
code("""
def recovery(c, engine="float (fake-quant)"):
    g = lowdf[(lowdf.config == c) & (lowdf.engine == engine)].set_index("kind")
    p, q = g.loc["PTQ", "agreement"], g.loc["QAT", "agreement"]
    return p, q, measure.recovery(p, q)
def loss_images(c):  # what PTQ loses in agreement with FP32, in held-out images
    return (1 - recovery(c)[0]) * ref.fp["n_fidelity"]
def n_images(x):  # "1 held-out image", "9 held-out images"
    return f"{x:.0f} held-out image" + ("" if round(x) == 1 else "s")
import math
fp_top = ref.fp_fid.argmax(1)
rec_ci, lost_tracks = {}, {}  # the recovery's interval: a paired bootstrap over the held-out tracks
for c in lsq_configs:
    ok = {k: fid_logits[(c, k)].argmax(1) == fp_top for k in ("PTQ", "QAT")}
    rec_ci[c] = measure.recovery_ci(ok["PTQ"], ok["QAT"], ref.fid_groups, seed=cfg.seed)
    lost_tracks[c] = len({g for g, a in zip(ref.fid_groups, ok["PTQ"].tolist()) if not a})
n_tracks = len(set(ref.fid_groups))
def ci_text(c):
    _, lo, hi = rec_ci[c]
    return "no interval: PTQ lost nothing" if math.isnan(lo) else f"95% interval over tracks {results.span([lo, hi], '{:+.0%}', ' to ')}"
lines, gain, dkl = [], {}, {}
for c in lsq_configs:
    p, q, r = recovery(c)
    gain[c] = (q - p) * 100
    kl = lowdf[(lowdf.config == c) & (lowdf.engine == "float (fake-quant)")].set_index("kind")["kl"]
    dkl[c] = kl["QAT"] / kl["PTQ"] - 1
    lines.append(f"* **{c}**: PTQ agreement {p:.2%} (loses {1 - p:.2%}: {round((1 - p) * len(fp_top))} images on "
                 f"{lost_tracks[c]} of the {n_tracks} held-out tracks), LSQ {q:.2%}: QAT wins back "
                 f"**{r:.0%}** of the loss ({ci_text(c)}); KL to FP32 {kl['PTQ']:.4f} → {kl['QAT']:.4f} ({dkl[c]:+z.0%}); "
                 f"{train_min[c]:.1f} min of training after {gptq_s[lsq.parse_config(c)[0]]:.0f} s of GPTQ.")
display(Markdown("\\n".join(lines)))
fig = plots_qat.qat_vs_ptq(lowdf[lowdf.engine == "float (fake-quant)"])
"""),
md(r"""
### Would smoothing help the PTQ?

The A4 loss is in the activations, and chapter 6's SmoothQuant moves range from activations into
weights: each input channel of a convolution is divided by $s_j$ and its weights multiplied by
it, the division folded into the BN before (`mode="bn"`, the second convolution of each block)
and, with `mode="shared"`, into the residual stream too (one scale per stage). The issue's PTQ is
"smoothing if it helps", so it is measured. For each A4 configuration the migration strength
$\alpha$ of every layer is searched on the calibration images only — each layer's output error
with its input at 4 bits and its weights at the configuration's bits
(`smoothquant.search_alpha(per_layer=True)`) — and the smoothed network (the same float function)
gets its own GPTQ weights and calibrated activation steps, exactly like the PTQ above. Its change is
read, with the paired track bootstrap, as the share of the unsmoothed PTQ's agreement loss it wins
back.
"""),
code("""
from qlib import fold
a4 = [c for c in lsq_configs if lsq.parse_config(c)[1] == 4]
smooth_rows = []
for c in a4:
    w, a = lsq.parse_config(c)
    ok0 = fid_logits[(c, "PTQ")].argmax(1) == fp_top
    p0 = lowdf[(lowdf.config == c) & (lowdf.kind == "PTQ") & (lowdf.engine == "float (fake-quant)")].iloc[0]
    smooth_rows.append({"config": c, "smoothing": "none (the table's PTQ)", **p0[["agreement", "kl", "accuracy"]].to_dict()})
    for mode in fold.MODES:
        t = time.time()
        m_sm, alphas = lsq.smoothed_ptq(fp, replace(lsq_recipe, w_bits=w, a_bits=a), calib_x, mode=mode)
        lg = ref.logits(m_sm)
        ok = lg[1].argmax(1) == fp_top
        r, lo, hi = measure.recovery_ci(ok0, ok, ref.fid_groups, seed=cfg.seed)
        smooth_rows.append({"config": c, "smoothing": mode, **ref.row(logits=lg), "alpha": float(np.median(list(alphas.values()))),
                            "images": int(ok.sum() - ok0.sum()), "won": r, "lo": lo, "hi": hi, "seconds": time.time() - t})
smooth = pd.DataFrame(smooth_rows)
"""),
code("""
display(smooth.set_index(["config", "smoothing"])[["alpha", "agreement", "kl", "accuracy", "images", "won", "lo", "hi", "seconds"]].style.format(
    {"alpha": "{:.2f}", "agreement": "{:.2%}", "kl": "{:.4f}", "accuracy": "{:.2%}", "images": "{:+z.0f}", "won": "{:+z.0%}", "lo": "{:+z.0%}",
     "hi": "{:+z.0%}", "seconds": "{:.0f}"}, na_rep="").set_caption(
    "PTQ with and without smoothing (alpha: median over layers; images: held-out images it agrees with FP32 on, minus the "
    "unsmoothed PTQ's; won: share of the unsmoothed PTQ's loss, with its 95% interval over tracks)"))
sm_only = smooth[smooth.smoothing != "none (the table's PTQ)"]
helps, hurts = sm_only[sm_only.lo > 0], sm_only[sm_only.hi < 0]
best_sm = sm_only.loc[sm_only.groupby("config").agreement.idxmax()].set_index("config")
vs_best = {c: measure.recovery(best_sm.agreement[c], recovery(c)[1]) for c in a4}
display(Markdown(
    f"Smoothing moves PTQ's agreement by {results.span(sm_only.images.astype(int), '{:+d}', ' to ')} held-out images "
    f"({results.span(sm_only.won, '{:+.0%}', ' to ')} of the unsmoothed PTQ's loss). " +
    ("No interval lies above zero: at 4-bit per-tensor activations, smoothing does not help beyond what the choice of "
     "tracks decides" + ("" if hurts.empty else
                        f", and it makes agreement worse in {', '.join(hurts.config + ' (' + hurts.smoothing + ')')}: "
                        f"{'that interval lies' if len(hurts) == 1 else 'those intervals lie'} below zero") +
     ". So the PTQ of the table — and the LSQ runs' start — stays unsmoothed. " if helps.empty else
     f"It helps beyond the track noise in {', '.join(helps.config + ' (' + helps.smoothing + ')')}; the LSQ runs still start from "
     "the unsmoothed PTQ, and the targets below also name the recovery against the best smoothed PTQ. ") +
    "Measured against the better of the two smoothed PTQ models instead, the fine-tunes above win back " +
    ", ".join(f"{vs_best[c]:+z.0%} ({c})" for c in a4) + " of its loss."))
"""),
md("""
### One run is one draw, and five minutes of training

The recoveries above come from one fine-tune each, and a few dozen images decide them: W4A4's PTQ
model disagrees with FP32 on about one held-out image in fifty, so each image is a percent or two
of its loss. The fine-tune's seed (batch order, augmentation, mixup) changes which of those images flip.
So each A4 configuration is fine-tuned again with other seeds, same recipe and same number of steps.
Then the same recipe is given the 5-minute budget of the targets: as many steps as 4.5 minutes of
training hold (`budget_minutes`) on the machine that builds the book. Its cosine schedule runs over
the minutes instead of a step count: each step's learning rate follows the share of the budget
already spent (or of the step cap, `budget_steps`, if that is further), and the run ends when the
time is spent (`QATSettings.minutes`). A fixed number of steps could not promise five minutes: this
machine's pace moves by half from one day to another. The price is that a boxed run is a draw of the
day's pace as well as of the seed: the schedule follows the clock, so every step's learning rate moves
with the pace, not only the step where the run stops. Five earlier builds of this chapter on machines of one
kind, whose fixed-step runs came out bit for bit the same, ended W4A4's box at 250 to 276 steps, and the share of
PTQ's loss it won back ranged from −23% to −9% (README, "Longer QAT runs"); two of them, one step apart, differed
by 12 points. Read a boxed result beside the seeds' spread, not as an estimate of its own.
Each boxed run is measured against FP32 along the way with `lsq_curve.run`. The
measurements change nothing in the training, and their time is not counted. Runs longer than the
budget are one command, `python -m qlib.lsq_curve` (README, "Longer QAT runs").
"""),
code("""
def boxed(s):  # the settings s, time-boxed to the 5-minute budget
    return replace(s, minutes=budget_minutes).with_steps(budget_steps, len(splits.train))


draws, budget_curves, budget_models, spread_rows = {}, {}, {}, []
for c in a4:
    w, a = lsq.parse_config(c)
    p0, q0, r0 = recovery(c)
    s_c = replace(lsq_recipe, w_bits=w, a_bits=a)
    spread_rows.append({"config": c, "seed": cfg.seed, "agreement": q0, "recovered": r0})
    draws[c] = [(train_min[c], r0)]  # the table's run (its time includes 3 validation passes)
    for k in range(1, spread_seeds + 1):
        t = time.time()
        m_k, _ = lsq.lsq_train(fp, splits, replace(s_c, seed=cfg.seed + k), init_model=gq[w], calib_x=calib_x,
                               progress=False, validate=False)
        minutes = (time.time() - t) / 60
        q = ref.row(m_k)["agreement"]
        spread_rows.append({"config": c, "seed": cfg.seed + k, "agreement": q, "recovered": measure.recovery(p0, q)})
        draws[c].append((minutes, spread_rows[-1]["recovered"]))
    budget_models[c], budget_curves[c] = lsq_curve.run(fp, splits, boxed(s_c), ref, budget_every, init_model=gq[w], calib_x=calib_x,
                                                       progress=False)
spread = pd.DataFrame(spread_rows)
display(spread.pivot(index="seed", columns="config", values="recovered").style.format("{:+z.0%}").set_caption(
    f"Share of PTQ's agreement loss won back by the chapter's {lsq_steps}-step fine-tune, per seed"))
budget_min = {c: rows[-1]["train_seconds"] / 60 for c, rows in budget_curves.items()}
budget_rec = {c: [r["recovered"] for r in rows] for c, rows in budget_curves.items()}
budget_n = {c: rows[-1]["step"] for c, rows in budget_curves.items()}  # the steps each time box held
if budget_curves:
    fig = plots_qat.recovery_curves(budget_curves, draws, target=0.5, budget_min=5.0,
                                    title=f"LSQ from GPTQ: {budget_minutes:g} minutes with the chapter's recipe (open circles: "
                                          f"{lsq_steps}-step runs, {1 + spread_seeds} seeds)")
    lines = []
    for c in a4:
        r = spread[spread.config == c]["recovered"]
        lines.append(f"* **{c}**: over {len(r)} seeds the {lsq_steps}-step fine-tune wins back **{results.span(r, '{:+.0%}', ' to ')}"
                     f"** of PTQ's loss (mean {r.mean():+z.0%}). Time-boxed, it took {budget_n[c]} steps "
                     f"in {budget_min[c]:.1f} min of training and ends at **{budget_rec[c][-1]:+z.0%}**; its best measurement "
                     f"along the way is {max(budget_rec[c][1:]):+z.0%}, and its KL to FP32 goes from "
                     f"{budget_curves[c][0]['kl']:.4f} to {budget_curves[c][-1]['kl']:.4f}.")
    reached = [c for c in a4 if max(budget_rec[c][1:] + list(spread[spread.config == c]["recovered"])) >= 0.5]
    lines.append("" if not reached else f"\\nAt least one run of {', '.join(reached)} reaches half of the loss.")
    display(Markdown("\\n".join(lines)))
"""),
md("""
### The weights' learning rate over five minutes

The chapter's recipe was tuned on its 45-step run, where a weights' learning rate of `lsq_lr`
(1e-5) did best. Given five minutes, a larger rate might have room to act: an earlier sweep on this
baseline, outside the book (W4A4, 240 steps, distillation only; one run per rate, three at 3e-4),
won back +6% of PTQ's loss at 1e-5, +19% at 1e-4, +29% to +33% at 3e-4, and lost almost all of it
at 1e-3 (−97%). Those differences are a few to a dozen of the held-out images PTQ loses, and one run
is one draw (above). So the 5-minute run is repeated here for the two targeted configurations at
`budget_lr` (3e-4), with two seeds each, everything else as above, to see whether the gain holds.
"""),
code("""
lr_runs, lr_codes = {}, {}  # configuration: the time-boxed runs at budget_lr, one per seed; and the codes they changed
for c in [c for c in budget_lr_configs if c in budget_curves]:
    w, a = lsq.parse_config(c)
    for k in range(budget_lr_seeds):
        s_lr = replace(lsq_recipe, w_bits=w, a_bits=a, lr=budget_lr, seed=cfg.seed + k)
        m_lr, rows = lsq_curve.run(fp, splits, boxed(s_lr), ref, budget_every, init_model=gq[w], calib_x=calib_x, progress=False)
        lr_runs.setdefault(c, []).append(rows)
        lr_codes.setdefault(c, []).append(lsq.code_changes(ptq_models[c], m_lr)["share"])
if lr_runs:
    fig = plots_qat.recovery_curves(
        {**{f"{c}, weights at {lsq_lr:g} (above)": budget_curves[c] for c in lr_runs},
         **{f"{c}, weights at {budget_lr:g}, seed {cfg.seed + k}": r for c, runs in lr_runs.items() for k, r in enumerate(runs)}},
        target=0.5, budget_min=5.0, title=f"LSQ from GPTQ, {budget_minutes:g} minutes: the weights' learning rate")
    lines = []
    for c, runs in lr_runs.items():
        ends = [r[-1]["recovered"] for r in runs]
        won = np.mean([(r[-1]["agreement"] - r[0]["agreement"]) * ref.fp["n_fidelity"] for r in runs])
        best = max(x["recovered"] for r in runs for x in r[1:])
        lines.append(f"* **{c}**: at {lsq_lr:g} the 5-minute run ends at {budget_rec[c][-1]:+z.0%}; at {budget_lr:g} at "
                     f"**{', '.join(f'{e:+z.0%}' for e in ends)}** ({len(ends)} seed{'s' if len(ends) > 1 else ''}, "
                     f"{', '.join(str(r[-1]['step']) for r in runs)} steps; {won:+z.1f} held-out images "
                     f"won back on average of the {loss_images(c):.0f} PTQ loses), its best measurement along the way {best:+z.0%}.")
    top = max([x["recovered"] for runs in lr_runs.values() for r in runs for x in r[1:] if np.isfinite(x["recovered"])], default=None)
    if top is not None:  # a recovery is undefined (NaN) when PTQ loses nothing
        lines.append("\\n" + ("No run reaches half of the loss." if top < 0.5 else f"At least one measurement reaches half of the loss ({top:+z.0%})."))
    if "W4A4" in lr_runs and budget_lr == 3e-4:  # the earlier sweep (text above) won back +29% to +33% at 3e-4
        ends4 = [r[-1]["recovered"] for r in lr_runs["W4A4"]]
        lines.append(" W4A4 at 3e-4 ends " + ("below" if max(ends4) < 0.29 else "within or above" if min(ends4) >= 0.29 else "partly below")
                     + " the earlier sweep's +29% to +33%" + (": that sweep's gain does not hold in this build." if max(ends4) < 0.29 else "."))
    display(Markdown("\\n".join(lines)))
"""),
md(r"""
#### How far the weights move

LSQ starts every shadow weight on its GPTQ grid point, $w = s\,q$, the middle of the interval that
rounds to $q$: a weight changes its code only after it has moved half a step, $s/2$ (or its step has
moved enough to carry $w/s$ across a boundary). With Adam a weight moves by at most about its
learning rate per update, so how many updates that takes depends on the size of the steps, measured
below. `lsq.code_changes` counts the weight codes each fine-tune changed, from either cause.
"""),
code("""
codes = pd.DataFrame(  # one row per fine-tune: the share of its weight codes not GPTQ's, and the share of PTQ's loss it won back
    [{"run": f"{lsq_steps} steps, weights at {lsq_lr:g}", "config": c, "share": lsq.code_changes(ptq_models[c], lsq_models[c])["share"],
      "recovered": recovery(c)[2]} for c in lsq_configs] +
    [{"run": f"{budget_minutes:g} min, weights at {lsq_lr:g}", "config": c, "share": lsq.code_changes(ptq_models[c], m)["share"],
      "recovered": budget_rec[c][-1]} for c, m in budget_models.items()] +
    [{"run": f"{budget_minutes:g} min, weights at {budget_lr:g}, seed {cfg.seed + k}", "config": c, "share": v,
      "recovered": lr_runs[c][k][-1]["recovered"]} for c, vs in lr_codes.items() for k, v in enumerate(vs)])
display(codes.pivot(index="run", columns="config", values="share").style.format("{:.3%}", na_rep="").set_caption(
    "Share of the weight codes (all 21 layers) that differ from GPTQ's at the end of the fine-tune"))
short = codes[codes.run.str.startswith(f"{lsq_steps} steps")].set_index("config").share  # the chapter's runs
def median_step(m):  # the median weight step of the low-bit layers (those not kept at 8 bits)
    return float(torch.cat([l.w_step.detach().flatten() for n, l in m.named_modules()
                            if hasattr(l, "w_step") and n not in lsq_keep_8bit]).median())
step_med = {c: median_step(ptq_models[c]) for c in lsq_configs}
n_max = max(budget_n.values(), default=lsq_steps)   # the most updates any run at lsq_lr made
display(Markdown(
    "The median weight step of the layers not kept at 8 bits is " + ", ".join(f"{st:.2g} ({c})" for c, st in step_med.items()) +
    f". At {lsq_lr:g} per update, the longest of these runs ({n_max} updates) can carry a weight "
    + ", ".join(f"{n_max * lsq_lr / st:.2f} ({c})" for c, st in step_med.items()) + " of a median step, and only if every update "
    "pushes it the same way; a code changes after half a step."))
stay = list(short[short < 0.001].index)  # configurations whose chapter run changed fewer than 1 in 1,000 codes
moved = codes[codes.share >= moved_share]  # runs that changed at least moved_share of their codes
one_in = f"1 in {1 / moved_share:,.0f}"
still = [c for c in codes.config.unique() if c not in set(moved.config)]
lines = [f"At the chapter's rate the {lsq_steps}-step fine-tune changes " + ", ".join(f"{v:.3%} ({c})" for c, v in short.items())
         + " of the weight codes" + (f": the weights of {', '.join(stay)} stay on GPTQ's grid, and what the fine-tune changes there "
                                     "is its steps and biases." if stay else ".")]
if len(moved):
    lines.append(
        f"Where a run does move the codes, at least {one_in} of them, it ends at " + "; ".join(
            f"{r.recovered:+z.0%} ({r.config}, {r.run}: {r.share:.2%} of the codes)" for r in moved.itertuples())
        + " of PTQ's loss won back: " + ("weights that leave GPTQ's grid do not win the loss back either."
                                         if moved.recovered.max() < 0.5 else "at least one of them reaches half."))
if still:
    lines.append(f"No run of {', '.join(still)} changes as many as {one_in} (at most " + ", ".join(
                     f"{v:.2%} for {c}" for c, v in codes[codes.config.isin(still)].groupby("config").share.max().items())
                 + (f", even at {budget_lr:g}" if set(still) & set(lr_codes) else "") +
                 "): those weights barely leave GPTQ's grid at any rate tried here, so these runs do not test what moving them could do.")
display(Markdown(" ".join(lines)))
"""),
md("""
### Five minutes from the smoothed start

Where smoothing won back part of PTQ's loss beyond the track noise (above), the fine-tune can
start from the smoothed PTQ instead. `lsq.smoothed_start` gives the smoothed float network (the
same function as FP32, and the teacher here) and its GPTQ solution; the 5-minute recipe then runs
from there exactly as above. Recoveries are shares of the *unsmoothed* PTQ's loss, as everywhere in
this chapter, so this run starts above zero, at what smoothing alone won.
"""),
code("""
sm_runs = {}  # configuration: {"mode": smoothing, "rows": the time-boxed run from its smoothed PTQ, "own": recovery of that PTQ's loss}
for c in sorted(set(helps.config)):
    w, a = lsq.parse_config(c)
    mode = best_sm.loc[c, "smoothing"]
    s_c = replace(lsq_recipe, w_bits=w, a_bits=a)
    sm_fp, sm_init, _ = lsq.smoothed_start(fp, s_c, calib_x, mode=mode)
    _, rows = lsq_curve.run(sm_fp, splits, boxed(s_c), ref, budget_every, init_model=sm_init, calib_x=calib_x, progress=False)
    p0 = recovery(c)[0]   # the unsmoothed PTQ's agreement
    sm_runs[c] = {"mode": mode, "rows": [{**r, "recovered": measure.recovery(p0, r["agreement"])} for r in rows],
                  "own": measure.recovery(rows[0]["agreement"], rows[-1]["agreement"])}  # of the smoothed PTQ's own loss
if sm_runs:
    fig = plots_qat.recovery_curves(
        {**{f"{c}, from the unsmoothed PTQ (above)": budget_curves[c] for c in sm_runs if c in budget_curves},
         **{f"{c}, from the smoothed PTQ ({r['mode']})": r["rows"] for c, r in sm_runs.items()}},
        target=0.5, budget_min=5.0, title=f"LSQ, {budget_minutes:g} minutes from the unsmoothed and the smoothed PTQ (recovery: of the unsmoothed PTQ's loss)")
    lines = []
    for c, run in sm_runs.items():
        mode, rows = run["mode"], run["rows"]
        start, end = rows[0]["recovered"], rows[-1]["recovered"]
        moved = (rows[-1]["agreement"] - rows[0]["agreement"]) * ref.fp["n_fidelity"]
        lines.append(f"* **{c}** ({mode}): smoothing alone starts the run at {start:+z.0%} of the unsmoothed PTQ's loss; after "
                     f"{rows[-1]['step']} steps in {rows[-1]['train_seconds'] / 60:.1f} min the fine-tune ends at **{end:+z.0%}** "
                     f"(best measurement along the way {max(r['recovered'] for r in rows[1:]):+z.0%}): {moved:+z.0f} held-out images "
                     f"from its smoothed start, {run['own']:+z.0%} of the smoothed "
                     f"PTQ's own loss" + (f". From the unsmoothed PTQ the same recipe ended at {budget_rec[c][-1]:+z.0%}." if c in budget_rec else "."))
    gave_back = [c for c, r in sm_runs.items() if r["rows"][-1]["agreement"] < r["rows"][0]["agreement"]]
    lines.append("\\n" + (f"In {', '.join(gave_back)} the fine-tune ends below its smoothed start: it gives back what smoothing won instead of adding to it."
                          if gave_back else "The fine-tune keeps what smoothing won and adds to it."))
    display(Markdown("\\n".join(lines)))
else:
    display(Markdown("Smoothing helped no configuration beyond the track noise: there is no smoothed start to fine-tune from."))
"""),
md("""
### W2A8: both sides of the comparison are draws

The W2A8 target compares two models that each depend on a draw: GPTQ on its calibration images
(chapter 8 measures how far GPTQ W2's agreement moves between calibration samples), and LSQ on
the model it starts from and on its seed. One pair of runs cannot say which is better when they
differ by a few images. So the comparison is repeated on other calibration samples: for each, GPTQ
W2 on that sample, its int8-engine PTQ model calibrated on it, and the chapter's LSQ fine-tune
started from it (its seed the sample's), converted to the int8 engine — the table's protocol,
only the draw changes.
"""),
code("""
w2a8_rows, w2a8_min = [], []  # and the minutes of training of each LSQ run
if "W2A8" in lsq_configs:
    p0, q0, _ = recovery("W2A8", "int8")
    w2a8_rows.append({"calibration seed": cfg.seed, "GPTQ": p0, "LSQ": q0})
    for k in range(1, w2a8_seeds + 1):
        x_k, _ = calib.sample(splits, cfg.calib_size, cfg.seed + k)
        g_k = lsq.gptq_init(fp, 2, x_k, tuple(lsq_keep_8bit))
        t = time.time()
        m_k, _ = lsq.lsq_train(fp, splits, replace(lsq_recipe, w_bits=2, a_bits=8, seed=cfg.seed + k), init_model=g_k,
                               calib_x=x_k, progress=False, validate=False)
        w2a8_min.append((time.time() - t) / 60)
        p8, q8 = int8_pair(g_k, m_k, x_k)
        w2a8_rows.append({"calibration seed": cfg.seed + k, "GPTQ": p8["agreement"], "LSQ": q8["agreement"]})
w2a8_draws = pd.DataFrame(w2a8_rows, columns=["calibration seed", "GPTQ", "LSQ"])
n_fid_all = ref.fp["n_fidelity"]
w2a8_draws["LSQ − GPTQ (images)"] = ((w2a8_draws["LSQ"] - w2a8_draws["GPTQ"]) * n_fid_all).round().astype(int)
if len(w2a8_draws):
    display(w2a8_draws.style.hide(axis="index").format({"GPTQ": "{:.2%}", "LSQ": "{:.2%}"}).set_caption(
        f"W2A8 on the int8 engine: agreement with FP32 on {n_fid_all:,} held-out images, per calibration sample"))
    w2a8_diff = w2a8_draws["LSQ − GPTQ (images)"]
    w2a8_mean, w2a8_range = w2a8_diff.mean(), results.span(w2a8_diff, '{:+d}', ' to ')   # the target line reads them too
    g_moves = round((w2a8_draws["GPTQ"].max() - w2a8_draws["GPTQ"].min()) * n_fid_all)
    display(Markdown(
        f"Over {len(w2a8_diff)} calibration samples LSQ − GPTQ is **{w2a8_mean:+z.1f} images** on average ({w2a8_range}); "
        f"LSQ is at least as good as GPTQ on {int((w2a8_diff >= 0).sum())} of them. GPTQ alone moves by {g_moves} images between "
        f"samples, LSQ by {round((w2a8_draws['LSQ'].max() - w2a8_draws['LSQ'].min()) * n_fid_all)}."))
"""),
md("""
#### When the KL rises: the learned steps

Over five minutes the KL to FP32 can rise *above* PTQ's on the way: in some builds the time-boxed runs'
curves (right panels above) did, most at the larger weights' learning rate. Besides the weights, LSQ
learns every step — each layer's input step and its weights' per-channel steps — at `lsq_step_lr`
per update on the step's logarithm, and a few hundred updates at that rate can carry the steps away
from the values the calibration (MSE for the inputs, GPTQ for the weights) chose. Two measurements
test that: how far the steps moved over the 5-minute run, and W4A4's 5-minute run again with the
steps' rate ten times lower (nothing else changed).
"""),
code("""
def step_change(m, c):  # each layer's learned input step, and each weight channel's step, relative to the start
    start = lsq.act_steps(ptq_models[c])
    w0 = {n: l.w_step.detach() for n, l in ptq_models[c].named_modules() if hasattr(l, "w_step")}
    w = torch.cat([(l.w_step.detach() / w0[n] - 1).flatten() for n, l in m.named_modules() if hasattr(l, "w_step")])
    return {k: v[0] / start[k][0] - 1 for k, v in lsq.act_steps(m).items()}, w.abs().numpy()
moved = {c: step_change(m, c) for c, m in budget_models.items()}
control = {}
if "W4A4" in budget_curves:
    w, a = lsq.parse_config("W4A4")
    s_slow = boxed(replace(lsq_recipe, w_bits=w, a_bits=a, step_lr=lsq_step_lr / 10))
    slow = f"W4A4, steps at {s_slow.step_lr:g}"
    m_slow, control[slow] = lsq_curve.run(fp, splits, s_slow, ref, budget_every, init_model=gq[w], calib_x=calib_x,
                                          progress=False)
    moved[slow] = step_change(m_slow, "W4A4")
    fig = plots_qat.recovery_curves({f"W4A4, steps at {lsq_step_lr:g} (above)": budget_curves["W4A4"], **control}, target=0.5,
                                    budget_min=5.0, title=f"W4A4, {budget_minutes:g} minutes: the steps' learning rate")
runs = {**budget_curves, **control}
steps_df = pd.DataFrame({k: {"median |change|": float(np.median(np.abs(list(v.values())))),
                             "largest |change|": float(max(np.abs(list(v.values())))),
                             "layer": max(v, key=lambda n: abs(v[n])),
                             "weight steps: median": float(np.median(wv)), "weight steps: largest": float(wv.max()),
                             "KL: PTQ → end": f"{runs[k][0]['kl']:.4f} → {runs[k][-1]['kl']:.4f}",
                             "recovered at the end": runs[k][-1]["recovered"]} for k, (v, wv) in moved.items()}).T
display(steps_df.style.format({"median |change|": "{:.0%}", "largest |change|": "{:.0%}", "weight steps: median": "{:.1%}",
                               "weight steps: largest": "{:.0%}", "recovered at the end": "{:+z.0%}"}).set_caption(
    f"Learned steps after {budget_minutes:g} minutes of training, relative to their calibrated start: |change| of each layer's input step, and of each weight channel's step"))
if control:
    fast, kl0 = budget_curves["W4A4"], budget_curves["W4A4"][0]["kl"]
    k_fast, k_slow = max(r["kl"] for r in fast), max(r["kl"] for r in control[slow])
    display(Markdown(
        f"At the chapter's step rate ({lsq_step_lr:g}) W4A4's input steps moved by a median {steps_df.loc['W4A4', 'median |change|']:.0%} "
        f"(up to {steps_df.loc['W4A4', 'largest |change|']:.0%}), its weight steps by {steps_df.loc['W4A4', 'weight steps: median']:.1%} "
        f"(up to {steps_df.loc['W4A4', 'weight steps: largest']:.0%}), and its KL peaked at {k_fast / kl0:.2f}x PTQ's; at {s_slow.step_lr:g} the input steps "
        f"moved {steps_df.loc[slow, 'median |change|']:.0%} (up to {steps_df.loc[slow, 'largest |change|']:.0%}), the weight steps "
        f"{steps_df.loc[slow, 'weight steps: median']:.1%} (up to {steps_df.loc[slow, 'weight steps: largest']:.0%}), and the KL peaked at "
        f"{k_slow / kl0:.2f}x. " + (
            "At the chapter's rate the KL stayed within 10% of PTQ's in this run: there is no rise to explain. " if k_fast <= 1.1 * kl0 else
            "So the rise comes with the learned steps: at the chapter's rate they drift from their calibrated values and the "
            "KL rises with them; held near those values, it does not rise above PTQ's. " if k_slow <= 1.1 * kl0 else
            "The slower step rate does not remove the rise, so it is not the steps alone. ") +
        f"The slower run ends at {control[slow][-1]['recovered']:+z.0%} of PTQ's agreement loss recovered, the chapter's at "
        f"{fast[-1]['recovered']:+z.0%}" + (
            f" — {'more' if control[slow][-1]['recovered'] > fast[-1]['recovered'] else 'no more'} with the steps held, "
            f"a difference of {n_images(abs(control[slow][-1]['recovered'] - fast[-1]['recovered']) * loss_images('W4A4'))}, "
            "and neither reaches half of the loss." if max(control[slow][-1]["recovered"], fast[-1]["recovered"]) < 0.5 else ".")))
"""),
md("""
#### Which parameters lose the agreement

A fine-tune that loses held-out agreement while its training loss falls looks like over-fitting:
11 million weights fitted to FP32's outputs on the training images. Two controls of the 5-minute
run test that, each learning one group of parameters and freezing the other
(`QATSettings.learn`):

* **steps only**: every weight and bias stays on its GPTQ grid point. There LSQ gives a weight step
  no gradient ($\\lfloor w/s \\rceil - w/s = 0$), so what learns is the 21 layers' input steps —
  21 numbers, which cannot memorise a training set;
* **weights only**: the steps stay at their calibrated values (MSE for the inputs, GPTQ's for the
  weights) and only the weights and biases learn. At the chapter's rate few weights move far enough
  to change their code ("How far the weights move", above), so this control tests the biases and
  those few codes more than the weights; the share of codes it changed is printed below.

W8A4 gets the first control too: with 8-bit weights, its input steps are nearly all that
quantization has changed. W4A4's steps-only run is repeated **on the training images as they are**
(no mixup, no augmentation: `mixup=0`, `augment=False`), in case the blends' or the augmented
images' activations, not the held-out images', are what the steps adapt to. Last, a null for the
steps: the W4A4 PTQ model's 21 input steps are moved **at random**, each by a log-normal factor
whose median change is the steps-only run's, and agreement is measured again — what a move of that
size does when nothing learned its direction.
"""),
code("""
learn_runs, in_moved, wo_codes = {}, {}, {}  # wo_codes: the share of weight codes each weights-only run changed
plain = dict(mixup=0.0, augment=False)  # the training images as they are
learn_label = {("steps", False): "input steps only", ("steps", True): "input steps only, plain images",
               ("weights", False): "weights only"}
for c, learn, on_plain in [("W4A4", "steps", False), ("W4A4", "steps", True), ("W4A4", "weights", False),
                           ("W8A4", "steps", False)]:
    if c in budget_curves:
        w, a = lsq.parse_config(c)
        s_l = boxed(replace(lsq_recipe, w_bits=w, a_bits=a, learn=learn, **(plain if on_plain else {})))
        m_l, learn_runs[(c, learn, on_plain)] = lsq_curve.run(fp, splits, s_l, ref, budget_every, init_model=gq[w],
                                                              calib_x=calib_x, progress=False)
        if learn == "steps":
            in_moved[(c, on_plain)] = np.abs(list(step_change(m_l, c)[0].values()))
        else:
            wo_codes[c] = lsq.code_changes(ptq_models[c], m_l)["share"]
null_rec = []
if ("W4A4", False) in in_moved:  # random moves of the W4A4 PTQ model's input steps, as large as the fine-tune's
    sigma = np.median(np.abs(np.log1p(in_moved[("W4A4", False)]))) / 0.6745  # median |N(0, sigma)| = 0.6745 sigma
    rng = np.random.default_rng(cfg.seed)
    for k in range(2 if cfg.smoke else 12):
        m_r = copy.deepcopy(ptq_models["W4A4"])
        with torch.no_grad():
            for mod in m_r.modules():
                if getattr(mod, "a_log_step", None) is not None:
                    mod.a_log_step += float(rng.normal(0.0, sigma))
        null_rec.append(measure.recovery(recovery("W4A4")[0], ref.row(m_r)["agreement"]))
    null_rec = [r for r in null_rec if np.isfinite(r)]  # none when PTQ loses nothing (a recovery is then undefined)
if learn_runs:
    both = {c: budget_curves[c] for c in dict.fromkeys(c for c, _, _ in learn_runs)}
    fig = plots_qat.recovery_curves({**{f"{c}, everything (above)": r for c, r in both.items()},
                                     **{f"{c}, {learn_label[(l, p)]}": r for (c, l, p), r in learn_runs.items()}},
                                    target=0.5, budget_min=5.0,
                                    band=(f"W4A4 input steps moved at random ({len(null_rec)} draws)", min(null_rec), max(null_rec))
                                    if null_rec else None,
                                    title=f"{budget_minutes:g} minutes, learning everything, only the input steps, or only the weights")
    end = {k: r[-1]["recovered"] for k, r in learn_runs.items()} | {(c, "all", False): r[-1]["recovered"] for c, r in both.items()}
    steps_only = [c for (c, l, p) in learn_runs if l == "steps" and not p]
    lines = ["Share of PTQ's agreement loss won back at the end of the run:"] + [
        f"* {c}: learning everything {end[(c, 'all', False)]:+z.0%}, " + ", ".join(
            f"{learn_label[(l, p)]} {end[(c, l, p)]:+z.0%}" for (c2, l, p) in learn_runs if c2 == c) for c in both]
    if all(v < 0.5 for v in end.values()):
        lines.append("\\nNo run reaches half of the loss.")
    for c, v in wo_codes.items():
        lines.append(f"\\nThe weights-only run of {c} changes {v:.3%} of its weight codes" + (
            ": a weight that keeps its code leaves the network's output as it was, so what this run changes is mostly "
            "the biases, and it says little about what the weights could do." if v < moved_share else
            ", so it does move the weights, not only the biases."))
    steps_lose = all(end[(c, "steps", False)] < 0 for c in steps_only)
    if steps_lose:
        lines.append(
            f"\\nLearning nothing but the input steps loses held-out agreement too ({', '.join(steps_only)}). "
            f"The {len(in_moved[(steps_only[0], False)])} numbers it learns cannot over-fit the training images, so "
            "over-fitting does not explain the loss. The fine-tune's objective, FP32's outputs on training images, moves the "
            "input steps from where the MSE calibration put them (" + "; ".join(
                f"{c}: median {np.median(in_moved[(c, False)]):.1%}, up to {in_moved[(c, False)].max():.1%}" for c in steps_only) +
            "), and on the held-out images that turns more answers than it keeps.")
    else:
        lines.append("\\nLearning only the input steps does not lose agreement everywhere, so the controls do not single out the steps.")
    if ("W4A4", "steps", True) in end and loss_images("W4A4") > 0:  # recoveries are undefined when PTQ loses nothing
        p_end, p_mix = end[("W4A4", "steps", True)], end[("W4A4", "steps", False)]
        seeds4 = spread[spread.config == "W4A4"]["recovered"]  # one recipe's recovery between seeds (45-step runs)
        gap, loss4 = abs(p_end - p_mix), loss_images("W4A4")
        lines.append(
            f"\\nOn the training images as they are, without blends or augmentation, W4A4's input steps end at {p_end:+z.0%} "
            f"(with them {p_mix:+z.0%}): " + (
                "they lose held-out agreement either way, so the blends and the augmentation are not what makes them lose it. "
                if (p_end < 0) == (p_mix < 0) else "the two differ in sign, so the blends or the augmentation matter. ")
            + f"The two differ by {gap:.0%} of PTQ's loss ({n_images(gap * loss4)}), "
            + (f"no more than one recipe's recovery moves between seeds ({results.span(seeds4, '{:+.0%}', ' to ')} for "
               f"W4A4's {lsq_steps}-step runs): not a difference this test can tell from the draw."
               if round(gap * loss4) <= round((seeds4.max() - seeds4.min()) * loss4) else  # compared in whole images
               f"more than one recipe's recovery moves between seeds ({results.span(seeds4, '{:+.0%}', ' to ')} for "
               f"W4A4's {lsq_steps}-step runs): the {'blends make' if p_mix < p_end else 'plain images make'} the steps "
               "lose more."))
    if null_rec:
        nr, fine = np.array(null_rec), end[("W4A4", "steps", False)]
        below = int((nr <= fine).sum())
        lines.append(
            f"\\nMoved at random by as much ({len(nr)} draws), the same 21 steps give a recovery of {nr.mean():+z.0%} on average "
            f"(standard deviation {nr.std(ddof=1):.0%}, {results.span(nr, '{:+.0%}', ' to ')}); the fine-tune's {fine:+z.0%} is "
            + (f"below all of them (were it one more random draw, a chance of 1 in {len(nr) + 1}): learning found no better "
               "direction for them than chance, if anything a worse one. "
               if below == 0 else f"at or above {len(nr) - below} of the {len(nr)} draws: within what a random move of that size does. ")
            + f"A random move of that size turns about {n_images(nr.std(ddof=1) * loss_images('W4A4'))} "
            "either way (one standard deviation): the A4 models' held-out disagreements sit on images that flip with small "
            "changes of the steps" + (", and winning back half of PTQ's loss lies more than two standard deviations above "
                                      "the random moves' mean." if 0.5 > nr.mean() + 2 * nr.std(ddof=1) else "."))
    display(Markdown("\\n".join(lines)))
"""),
md("""
#### Another objective: block-wise reconstruction

The fine-tune fits, per training image, FP32's ten output probabilities, on images FP32 has
fitted. The post-training methods that reach W4A4 on ImageNet classifiers — BRECQ (Li et al.,
ICLR 2021) and its successors — fit each **block's output** instead: thousands of numbers per
image, which carry the quantization error on every image, whether or not its answer changes.
`lsq.reconstruct` does that with the fine-tune's own parameters, starting from each A4 PTQ
model: unit by unit — the stem, each of the eight residual blocks, the head — Adam fits the
unit's learned steps (inputs and weights, as logarithms, at $10^{-3}$) and its biases
($10^{-4}$) so that the unit, reading the quantized model's own output of the units before it,
reproduces the FP32 unit's output (mean squared error) on `recon_images` training images,
`recon_iters` updates of 64 images per unit. The weights stay on GPTQ's grid: BRECQ learns
their rounding (AdaRound), which is another method than LSQ's.
"""),
code("""
recon_x, _ = calib.sample(splits, recon_images, cfg.seed)
recon_hist, recon_rec, recon_min, won_images = {}, {}, {}, {}
for c in a4:
    t = time.time()
    m_r, recon_hist[c] = lsq.reconstruct(ptq_models[c], fp, recon_x, iters=recon_iters, seed=cfg.seed, progress=False)
    recon_min[c] = (time.time() - t) / 60
    agree_r = ref.row(m_r)["agreement"]
    recon_rec[c] = measure.recovery(recovery(c)[0], agree_r)
    won_images[c] = round((agree_r - recovery(c)[0]) * ref.fp["n_fidelity"])  # held-out images won back (net)
removed = {c: np.array([1 - u["mse_after"] / u["mse_before"] for u in h if u["mse_before"] > 0]) for c, h in recon_hist.items()}
if recon_hist:
    fig = plots_qat.reconstruction(recon_hist, {c: {f"fine-tune, {lsq_steps} steps": recovery(c)[2],
                                                    f"fine-tune, {budget_minutes:g} min": budget_rec[c][-1],
                                                    "block-wise reconstruction": recon_rec[c]} for c in recon_hist},
                                   title=f"Block-wise reconstruction of the A4 PTQ models ({len(recon_x):,} training images, "
                                         f"{recon_iters} updates per unit)")
    allr = np.concatenate(list(removed.values()))
    display(Markdown(
        f"On its own images the reconstruction changes a unit's output error by {results.span(-allr, '{:+.1%}', ' to ')} "
        f"(median {-np.median(allr):+z.1%}), in {results.span(recon_min.values(), '{:.1f}', '–')} min per configuration. On the "
        "held-out images it wins back " + ", ".join(f"**{recon_rec[c]:+z.0%}** of {c}'s loss ({won_images[c]:+d} images)" for c in recon_hist) +
        " — against " + ", ".join(f"{recovery(c)[2]:+z.0%}" for c in recon_hist) + f" for the {lsq_steps}-step fine-tune. " + (
            "No configuration comes near half. " if max(recon_rec.values()) < 0.25 else
            "It does not reach half. " if max(recon_rec.values()) < 0.5 else "") + (
            "Fitted to the blocks' outputs, where the training images do carry the error, the steps and biases remove a few "
            "percent of it at most: the objective is not what kept the fine-tune from the target. Most of the error is "
            "out of these parameters' reach, by either objective." if np.median(allr) < 0.1 and max(recon_rec.values()) < 0.5
            else "")))
"""),
md("""
### Where the A4 loss sits

Two measurements of the PTQ models explain the table. First, the same W4A4 PTQ with **every**
layer at 4 bits — the first convolution then reads the image in 16 levels per channel. Second,
where the disagreements are: FP32's own confidence (its top-1 probability) on the held-out images
where each A4 model picks another class.
"""),
code("""
if "W4A4" in lsq_configs:
    g_all4, all4_s = gptq_solution(4, ())
    all4 = lsq.lsq_model(fp, qat.QATSettings(w_bits=4, a_bits=4), init_model=g_all4, calib_x=calib_x)
    r_all4 = {**ref.row(all4), "seconds": all4_s, "size_mb": measure.saved_size_mb(g_all4)}
    p4 = lowdf[(lowdf.config == "W4A4") & (lowdf.kind == "PTQ")].iloc[0]
    n_w = {n: m.weight.numel() for n, m in fp.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    kept = sum(n_w[k] for k in lsq_keep_8bit) / sum(n_w.values())
    share = measure.recovery(r_all4["agreement"], p4["agreement"])
    first = lsq_keep_8bit[:1]   # the first layer alone at 8 bits (its weights and its input, the image)
    share_first = share if list(first) == list(lsq_keep_8bit) else measure.recovery(r_all4["agreement"], ref.row(lsq.lsq_model(
        fp, qat.QATSettings(w_bits=4, a_bits=4, keep_8bit=tuple(first)), init_model=gptq_solution(4, first)[0],
        calib_x=calib_x))["agreement"])
    display(Markdown(
        f"W4A4 PTQ with every layer at 4 bits: **{r_all4['agreement']:.2%}** agreement with FP32, KL {r_all4['kl']:.4f}, "
        f"{r_all4['accuracy']:.2%} test accuracy. With {' and '.join(f'`{k}`' for k in lsq_keep_8bit)} at 8 bits: "
        f"**{p4['agreement']:.2%}**, KL {p4['kl']:.4f}. Those layers hold {kept:.2%} of the weights and remove **{share:.0%}** of "
        f"the agreement loss" + ("" if list(first) == list(lsq_keep_8bit) else f"; `{first[0]}` alone at 8 bits removes {share_first:.0%}") +
        (": the 16-level image is an input the network never saw in training, not a rounding error in its "
         "weights, and it is why the LSQ paper (and this chapter) keeps the first layer at 8 bits." if share > 0 and share_first >= share / 2 else
         "." if share > 0 else ": keeping them at 8 bits does not help here.")))
fp_p = torch.softmax(ref.fp_fid.float(), 1).max(1).values.numpy()
fp_top = ref.fp_fid.argmax(1)
masks = {f"{c} {k}": (fid_logits[(c, k)].argmax(1) != fp_top).numpy() for c in lsq_configs if c.endswith("A4") for k in ("PTQ", "QAT")}
med = {k: float(np.median(fp_p[m])) for k, m in masks.items() if m.any()}
below = {k: float((fp_p[m] < 0.5).mean()) for k, m in masks.items() if m.any()}
if masks and not med:
    display(Markdown("No A4 model disagrees with FP32 on any held-out image here: there is no disagreement to locate."))
elif masks:
    fig = plots_qat.disagreement_confidence(fp_p, masks)
    display(Markdown(
        f"FP32's median top-1 probability is **{np.median(fp_p):.2f}** on all {len(fp_p):,} held-out images (label smoothing "
        f"caps it near 0.9) and **{results.span(med.values(), '{:.2f}', '–')}** on the images where an A4 model disagrees "
        f"with it; {results.span(below.values(), '{:.0%}', '–')} of those disagreements are on images FP32 itself gives "
        f"less than 0.5, against {(fp_p < 0.5).mean():.0%} of all held-out images. The fine-tune's loss (KL) is summed over "
        "every image, and most of it comes from images where the quantized model's probabilities are off without its answer "
        "changing: that is the part the fine-tune lowers. Agreement is decided on the few images at FP32's own decision "
        "boundary, which a fine-tune on training images (fitted by FP32, confidently) barely samples."))
"""),
md("""
### What the fine-tune sees, and what it changes

LSQ trains on the train split, so the chapter measures agreement on validation + test images,
which it never saw. The same comparison on 1,000 *training* images, and on mixup blends of
them (the inputs of the chapter's loss), shows where the quantized network disagrees with FP32
— and what the fine-tune changes there.
"""),
code("""
g = torch.Generator().manual_seed(cfg.seed)
tr = splits.train.subset(torch.randperm(len(splits.train), generator=g)[:1000])
x_tr = qdata.to_float(tr.images)
lam = torch.from_numpy(np.random.default_rng(cfg.seed).beta(mixup or 0.4, mixup or 0.4, size=(len(x_tr), 1, 1, 1))).float()
blend = lam * x_tr + (1 - lam) * x_tr[torch.randperm(len(x_tr), generator=g)]
@torch.no_grad()
def top1(m, x):
    return torch.cat([m(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)])
fp_tr, fp_bl = top1(fp, x_tr), top1(fp, blend)
seen = pd.DataFrame([{"config": c, "kind": kind,
                      "train images (fitted)": (top1(m, x_tr) == fp_tr).float().mean().item(),
                      "mixup blends of them": (top1(m, blend) == fp_bl).float().mean().item(),
                      "val + test (held out)": lowdf[(lowdf.config == c) & (lowdf.kind == kind) & (lowdf.engine == "float (fake-quant)")].agreement.iloc[0]}
                     for c in lsq_configs for kind, m in (("PTQ", ptq_models[c]), ("QAT", lsq_models[c]))])
display(seen.set_index(["config", "kind"]).style.format("{:.2%}").set_caption("agreement with FP32"))
d = seen.set_index(["config", "kind"])
ptq, q = d.xs("PTQ", level="kind"), d.xs("QAT", level="kind")
display(Markdown(
    f"On the images it trains on, the PTQ model already agrees **{results.span(ptq['train images (fitted)'], '{:.2%}', '–')}** "
    f"with FP32, on blends of them {results.span(ptq['mixup blends of them'], '{:.2%}', '–')}, held out "
    f"{results.span(ptq['val + test (held out)'], '{:.2%}', '–')}: the baseline has fitted its training set, so "
    "the training images carry little signal about where the quantized network goes wrong; blends carry more. "
    f"The fine-tune moves agreement on the blends it trains on by {results.span((q['mixup blends of them'] - ptq['mixup blends of them']) * 100, '{:+.2f}', ' to ')} "
    f"points, held out by "
    f"{results.span((q['val + test (held out)'] - ptq['val + test (held out)']) * 100, '{:+.2f}', ' to ')}."))
"""),
md(r"""
### What the KL's change is made of

The LSQ runs above change the KL to FP32, in some configurations down and in others up, while
agreement stays nearly where it was. Two measurements of the same held-out logits say why. **The logits' scale:** dividing a model's
logits by one number (a temperature $\tau$) changes no image's answer, so the KL that the best
single $\tau$ removes (searched on the fidelity set itself: one number per model) is over- or
under-confidence, not disagreement. **The margins:** on each image FP32's margin is its top-1
logit minus its top-2 logit; the model's error in that same difference is what decides
agreement — an error below minus the margin puts FP32's runner-up ahead of its answer.
"""),
code("""
unsure = fp_p < 0.5          # FP32's top-1 probability below 0.5 (the images of the figure above)
kl_rows, errors = [], {}
for c in lsq_configs:
    for kind in ("PTQ", "QAT"):
        z = fid_logits[(c, kind)]
        tau, kl_tau = measure.temperature_fit(z, ref.fp_fid)
        fp_margin, err = measure.margin_error(z, ref.fp_fid)
        e_u = err[torch.from_numpy(unsure)]
        if c.endswith("A4"):
            errors[f"{c} {kind}"] = err
        kl_rows.append({"model": f"{c} {kind}", "config": c, "kind": kind, **measure.fidelity(z, ref.fp_fid), "tau": tau, "kl_at_tau": kl_tau,
                        "margin error sd (all)": err.std().item(),
                        "margin error mean (FP32 unsure)": e_u.mean().item() if len(e_u) else float("nan"),
                        "margin error sd (FP32 unsure)": e_u.std().item() if len(e_u) > 1 else float("nan")})
kl_df = pd.DataFrame(kl_rows)
display(kl_df.drop(columns=["config", "kind"]).set_index("model").style.format(
    {"agreement": "{:.2%}", "kl": "{:.4f}", "tau": "{:.2f}", "kl_at_tau": "{:.4f}", "margin error sd (all)": "{:.3f}",
     "margin error mean (FP32 unsure)": "{:+z.3f}", "margin error sd (FP32 unsure)": "{:.3f}"}).set_caption(
    f"held-out logits ({len(fp_p):,} images; FP32 unsure: top-1 probability < 0.5, {int(unsure.sum()):,} images)"))
fig = plots_qat.scale_vs_margins(kl_df[kl_df.config.str.endswith("A4")], fp_margin, errors)
k = kl_df.set_index(["config", "kind"])
ptq_k, qat_k = k.xs("PTQ", level="kind"), k.xs("QAT", level="kind")
sd_u = "margin error sd (FP32 unsure)"
ch = pd.DataFrame({"fine_tune": qat_k.kl / ptq_k.kl - 1,              # relative changes, per configuration
                   "temperature": ptq_k.kl_at_tau / ptq_k.kl - 1,
                   "beyond": qat_k.kl_at_tau / ptq_k.kl_at_tau - 1,
                   "noise": qat_k[sd_u] / ptq_k[sd_u] - 1})          # NaN without two FP32-unsure images
has_unsure = unsure.sum() > 1
display(Markdown("\\n\\n".join(
    f"- **{c}**: the fine-tune takes the KL from {ptq_k.kl[c]:.4f} to {qat_k.kl[c]:.4f} ({r.fine_tune:+z.0%}); one temperature alone "
    f"(τ = {ptq_k.tau[c]:.2f}) takes PTQ's to {ptq_k.kl_at_tau[c]:.4f} ({r.temperature:+z.0%}), and at their best temperatures "
    f"QAT is at {qat_k.kl_at_tau[c]:.4f} against PTQ's {ptq_k.kl_at_tau[c]:.4f} ({r.beyond:+z.0%}). " +
    (f"The spread of the margin error on the images FP32 is unsure of goes from {ptq_k[sd_u][c]:.3f} to {qat_k[sd_u][c]:.3f} ({r.noise:+z.0%})."
     if has_unsure else "Too few images here that FP32 is unsure of to measure its margins' error there.")
    for c, r in ch.loc[lsq_configs].iterrows())))
scale_gap = ch.beyond.abs().max()     # how far apart PTQ and QAT are once each is at its best temperature
scale_only = scale_gap < 0.1
lowered = [c for c in ch.index if ch.fine_tune[c] < 0]   # where the fine-tune lowered the KL: did a temperature do as much?
as_temp = bool(lowered) and all(ch.temperature[c] <= ch.fine_tune[c] for c in lowered)
if scale_only and has_unsure and ch.noise.min() > -0.1:
    steady = ch.noise.abs().max() < 0.1  # the spread moves by less than a tenth either way
    display(Markdown(
        f"Once each model is divided by its best τ, PTQ and QAT are within {scale_gap:.0%} of each other in every configuration "
        f"(one number per model removes {results.span(-ch.temperature, '{:.0%}', '–')} of PTQ's KL, the fine-tune changes it by "
        f"{results.span(ch.fine_tune, '{:+.0%}', ' to ')})" +
        (f": where the fine-tune lowers the KL ({', '.join(lowered)}), one temperature lowers it as far or further, so what it "
         "won there is the logits' scale" if as_temp else "") + ". The spread of the margin error on the images FP32 is unsure of — which is what turns "
        f"answers — {'stays as it was' if steady else 'does not narrow'}: it changes by {results.span(ch.noise, '{:+.0%}', ' to ')}. "
        "The right panel shows where answers turn: the margin error reaches the margin (the dotted line) only on the images FP32 "
        "separates least" + (", and there the fine-tune's curves lie on PTQ's" if steady else "") + ". For a fine-tune on this "
        "data the KL is the wrong gauge of fidelity: it can fall while the errors that decide answers "
        f"{'stay as they were' if steady else 'stay or grow'}."))
else:
    display(Markdown(
        f"The fine-tune changes more than the logits' scale: at their best temperatures QAT's KL differs from PTQ's by "
        f"{results.span(ch.beyond, '{:+.0%}', ' to ')}" + (
            f", and the spread of the margin error on the images FP32 is unsure of by "
            f"{results.span(ch.noise, '{:+.0%}', ' to ')}." if has_unsure else ".")))
"""),
md(r"""
### How many answers a given spread turns

The right panel suggests a simple model: treat each model's margin error as noise, with the mean
$\mu$ and the spread $\sigma$ it has on the images FP32 is unsure of. An image whose FP32 margin is
$m_i$ then changes answer with probability $\Phi\!\left(-(m_i + \mu)/\sigma\right)$, and summing
that over the held-out images predicts the number of disagreements from $\mu$ and $\sigma$ alone
(`measure.noise_model`). Below, the model is checked on PTQ with 3 to 8 activation bits (GPTQ
weights, `conv1` and `fc` at 8 bits) and on the chapter's fine-tunes. Where it holds, it says what
winning back half of PTQ's loss takes: the spread at which the predicted disagreements halve
(`measure.sd_for_flips`), against what the fine-tune did to the spread.
"""),
code("""
a_sweep = [3, 4, 5, 6, 8]        # activation bits of the PTQ sweep (weights: those of the A4 configurations)
unsure_t = torch.from_numpy(unsure)
where = unsure_t if int(unsure_t.sum()) >= 20 else None   # too few unsure images (smoke data): the error on all images
where_text = "the images FP32 is unsure of" if where is not None else "all held-out images"
noise_rows = []
def add_noise(z, w, a, kind):
    nm = measure.noise_model(z, ref.fp_fid, where=where)
    noise_rows.append({"model": f"W{w}A{a} {'PTQ' if kind == 'PTQ' else 'LSQ'}", "w_bits": w, "a_bits": a, "kind": kind, **nm})
a4_configs = [c for c in lsq_configs if c.endswith("A4")]
sweep_w = sorted({lsq.parse_config(c)[0] for c in a4_configs})
for w in sweep_w:
    for a in a_sweep:
        z = fid_logits.get((f"W{w}A{a}", "PTQ"))
        if z is None:
            m0 = lsq.lsq_model(fp, qat.QATSettings(w_bits=w, a_bits=a, keep_8bit=tuple(lsq_keep_8bit)), init_model=gq[w],
                               calib_x=calib_x)
            z = ref.logits(m0)[1]
        add_noise(z, w, a, "PTQ")
for c in lsq_configs:
    w, a = lsq.parse_config(c)
    if w in sweep_w:
        add_noise(fid_logits[(c, "QAT")], w, a, "QAT")
noise_df = pd.DataFrame(noise_rows)
nd = noise_df.set_index(["w_bits", "a_bits", "kind"])
needed = {}   # half of the predicted disagreements: the model's own scale, so a model that under-counts is not favoured
for c in a4_configs:
    p = nd.loc[(*lsq.parse_config(c), "PTQ")]
    reachable = measure.expected_flips(fp_margin, p["mean"], 0.0) <= p.predicted / 2   # else the mean error alone flips more
    needed[c] = measure.sd_for_flips(fp_margin, p["mean"], p.predicted / 2) if reachable else float("nan")
display(noise_df.set_index("model")[["mean", "sd", "predicted", "disagreements"]].style.format(
    {"mean": "{:+z.3f}", "sd": "{:.3f}", "predicted": "{:.0f}"}).set_caption(
    f"margin error measured on {where_text}; disagreements among {len(fp_p):,} held-out images"))
fig = plots_qat.noise_and_flips(noise_df, {f"{c}: half of PTQ's loss": v for c, v in needed.items() if np.isfinite(v)})
"""),
code("""
counted = noise_df[noise_df.disagreements >= 20]   # a relative error of a handful of images says little
fit = (counted.predicted / counted.disagreements - 1).abs()
fit_w = {w: fit[counted.w_bits == w].max() if (counted.w_bits == w).any() else float("nan") for w in sweep_w}
holds = [w for w in sweep_w if fit_w[w] <= 0.15]
lines, cuts = [], []   # cuts: (config, the cut of the spread half of PTQ's loss takes, the cut one more activation bit gives)
for c in a4_configs:
    w, a = lsq.parse_config(c)
    p, q = nd.loc[(w, a, "PTQ")], nd.loc[(w, a, "QAT")]
    off = "" if w in holds else f" (the model is off at W{w}: see below)"
    text = (f"- **{c}**{off}: the spread of the margin error is {p.sd:.3f} after PTQ and {q.sd:.3f} after the fine-tune "
            f"({q.sd / p.sd - 1:+z.0%}); predicted disagreements {p.predicted:.0f} → {q.predicted:.0f}, measured "
            f"{p.disagreements} → {q.disagreements}. ")
    if np.isfinite(needed[c]):
        up = nd.loc[(w, a + 1, "PTQ")] if (w, a + 1, "PTQ") in nd.index else None
        text += (f"Half of PTQ's loss takes a spread of {needed[c]:.3f}, a cut of {1 - needed[c] / p.sd:.0%}" +
                 (f"; one more activation bit, without any training, gives {up.sd:.3f} ({up.sd / p.sd - 1:+z.0%}, "
                  f"{up.disagreements} disagreements)." if up is not None else "."))
        if w in holds and up is not None:
            cuts.append((c, 1 - needed[c] / p.sd, 1 - up.sd / p.sd))
    else:
        text += "Its mean error alone flips more than half of PTQ's disagreements: no spread wins half back."
    lines.append(text)
display(Markdown("\\n".join(lines)))
display(Markdown(
    "Over the models of the table with at least 20 disagreements, the prediction from the spread alone is within " +
    ", ".join(f"{fit_w[w]:.0%} (W{w})" for w in sweep_w) + " of the measured disagreements. " +
    (f"Where it is that close ({', '.join(f'W{w}' for w in holds)}), the number of answers a model turns is set by how widely "
     "its margin error spreads: a fine-tune wins agreement back only by narrowing that spread, and the cut that half of "
     "the loss takes is the one named above. " if holds else "") +
    (f"At {', '.join(f'W{w}' for w in sweep_w if w not in holds)} it is further off (or untested): those errors are not one Gaussian spread "
     "(the mean is not zero, and some images are off by far more), so the spread alone does not account for them."
     if len(holds) < len(sweep_w) else "")))
"""),
md("""
### A test of that explanation: distilling on images FP32 was not fitted on

If the training images carry too little signal, a fine-tune on held-out images — where FP32 is
unsure and its outputs say so — should win agreement back. The data set has no unlabelled images
to spare, so the validation split stands in for them: it is cut by track into two halves, the
LSQ model is distilled on the images of half A only (the loss is the distillation alone, so their
labels are never used), and agreement is measured on half A, on half B (tracks the fine-tune never
saw) and on the test split. The recipe is the chapter's but for two changes: the weights' learning
rate is ten times higher (at the chapter's rate the fine-tune barely moved agreement even on the
blends it trained on, above) and there is no mixup (these images are already ones FP32 was not fitted on). The model
is not saved or entered in the results: half of its validation images are training images now.
"""),
code("""
ia, ib = qdata.halves(splits.val, cfg.seed)
held_a, held_b = splits.val.subset(ia), splits.val.subset(ib)
w, a = lsq.parse_config(held_config)
if w not in gq:
    gq[w], gptq_s[w] = gptq_solution(w, lsq_keep_8bit)
s_held = replace(lsq_recipe, w_bits=w, a_bits=a, lr=held_lr, mixup=0.0).with_steps(held_steps, len(held_a))
t = time.time()
m_held, _ = lsq.lsq_train(fp, replace(splits, train=held_a), s_held, init_model=gq[w], calib_x=calib_x,
                          progress=False, validate=False)  # measured below, on both halves and test
held_s = time.time() - t
whole = ref.fp["n_fidelity"] == len(splits.val) + len(splits.test)  # the fidelity set is val + test, in order
def vt_logits(m, key=None):  # a model's logits on val + test (reused from the tables above when they have them)
    if whole:
        return fid_logits[key] if key in fid_logits else ref.logits(m)[1]
    return torch.cat([models.predict(m, splits.val), models.predict(m, splits.test)])
sets = {"val half A (distilled on)": ia, "val half B (other tracks)": ib,
        "test": torch.arange(len(splits.val), len(splits.val) + len(splits.test))}
fp_vt = (ref.fp_fid if whole else vt_logits(fp)).argmax(1)
candidates = {"PTQ": ((held_config, "PTQ"), ptq_models[held_config] if held_config in ptq_models else
                      lsq.lsq_model(fp, s_held, init_model=gq[w], calib_x=calib_x))}
if held_config in lsq_models:
    candidates["LSQ on the train split (above)"] = ((held_config, "QAT"), lsq_models[held_config])
candidates["LSQ distilled on half A"] = (None, m_held)
held_rows = []
for k, (key, m) in candidates.items():
    top = vt_logits(m, key).argmax(1)
    held_rows.append({"model": k, **{name: (top[i] == fp_vt[i]).float().mean().item() for name, i in sets.items()}})
held = pd.DataFrame(held_rows).set_index("model")
sizes = ", ".join(f"{k.split(' (')[0]}: {len(i):,} images" for k, i in sets.items())
display(held.style.format("{:.2%}").set_caption(f"{held_config}: agreement with FP32 ({sizes})"))
rec_held = {name: measure.recovery(held.loc["PTQ", name], held.loc["LSQ distilled on half A", name]) for name in sets}
print(f"{held_steps} steps on {len(held_a)} images ({s_held.epochs} pass{'es' if s_held.epochs > 1 else ''}): {held_s / 60:.1f} min")
r_a, r_b, r_t = (rec_held[k] for k in sets)
verdict = ("Unseen images are what the fine-tune lacked: with them it recovers at least half of the loss on tracks it never saw."
           if min(r_b, r_t) >= 0.5 else
           ("The quantized network moves toward FP32 on the images where it is shown FP32's answers, but what it learns on "
            if r_a >= 0.3 else f"Even on the images where it is shown FP32's answers it wins back only {r_a:.0%} of the loss, and what "
            "it learns on ") +
           f"{len(held_a):,} images of held-out tracks " + ("barely carries over to other tracks" if max(r_b, r_t) < 0.15 else
           "carries over to other tracks by less than half of the loss") + ": the disagreements sit on images near FP32's "
           "decision boundary, and those of one track say little about another's."
           if r_a > max(r_b, r_t) and r_a > 0 else
           "Even on the images it was distilled on it does not win back more than on other tracks.")
display(Markdown(
    f"Distilled on half A, {held_config} wins back **{r_a:.0%}** of PTQ's agreement loss on the images it trained on, "
    f"**{r_b:.0%}** on half B's tracks and **{r_t:.0%}** on the test split. " + verdict))
"""),
md("""
## Explore: a live fine-tune

In JupyterLab, choose the bits and the number of epochs: the panel runs a short LSQ fine-tune
with the chapter's recipe (Adam at the rates above, distillation, `conv1` and `fc` at 8 bits) from
an RTN/MSE start instead of GPTQ, 4 steps of 64 images per epoch on a 256-image subset, and draws
its curve — seconds, so the curve is a toy: a few steps on a few hundred images say nothing about the full runs. The static book shows the first setting; the figure of
the full runs above (and the int8 curve) is the precomputed counterpart.
"""),
code("""
widgets.qat_panel(fp, splits, calib_x, lsq_recipe, n_train=64 if cfg.smoke else 256, n_val=64 if cfg.smoke else 256);
"""),
md("""
## What must hold
"""),
code("""
# the QAT int8 model converts, saves, reloads and runs; its file is a real int8 file
out = int8.load(paths["qat_int8"])(calib_x[:8])
assert out.shape == (8, splits.num_classes) and torch.isfinite(out).all()
assert r_qat8["size_mb"] <= 11.5, r_qat8["size_mb"]
# QAT int8 accuracy is not below its PTQ starting point by more than noise (the PTQ interval's half-width)
noise = (r_ptq8["acc_hi"] - r_ptq8["acc_lo"]) / 2
assert r_qat8["accuracy"] >= r_ptq8["accuracy"] - noise, (r_qat8["accuracy"], r_ptq8["accuracy"], noise)
# LSQ exports bit-exact packed files smaller than the int8 file
assert (lowdf["size_mb"] < r_qat8["size_mb"]).all()
# the measured 5-minute run starts from exactly the PTQ model of the table (GPTQ weights, calibrated steps)
for c, rows in list(budget_curves.items()) + [("W4A4", r) for r in control.values()] + [(c, r) for c, runs in lr_runs.items() for r in runs]:
    assert rows[0]["step"] == 0 and rows[0]["agreement"] == recovery(c)[0], (c, rows[0]["agreement"], recovery(c)[0])
    assert 0 < rows[-1]["step"] <= budget_steps, (c, rows[-1]["step"])
print("ok")
"""),
code("""
rec = {c: recovery(c) for c in lsq_configs if "A4" in c}
w2a8 = [c for c in lsq_configs if c == "W2A8"]
d_fp, sp8 = (r_qat8["accuracy"] - ref.fp["accuracy"]) * 100, tab8.loc["int8 QAT", "speedup"]
d_lrs = own8["vs FP32 (points)"]
msg = [f"int8 QAT (from PTQ): {d_fp:+z.2f} points of test accuracy vs FP32 ({'meets' if d_fp >= -0.2 else 'misses'} the target of at most "
       f"0.2 below; {results.span(d_lrs, '{:+.2f}', ' to ')} over the learning rates {', '.join(own8['lr'])}, "
       f"{(r_qat8_std['accuracy'] - ref.fp['accuracy']) * 100:+z.2f} with the standard recipe), {r_qat8['size_mb']:.2f} MB ({'meets' if r_qat8['size_mb'] <= 11.5 else 'misses'} at most 11.5), "
       f"{sp8:.1f}x FP32's throughput in this chapter's timing, {tl8_text} ("
       + (f"{'meets' if sp8_tl['quiet'] >= 3.5 else 'misses'} at least 3.5x on the quiet machine" if tl8s["quiet_ok"] else
          f"{'meets' if sp8_tl['quiet'] >= 3.5 else 'misses'} at least 3.5x on a machine loaded throughout this run; chapter 8's timeline may show the quiet one")
       + ("" if sp8_tl["loaded"] is None or sp8_tl["loaded"] >= 3.5 else ", not in its loaded rounds")
       + "; chapter 8 times every variant again in one benchmark and shows the machine's loaded stretches)"]
qat_minutes = ([t / 60 for t in [qat8_s, qat8_std_s, *lr_s.values(), held_s]] + w2a8_min
               + list(train_min.values()) + list(recon_min.values())
               + [m for c in draws for m, _ in draws[c][1:]]
               + [rows[-1]["train_seconds"] / 60 for rows in [*budget_curves.values(), *control.values(), *learn_runs.values(),
                                                                *(r for runs in lr_runs.values() for r in runs),
                                                                *(r["rows"] for r in sm_runs.values())]])
msg.append(f"longest QAT run: {max(qat_minutes):.1f} min of training, of {len(qat_minutes)} timed runs "
           f"({'meets' if max(qat_minutes) <= 5 else 'misses'} at most 5 minutes)")
n_fid = len(fp_top)
for c, (p, q, r) in rec.items():
    best = max([r] + [d for _, d in draws.get(c, [])] + budget_rec.get(c, [0.0])[1:])
    best = max([best] + [x["recovered"] for rows in lr_runs.get(c, []) for x in rows[1:]])
    lr_end = [rows[-1]["recovered"] for rows in lr_runs.get(c, [])]
    _, lo, hi = rec_ci[c]
    won, half = round((q - p) * n_fid), math.ceil(round((1 - p) * n_fid) / 2)
    target = c in ("W4A4", "W2A4")   # the issue's targets; W8A4 is reported beside them
    msg.append(f"{c}{'' if target else ' (no target, reported)'}: QAT recovers {r:.0%} of the PTQ agreement loss ({won:+d} images, "
               f"where half of the loss is {half}; {ci_text(c)})" + (
        f" ({', '.join(f'{d:+z.0%}' for _, d in draws[c][1:])} with other seeds; {budget_rec[c][-1]:+z.0%} after "
        f"{budget_min[c]:.1f} min of training)" if c in budget_rec else "") +
        (f"; {', '.join(f'{e:+z.0%}' for e in lr_end)} in as many minutes "
         f"at a weights' learning rate of {budget_lr:g}" if lr_end else "") +
        (f"; against the best smoothed PTQ {vs_best[c]:+z.0%}" if c in vs_best else "") +
        (f"; from the smoothed PTQ {sm_runs[c]['rows'][-1]['recovered']:+z.0%} after {sm_runs[c]['rows'][-1]['train_seconds'] / 60:.1f} min "
         f"({sm_runs[c]['own']:+z.0%} of the smoothed PTQ's loss)" if c in sm_runs else "") +
        ("" if not target else f" — {'meets' if r >= 0.5 else 'misses'} the target of half" +
         ("" if math.isnan(lo) else f"; the interval {'lies below half' if hi < 0.5 else 'reaches half' if r < 0.5 else 'lies above half' if lo >= 0.5 else 'reaches below half'}")) +
        (f" (best of its runs and checkpoints: {best:+z.0%})" if best > r else ""))
if w2a8:
    p, q, _ = recovery("W2A8", "int8")
    n = ref.fp["n_fidelity"]
    msg.append(f"W2A8 on the int8 engine: LSQ {q:.2%} vs GPTQ {p:.2%} agreement ({round((q - p) * n):+d} of {n:,} images); "
               f"over {len(w2a8_diff)} calibration samples LSQ − GPTQ averages {w2a8_mean:+z.1f} images ({w2a8_range}) — "
               f"{'meets' if w2a8_mean >= 0 else 'misses'} the target of at least as good, on average")
msg.append(f"{held_config} distilled on half of the validation tracks (a test, not a result): {r_t:.0%} of the loss recovered on the test split")
display(Markdown("**Targets (measured):** " + "; ".join(msg) + f". Chapter time: {(time.time() - t_chapter) / 60:.1f} min."))
ends_a4 = ([r for p, q, r in rec.values()] + [d for c in draws for _, d in draws[c][1:]] + [r[-1] for r in budget_rec.values()]
           + [rows[-1]["recovered"] for runs in lr_runs.values() for rows in runs])
ends_a4 = [r for r in ends_a4 if np.isfinite(r)]   # a recovery is undefined when PTQ loses nothing
n_below = sum(r < 0 for r in ends_a4)
lead = ("" if not ends_a4 else
        f"Not within five minutes of training: none of the {len(ends_a4)} A4 fine-tunes of the chapter's recipe (its seeds, its "
        f"5-minute boxes, a higher weights' learning rate) ends with half of what PTQ loses won back, and "
        + {0: "none ends", 1: "one ends"}.get(n_below, f"{n_below} end") + " below PTQ's own agreement" if max(ends_a4) < 0.5 else
        f"At A4, {sum(r >= 0.5 for r in ends_a4)} of its {len(ends_a4)} fine-tunes end with half of what PTQ loses won back")
if w2a8 and ends_a4:
    lead += f"; at W2A8 LSQ {'stays behind' if w2a8_mean < 0 else 'matches or beats'} GPTQ ({w2a8_mean:+z.1f} images on average)"
own_best = int(own_dis.min())
answer = (f"**When is QAT worth it here?** " + (lead + ". " if lead else "") +
          (f"At 8 bits it buys nothing: PTQ is within noise of FP32 ({ptq_dis} disagreements), and the fine-tune ends at {own_best} or more. "
           if own_best >= ptq_dis else f"At 8 bits it wins back {ptq_dis - own_best} of PTQ's {ptq_dis} disagreements at best. ") +
          f"With low-bit weights or 4-bit activations, a minute of LSQ moves held-out agreement by {results.span(gain.values(), '{:+.2f}', ' to ')} points "
          f"and the KL to FP32 by {results.span(dkl.values(), '{:+.0%}', ' to ')}" +
          (f" — at their best temperatures PTQ and QAT are within {scale_gap:.0%}" +
           (": where it lowers the KL, it changes the logits' scale" if as_temp else "") if scale_only else "") +
          (f"; the spread of the margin error that decides answers changes by {results.span(ch.noise, '{:+.0%}', ' to ')}"
           if has_unsure else "") + "; ")
if cuts:
    answer += ("the number of answers a model turns follows the spread of that error, and half of the loss would take "
               "narrowing it by " + ", ".join(f"{k:.0%} ({c}; one more activation bit, without training, narrows it by {b:.0%})"
                                             for c, k, b in cuts) + "; ")
if "W4A4" in lsq_configs:
    answer += (f"keeping the first and last layer at 8 bits, which costs nothing, removed {share:.0%} of W4A4's agreement loss. "
               if share > 0 else "keeping the first and last layer at 8 bits did not lower W4A4's agreement loss. ")
if budget_rec:
    width = spread.groupby("config")["recovered"].agg(lambda r: r.max() - r.min()).max()
    ends = ", ".join(f"{budget_rec[c][-1]:+z.0%} ({c})" for c in budget_rec)
    answer += (f"Time-boxed to {budget_minutes:g} minutes ({results.span(budget_n.values(), '{}')} steps, at most "
               f"{max(budget_min.values()):.1f} min of training), the same fine-tune ends at {ends} "
               "of the loss recovered" + (", still short of half" if max(r[-1] for r in budget_rec.values()) < 0.5 else "") +
               f"; the {lsq_steps}-step run's recovery moves by up to {width:.0%} of the loss between seeds. ")
if lr_runs:
    answer += (f"At a weights' learning rate of {budget_lr:g} ({budget_lr / lsq_lr:g} times the chapter's) the same time box ends at " +
               ", ".join(f"{r[-1]['recovered']:+z.0%} ({c}, seed {cfg.seed + k})" for c, runs in lr_runs.items() for k, r in enumerate(runs)) + ". ")
if recon_rec:
    answer += ("Fitting each block's output instead (block-wise reconstruction of the same steps and biases) ends at " +
               ", ".join(f"{r:+z.0%} ({c})" for c, r in recon_rec.items()) + ". ")
answer += (f"Distilled on {len(held_a):,} images FP32 was not fitted on (half of the validation tracks, labels unused), "
           f"{held_config} recovered {r_a:.0%} of the loss on them and {r_b:.0%} / {r_t:.0%} on other tracks" +
           (": inputs near FP32's decision boundary are what a fine-tune needs, and this data set has no unlabelled images to "
            "spare for more" if r_a >= 0.3 and r_a > max(r_b, r_t) else
            ": even on the images it is shown, a short fine-tune at these bits barely narrows the error") +
           ". The LSQ paper's recipe is 90 epochs, not minutes.")
display(Markdown(answer))
"""),
code("""
export.save(lsq.export_model(lsq_models["W4A4"]), results.variant_path(cfg, "lsq_w4a4"),
            extra_metadata={"act_steps": lsq.act_steps(lsq_models["W4A4"])}) if "W4A4" in lsq_models else None
if "W2A8" in lsq_models:
    export.save(lsq.export_model(lsq_models["W2A8"]), results.variant_path(cfg, "lsq_w2a8"),
                extra_metadata={"act_steps": lsq.act_steps(lsq_models["W2A8"])})
    int8.save(lsq.to_int8(lsq_models["W2A8"], calib_x), results.variant_path(cfg, "lsq_w2a8", ".int8.pt"))
keep = ("accuracy", "acc_lo", "acc_hi", "agreement", "kl", "test_agreement", "n_fidelity", "size_mb")
rows = [{"method": "int8-ptq", "label": "int8 PTQ (histogram)", "bits": 8, "act_bits": 8, "granularity": "channel", "engine": "int8",
         **{k: r_ptq8[k] for k in keep}, **{k: lat["ptq"][k] for k in ("ms_per_batch", "images_per_s")}, "seconds": ptq8_s,
         "calib_seed": cfg.seed, "settings": {"observer": "histogram"}},
        {"method": "qat-int8", "label": "int8 QAT", "bits": 8, "act_bits": 8, "granularity": "channel", "engine": "int8",
         **{k: r_qat8[k] for k in keep}, **{k: lat["qat"][k] for k in ("ms_per_batch", "images_per_s")}, "seconds": qat8_s,
         "variant_file": "qat_int8", "calib_seed": cfg.seed, "settings": {**s8.__dict__, "start": "int8 PTQ (histogram ranges fixed, BN frozen)", "history": hist8}}]
for r in low:
    w, a = lsq.parse_config(r["config"])
    var = {"W4A4": "lsq_w4a4", "W2A8": "lsq_w2a8"}.get(r["config"]) if r["kind"] == "QAT" else None
    rows.append({"method": "lsq" if r["kind"] == "QAT" else "gptq", "label": f"{'LSQ' if r['kind'] == 'QAT' else 'GPTQ'} W{w}A{a}" + (" (int8 engine)" if r["engine"] == "int8" else ""),
                 "bits": w, "act_bits": a, "granularity": "channel", "engine": "int8" if r["engine"] == "int8" else "float",
                 **{k: r[k] for k in keep}, "seconds": r["seconds"], "variant_file": var, "calib_seed": cfg.seed,
                 "settings": {"init": "gptq", "act_steps": "mse", "epochs": lsq_epochs, "max_steps": lsq_steps, "distill": distill, "mixup": mixup, "optimizer": "adam", "lr": lsq_lr, "step_lr": lsq_step_lr, "log_steps": True, "keep_8bit": list(lsq_keep_8bit)} if r["kind"] == "QAT" else {"weights": "gptq act-order", "act": "mse step (=LSQ step 0)" if r["engine"] != "int8" else "histogram", "keep_8bit": list(lsq_keep_8bit)}})
for r in rows:  # the W2A8 comparison repeated on other calibration samples (both sides, paired)
    if r["label"] in ("GPTQ W2A8 (int8 engine)", "LSQ W2A8 (int8 engine)"):
        r["settings"]["calibration_draws"] = w2a8_draws.to_dict("records")
if "W4A4" in lsq_configs:
    rows.append({"method": "gptq", "label": "GPTQ W4A4 (every layer 4-bit)", "bits": 4, "act_bits": 4, "granularity": "channel", "engine": "float",
                 **{k: r_all4[k] for k in keep}, "seconds": r_all4["seconds"], "calib_seed": cfg.seed,
                 "settings": {"weights": "gptq act-order", "act": "mse step (=LSQ step 0)", "keep_8bit": []}})
results.record("07_qat", rows, cfg, data=splits.source);  # ';': the cell shows nothing (record returns the file's path)
"""),
]
write(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "notebooks", "07_qat.ipynb"), cells)
