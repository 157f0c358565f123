"""One measurement protocol for every variant: accuracy with a confidence interval, fidelity to
the FP model (top-1 agreement, KL of logits), file size, and CPU latency; and the share of a
PTQ model's agreement loss that a fine-tune wins back (``recovery``, with an interval)."""
from __future__ import annotations

import os
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import data as qdata
from .models import predict


def accuracy_ci(pred: torch.Tensor, labels: torch.Tensor, groups: list, n_boot: int = 1000,
                seed: int = 0, level: float = 0.95) -> tuple:
    """Top-1 accuracy and a cluster-bootstrap confidence interval.

    Frames of one track are near-duplicates, so images are not independent: the bootstrap
    resamples whole groups (tracks), which gives an honest (wider) interval than a binomial one.
    """
    correct = (pred == labels).double()
    acc = correct.mean().item()
    uniq = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    gid = torch.tensor([uniq[g] for g in groups])
    k = len(uniq)
    sums = torch.zeros(k, dtype=torch.double).index_add_(0, gid, correct)
    counts = torch.zeros(k, dtype=torch.double).index_add_(0, gid, torch.ones_like(correct))
    rng = np.random.default_rng(seed)
    pick = torch.from_numpy(rng.integers(0, k, size=(n_boot, k)))
    boot = (sums[pick].sum(1) / counts[pick].sum(1)).numpy()
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return acc, float(lo), float(hi)


def fidelity(logits: torch.Tensor, ref_logits: torch.Tensor) -> dict:
    """Top-1 agreement with the reference and mean KL(ref || model) of the softmax outputs."""
    agree = (logits.argmax(1) == ref_logits.argmax(1)).float().mean().item()
    kl = F.kl_div(F.log_softmax(logits.float(), 1), F.log_softmax(ref_logits.float(), 1),
                  log_target=True, reduction="batchmean").item()
    return {"agreement": agree, "kl": kl}


def _check_logits(logits, ref_logits):
    if not (isinstance(logits, torch.Tensor) and isinstance(ref_logits, torch.Tensor)) or \
            logits.dim() != 2 or logits.shape != ref_logits.shape or logits.shape[1] < 2:
        shapes = tuple(getattr(logits, "shape", ())), tuple(getattr(ref_logits, "shape", ()))
        raise ValueError(f"logits {shapes[0]} and ref_logits {shapes[1]}: expected two tensors "
                         "of the same shape [images, classes >= 2]")


def temperature_fit(logits: torch.Tensor, ref_logits: torch.Tensor, lo: float = 0.25,
                    hi: float = 4.0, n: int = 241) -> tuple:
    """The single temperature ``tau`` (logits divided by it) that minimises KL(ref || model),
    searched on a log grid of ``n`` points in [lo, hi] that holds 1: returns ``(tau, kl at
    tau)``. Dividing logits by one number changes no image's top-1 class, so the KL it removes
    is a mismatch of the logits' scale (over- or under-confidence), not of any answer."""
    _check_logits(logits, ref_logits)
    if not (0 < lo < 1 < hi) or not isinstance(n, int) or n < 3:
        raise ValueError(f"lo={lo!r}, hi={hi!r}, n={n!r}: expected 0 < lo < 1 < hi and an integer n >= 3")
    taus = torch.cat([torch.logspace(np.log10(lo), np.log10(hi), n, dtype=torch.double),
                      torch.ones(1, dtype=torch.double)])
    z, ref = logits.double(), F.log_softmax(ref_logits.double(), 1)
    kls = torch.stack([F.kl_div(F.log_softmax(z / t, 1), ref, log_target=True, reduction="batchmean")
                       for t in taus])
    i = int(kls.argmin())
    return float(taus[i]), float(kls[i])


def margin_error(logits: torch.Tensor, ref_logits: torch.Tensor) -> tuple:
    """The reference's margin on each image — its top-1 logit minus its top-2 logit — and the
    model's error in that same difference (the model's logit of the reference's top-1 class
    minus its logit of the reference's top-2 class, minus the reference's margin). An error
    below minus the margin turns the reference's runner-up ahead of its answer: the model
    disagrees. Returns ``(ref_margin, error)``, one value per image."""
    _check_logits(logits, ref_logits)
    ref, z = ref_logits.double(), logits.double()
    top2 = ref.topk(2, 1).indices
    ref_margin = ref.gather(1, top2[:, :1]) - ref.gather(1, top2[:, 1:])
    margin = z.gather(1, top2[:, :1]) - z.gather(1, top2[:, 1:])
    return ref_margin.squeeze(1), (margin - ref_margin).squeeze(1)


def expected_flips(ref_margin, mean: float, sd: float) -> float:
    """How many images change answer when each margin ``ref_margin`` (>= 0) gets an independent
    Gaussian error of ``mean`` and ``sd``: the sum of ``P(margin + error < 0) = Phi(-(margin +
    mean) / sd)``. Only the reference's runner-up is considered (a flip to a third class needs a
    larger error). ``sd = 0``: the images with ``margin + mean < 0``, half of those at 0."""
    m = torch.as_tensor(ref_margin, dtype=torch.double)
    if m.dim() != 1 or not len(m) or bool((m < 0).any()) or not bool(torch.isfinite(m).all()):
        raise ValueError(f"ref_margin (shape {tuple(m.shape)}): expected a non-empty 1-D tensor of "
                         "finite margins >= 0 (from margin_error)")
    if not (np.isfinite(mean) and np.isfinite(sd) and sd >= 0):
        raise ValueError(f"mean={mean!r}, sd={sd!r}: expected finite numbers with sd >= 0")
    x = m + mean
    if sd == 0:
        return float((x < 0).sum() + 0.5 * (x == 0).sum())
    return float((0.5 * torch.erfc(x / (sd * np.sqrt(2.0)))).sum())


def noise_model(logits: torch.Tensor, ref_logits: torch.Tensor, where=None) -> dict:
    """The disagreement a model's margin error predicts, if that error were Gaussian noise.

    The error's mean and standard deviation are measured on the images ``where`` (a boolean
    mask; default all) — e.g. those the reference is unsure of, where answers turn — and
    ``expected_flips`` applies them to every image's reference margin. Returns ``mean``, ``sd``,
    ``predicted`` and the measured ``disagreements`` (counts of images). When the prediction
    matches, disagreement is set by the error's spread alone, and halving the disagreements
    takes the spread that ``sd_for_flips`` finds."""
    ref_margin, err = margin_error(logits, ref_logits)
    if where is None:
        where = torch.ones(len(err), dtype=torch.bool)
    where = torch.as_tensor(where)
    if where.dtype != torch.bool or where.shape != err.shape or int(where.sum()) < 2:
        raise ValueError(f"where (dtype {where.dtype}, shape {tuple(where.shape)}, "
                         f"{int(where.sum()) if where.dtype == torch.bool else '?'} selected): expected a "
                         f"boolean mask over the {len(err)} images selecting at least 2")
    e = err[where]
    mean, sd = float(e.mean()), float(e.std())
    return {"mean": mean, "sd": sd, "predicted": expected_flips(ref_margin, mean, sd),
            "disagreements": int((logits.argmax(1) != ref_logits.argmax(1)).sum())}


def sd_for_flips(ref_margin, mean: float, flips: float, tol: float = 1e-6) -> float:
    """The error spread at which ``expected_flips(ref_margin, mean, sd)`` equals ``flips``
    (bisection: the expected flips grow with the spread when ``mean`` does not already flip
    more than ``flips`` images at zero spread)."""
    lo_flips = expected_flips(ref_margin, mean, 0.0)
    n = len(torch.as_tensor(ref_margin))
    if not (lo_flips <= flips < n / 2):
        raise ValueError(f"flips={flips!r}: expected at least {lo_flips:g} (the flips of the mean error "
                         f"alone) and fewer than {n / 2:g} (half the images)")
    lo, hi = 0.0, 1.0
    while expected_flips(ref_margin, mean, hi) < flips:
        hi *= 2
    while hi - lo > tol * max(hi, 1.0):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected_flips(ref_margin, mean, mid) < flips else (lo, mid)
    return (lo + hi) / 2


def recovery(ptq_agreement: float, agreement: float) -> float:
    """The share of PTQ's agreement loss a fine-tune wins back: ``(a - a0) / (1 - a0)`` for the
    PTQ model's agreement ``a0`` and the fine-tuned one's ``a`` (1: all of it, 0: none, < 0:
    it lost more). NaN when PTQ agrees everywhere (nothing to win back)."""
    for name, v in (("ptq_agreement", ptq_agreement), ("agreement", agreement)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise ValueError(f"{name}={v!r}: expected an agreement in [0, 1]")
    return float("nan") if ptq_agreement == 1 else (agreement - ptq_agreement) / (1 - ptq_agreement)


def recovery_ci(ptq_agree, qat_agree, groups, n_boot: int = 2000, seed: int = 0,
                level: float = 0.95) -> tuple:
    """``recovery`` of two models measured on the same images, with a paired cluster-bootstrap
    interval: ``ptq_agree`` / ``qat_agree`` say per image whether each model agrees with FP, and
    ``groups`` (one per image) are the tracks. Frames of one track are near-duplicates and tend
    to flip together, so the bootstrap resamples whole tracks, and both models on the same
    resampled images. Returns ``(recovered, lo, hi)``; replicates in which PTQ agrees everywhere
    (no loss to win back) are left out, and the interval is NaN if they all are."""
    p, q = (torch.as_tensor(v) for v in (ptq_agree, qat_agree))
    if p.dim() != 1 or p.shape != q.shape or len(groups) != len(p) or len(p) == 0 or \
            p.dtype != torch.bool or q.dtype != torch.bool:
        raise ValueError(f"ptq_agree {tuple(p.shape)} {p.dtype}, qat_agree {tuple(q.shape)} {q.dtype}, "
                         f"{len(groups)} groups: expected two boolean vectors and one group per image, all "
                         "of the same non-zero length")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"n_boot={n_boot!r}, level={level!r}: expected an integer >= 1 and 0 < level < 1")
    point = recovery(p.double().mean().item(), q.double().mean().item())
    uniq = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    gid = torch.tensor([uniq[g] for g in groups])
    k = len(uniq)
    per_track = [torch.zeros(k, dtype=torch.double).index_add_(0, gid, v.double())
                 for v in (p, q, torch.ones_like(p))]
    pick = torch.from_numpy(np.random.default_rng(seed).integers(0, k, size=(n_boot, k)))
    sp, sq, n = (t[pick].sum(1) for t in per_track)
    lost = n - sp                                    # PTQ's disagreements in each replicate
    boot = ((sq - sp) / lost)[lost > 0].numpy()      # = recovery(sp / n, sq / n)
    if len(boot) == 0:
        return point, float("nan"), float("nan")
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return point, float(lo), float(hi)


class Reference:
    """The FP model's outputs on the test split and on the fidelity set, computed once.

    The fidelity set is the held-out images: validation + test. No variant calibrates or
    fine-tunes on them, and the FP model was not trained on them. (Training images would
    inflate agreement: the FP model has fitted them, and quantized models agree with it almost
    everywhere there.) Labels are not needed to compare a variant with FP, so the set is
    twice the test split. ``fidelity_limit`` caps it (seeded subsample) for quick sweeps; the
    test split is always measured whole, for accuracy.
    """

    def __init__(self, fp_model, splits: qdata.Splits, fidelity_limit: int | None = None, seed: int = 0):
        if fidelity_limit is not None and (not isinstance(fidelity_limit, int) or fidelity_limit < 1):
            raise ValueError(f"fidelity_limit={fidelity_limit!r}: expected None or an integer >= 1")
        self.splits = splits
        held = torch.cat([splits.val.images, splits.test.images])
        n_val, n_test = len(splits.val), len(splits.test)
        fid = torch.arange(len(held))
        if fidelity_limit is not None and fidelity_limit < len(held):
            g = torch.Generator().manual_seed(seed)
            fid = torch.randperm(len(held), generator=g)[:fidelity_limit].sort().values
        test = torch.arange(n_val, n_val + n_test)
        # one forward pass per variant over the images either measure needs
        need = torch.unique(torch.cat([fid, test]))
        self._fid_pos = torch.searchsorted(need, fid)
        self._test_pos = torch.searchsorted(need, test)
        self._needed = _unlabelled(held[need])
        self.fid_set = _unlabelled(held[fid])
        held_groups = list(splits.val.groups) + list(splits.test.groups)
        self.fid_groups = [held_groups[i] for i in fid.tolist()]  # the fidelity images' tracks
        self.fp_test, self.fp_fid = self.logits(fp_model)
        self.fp = self.row(logits=(self.fp_test, self.fp_fid))

    def logits(self, model) -> tuple:
        """The model's (test logits, fidelity logits), from one pass over the images they need."""
        out = predict(model, self._needed)
        return out[self._test_pos], out[self._fid_pos]

    def row(self, model=None, logits=None) -> dict:
        """accuracy (+ 95% CI), agreement and KL to FP on the fidelity set, for a model or for
        precomputed (test logits, fidelity logits)."""
        test, fid = logits if logits is not None else self.logits(model)
        t = self.splits.test
        acc, lo, hi = accuracy_ci(test.argmax(1), t.labels, t.groups)
        f = fidelity(fid, self.fp_fid)
        return {"accuracy": acc, "acc_lo": lo, "acc_hi": hi, "agreement": f["agreement"],
                "kl": f["kl"], "test_agreement": fidelity(test, self.fp_test)["agreement"],
                "n_test": len(t), "n_fidelity": len(fid)}


def _unlabelled(images: torch.Tensor) -> qdata.Split:
    return qdata.Split(images, torch.zeros(len(images), dtype=torch.long), ["-"] * len(images), ["-"] * len(images))


def file_size_mb(path) -> float:
    """Size of the real file in MB (10^6 bytes)."""
    return os.path.getsize(path) / 1e6


def latency(model, image_size: int = 64, batch_size: int = 64, threads: int = 2, warmup: int = 5,
            runs: int = 20, seed: int = 0) -> dict:
    """CPU latency of one batch under a fixed protocol (``latencies`` of one model): fixed
    thread count, inference mode, warm-up runs, then the median and spread (max/min) of
    ``runs`` timed batches."""
    return latencies({"model": model}, image_size, batch_size, threads, warmup, runs, seed)["model"]


def _timed(model, x, n: int) -> list:
    """Seconds of each of ``n`` calls ``model(x)``, back to back."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        model(x)
        out.append(time.perf_counter() - t0)
    return out


@torch.inference_mode()
def latencies(models: dict, image_size: int = 64, batch_size: int = 64, threads: int = 2,
              warmup: int = 5, runs: int = 20, seed: int = 0, progress: bool = False, block: int = 1) -> dict:
    """``latency`` of several models compared with each other: ``{name: model}`` ->
    ``{name: stats}``. The timed batches are interleaved (A B C ... A B C ...), so drift of the
    machine (thermal, other load) over the measurement hits every model alike and their ratios
    are fair. Inference mode (no autograd graph is recorded, as in deployment), ``threads``
    threads, ``warmup`` untimed batches per model, then ``runs`` timed rounds; each model's stats
    are the median, fastest and slowest batch, their spread (max/min) and images per second.

    ``block`` > 1 times ``block`` batches of a model back to back in each round (AAAA BBBB ...).
    The first of them follows the other models' batches, which evict its weights from the CPU's
    cache when theirs together outgrow it: its median is ``ms_cold``. The others find the weights
    the batch before left in the cache, as a model serving alone does: the median and the other
    stats are theirs ("warm"). With ``block`` = 1 every batch is a first one, and ``ms_cold``
    is the median."""
    from tqdm.auto import tqdm

    if not isinstance(models, dict) or not models:
        raise ValueError(f"models={models!r}: expected a non-empty dict {{name: model}}")
    if runs < 1 or warmup < 0 or batch_size < 1 or threads < 1 or block < 1:
        raise ValueError(f"runs={runs}, warmup={warmup}, batch_size={batch_size}, threads={threads}, block={block}: "
                         "expected runs, batch_size, threads, block >= 1 and warmup >= 0")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    times = {name: [] for name in models}  # per round, the block's batches in order
    try:
        models = {k: m.eval().cpu() if hasattr(m, "cpu") else m for k, m in models.items()}
        x = torch.randn(batch_size, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))
        for m in models.values():
            for _ in range(warmup):
                m(x)
        bar = tqdm(total=runs * len(models) * block, desc="latency", unit="batch", disable=not progress)
        for _ in range(runs):
            for name, m in models.items():
                times[name].append(_timed(m, x, block))
                bar.update(block)
        bar.close()
    finally:
        torch.set_num_threads(old)
    out = {}
    for name, rounds in times.items():
        t = [b for r in rounds for b in (r[1:] if block > 1 else r)]
        med = statistics.median(t)
        out[name] = {"ms_per_batch": med * 1e3, "ms_min": min(t) * 1e3, "ms_max": max(t) * 1e3,
                     "spread": max(t) / min(t), "images_per_s": batch_size / med,
                     "batch_size": batch_size, "threads": threads, "runs": runs, "block": block,
                     "ms_cold": statistics.median(r[0] for r in rounds) * 1e3}  # block 1: every batch
    return out


def stolen_ms():
    """CPU time the hypervisor ran something else while this virtual machine's CPUs wanted to run
    ("steal" in Linux's ``/proc/stat``, summed over the CPUs), in ms since boot; None where the
    system does not count it. Two readings' difference is the time stolen between them."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) * 1e3 / os.sysconf("SC_CLK_TCK") if fields[0] == "cpu" and len(fields) > 8 else None
    except (OSError, ValueError, IndexError, AttributeError):
        return None


@torch.inference_mode()
def timeline(models: dict, seconds: float = 30.0, image_size: int = 64, batch_size: int = 64, threads: int = 2,
             per_round: int = 3, probe_size: int = 1024, seed: int = 0, progress: bool = False,
             min_rounds: int = 2) -> dict:
    """How the machine's speed moves while ``models`` run, and how much each model feels it.

    Rounds follow each other until ``seconds`` have passed and at least ``min_rounds`` have run
    (``timeline_speedups`` needs two: a short timeline on a slow machine still gives them). In each, every model runs
    ``per_round`` batches back to back (their median is the model's time in that round: warm, as
    a model serving alone), then a **probe** runs: five products of a fixed ``probe_size``-square
    FP32 matrix, whose time depends on nothing but the machine. On a shared machine (virtual
    CPUs whose physical cores other tenants also load) the probe slows in some rounds; the
    models' times in the same rounds show how much each suffers. Returns ``{"t": [s since the
    start, per round], "ms": {name: [ms per batch, per round]}, "probe_ms": [...], "round_ms":
    [the whole round's], "steal_ms": [CPU time stolen by the hypervisor during it (``stolen_ms``;
    None where not counted)], ...}``; ``timeline_speedups`` summarises it."""
    from tqdm.auto import tqdm

    if not isinstance(models, dict) or not models:
        raise ValueError(f"models={models!r}: expected a non-empty dict {{name: model}}")
    if not seconds > 0 or per_round < 1 or batch_size < 1 or threads < 1 or probe_size < 1 or min_rounds < 1:
        raise ValueError(f"seconds={seconds}, per_round={per_round}, batch_size={batch_size}, threads={threads}, "
                         f"probe_size={probe_size}, min_rounds={min_rounds}: expected seconds > 0 and the others >= 1")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, 3, image_size, image_size, generator=g)
    a = torch.randn(probe_size, probe_size, generator=g)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    out = {"t": [], "ms": {name: [] for name in models}, "probe_ms": [], "round_ms": [], "steal_ms": [], "per_round": per_round,
           "batch_size": batch_size, "threads": threads, "probe_size": probe_size}
    try:
        models = {k: m.eval().cpu() if hasattr(m, "cpu") else m for k, m in models.items()}
        for m in models.values():  # warm-up
            m(x)
        a @ a
        bar = tqdm(total=round(seconds), desc="timeline", unit="s", disable=not progress)
        start = time.perf_counter()
        while (now := time.perf_counter() - start) < seconds or len(out["t"]) < min_rounds:
            out["t"].append(now)
            steal0 = stolen_ms()
            for name, m in models.items():
                out["ms"][name].append(statistics.median(_timed(m, x, per_round)) * 1e3)
            t0 = time.perf_counter()
            for _ in range(5):
                a @ a
            out["probe_ms"].append((time.perf_counter() - t0) * 1e3)
            steal1 = stolen_ms()
            out["round_ms"].append((time.perf_counter() - start - now) * 1e3)
            out["steal_ms"].append(None if steal0 is None or steal1 is None else steal1 - steal0)
            bar.update(min(round(time.perf_counter() - start), round(seconds)) - bar.n)
        bar.close()
    finally:
        torch.set_num_threads(old)
    return out


def timeline_speedups(tl: dict, ref: str, loaded: float = 1.2, quiet_tol: float = 1.1) -> dict:
    """``timeline``'s rounds as speed-ups over the model ``ref``, each round's ratio measured in
    that round. The rounds are split by the probe: **quiet**, the half in which it ran fastest;
    **loaded**, those in which it took at least ``loaded`` times the quiet half's median (none,
    if the machine held its speed). Per other model (``"models"``): the median speed-up over all
    rounds, the quiet and the loaded ones (None without loaded rounds); ``"ms"``: every model's
    median ms per batch, and the probe's, in each set (how much each slows when the machine does);
    ``"round_ms"``: where the timeline has them, the median round's duration (``"duration"``) and the
    CPU time stolen from it (``"stolen"``) in each set, ms. The split assumes that at least half
    of the run was quiet: ``"quiet_excess"`` is the quiet half's median probe over the run's
    fastest probe (``"probe_fast_ms"``: load only ever slows it) — near 1 when it holds. ``"quiet_ok"``
    is whether it stays below ``quiet_tol``: when it does not, the quiet half is itself slowed and no
    set shows the quiet machine (they compare a loaded machine with a more loaded one)."""
    if ref not in tl["ms"]:
        raise ValueError(f"ref={ref!r}: expected one of the timeline's models {sorted(tl['ms'])}")
    if not loaded > 1:
        raise ValueError(f"loaded={loaded!r}: expected a factor > 1 (the probe's slowing that marks a loaded round)")
    if not quiet_tol > 1:
        raise ValueError(f"quiet_tol={quiet_tol!r}: expected a factor > 1 (how much slower than the fastest round the quiet "
                         "half's median probe may run and still show the quiet machine)")
    probe = np.asarray(tl["probe_ms"], dtype=float)
    if len(probe) < 2:
        raise ValueError(f"the timeline has {len(probe)} round(s): expected at least 2 (give it more seconds)")
    quiet = np.argsort(probe, kind="stable")[: len(probe) // 2]
    quiet_ms = float(np.median(probe[quiet]))  # the quiet half's median probe: what "loaded" and "quiet_excess" are relative to
    excess = quiet_ms / float(probe.min())
    busy = np.flatnonzero(probe >= loaded * quiet_ms)
    med = lambda v, idx: float(np.median(np.asarray(v, dtype=float)[idx])) if len(idx) else None
    out = {"rounds": len(probe), "loaded_rounds": len(busy), "loaded_factor": loaded,
           "probe_threshold_ms": loaded * quiet_ms, "probe_fast_ms": float(probe.min()),
           "quiet_excess": excess, "quiet_tol": quiet_tol, "quiet_ok": bool(excess < quiet_tol),
           "ms": {name: {"quiet": med(v, quiet), "loaded": med(v, busy)} for name, v in [*tl["ms"].items(), ("probe", probe)]},
           "models": {}, "round_ms": {}}
    for key, name in (("round_ms", "duration"), ("steal_ms", "stolen")):  # absent from older timelines, steal None off Linux
        v = tl.get(key)
        if v is not None and len(v) == len(probe) and all(x is not None for x in v):
            out["round_ms"][name] = {"quiet": med(v, quiet), "loaded": med(v, busy)}
    r = np.asarray(tl["ms"][ref], dtype=float)
    for name, ms in tl["ms"].items():
        if name != ref:
            s = r / np.asarray(ms, dtype=float)
            out["models"][name] = {"all": float(np.median(s)), "quiet": med(s, quiet), "loaded": med(s, busy)}
    return out


def memory_mb(model) -> float:
    """MB that ``model``'s parameters and buffers hold in memory, as its state dict holds them
    (a quantized tensor's 1-byte elements, the packed weights of PyTorch's int8 layers)."""
    def nbytes(v):
        if isinstance(v, torch.Tensor):
            return v.numel() * v.element_size()
        if isinstance(v, (tuple, list)):
            return sum(nbytes(u) for u in v)
        return 0

    return sum(nbytes(v) for v in model.state_dict().values()) / 1e6


def saved_size_mb(model, save=None) -> float:
    """Save ``model`` to a temporary file (``qlib.export.save`` by default, which packs
    quantized weights) and return the real file's size in MB."""
    import tempfile

    if save is None:
        from .export import save
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.bin")
        save(model, path)
        return file_size_mb(path)
