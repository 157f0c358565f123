"""One measurement protocol for every variant: accuracy with a confidence interval, fidelity to
the FP model (top-1 agreement, KL of logits), file size, and CPU latency."""
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


class Reference:
    """The FP model's outputs on the test split and on the fidelity set, computed once.

    The fidelity set is every image of the data set except the calibration images (which are
    drawn from train): labels are not needed to compare a variant with FP, so it can be ~6x
    larger than the test split. ``fidelity_limit`` caps it (seeded subsample) for quick sweeps.
    """

    def __init__(self, fp_model, splits: qdata.Splits, calib_idx=(), fidelity_limit: int | None = None,
                 seed: int = 0):
        self.splits = splits
        calib = set(int(i) for i in calib_idx)
        keep = [i for i in range(len(splits.train)) if i not in calib]
        parts = [splits.train.subset(keep), splits.val, splits.test]
        images = torch.cat([p.images for p in parts])
        if fidelity_limit is not None and fidelity_limit < len(images):
            g = torch.Generator().manual_seed(seed)
            images = images[torch.randperm(len(images), generator=g)[:fidelity_limit]]
        self.fid_set = qdata.Split(images, torch.zeros(len(images), dtype=torch.long),
                                   ["-"] * len(images), ["-"] * len(images))
        self.fp_test = predict(fp_model, splits.test)
        self.fp_fid = predict(fp_model, self.fid_set)
        self.fp = self.row(logits=(self.fp_test, self.fp_fid))

    def row(self, model=None, logits=None) -> dict:
        """accuracy (+ 95% CI), agreement and KL to FP on the fidelity set, for a model or for
        precomputed (test logits, fidelity logits)."""
        test, fid = logits if logits is not None else (predict(model, self.splits.test), predict(model, self.fid_set))
        t = self.splits.test
        acc, lo, hi = accuracy_ci(test.argmax(1), t.labels, t.groups)
        f = fidelity(fid, self.fp_fid)
        return {"accuracy": acc, "acc_lo": lo, "acc_hi": hi, "agreement": f["agreement"],
                "kl": f["kl"], "test_agreement": fidelity(test, self.fp_test)["agreement"],
                "n_test": len(t), "n_fidelity": len(fid)}


def file_size_mb(path) -> float:
    """Size of the real file in MB (10^6 bytes)."""
    return os.path.getsize(path) / 1e6


@torch.inference_mode()
def latency(model, image_size: int = 64, batch_size: int = 64, threads: int = 2, warmup: int = 5,
            runs: int = 20, seed: int = 0) -> dict:
    """CPU latency of one batch under a fixed protocol: fixed thread count, inference mode,
    warm-up runs, then the median and spread (max/min) of ``runs`` timed batches."""
    if runs < 1 or warmup < 0 or batch_size < 1 or threads < 1:
        raise ValueError(f"runs={runs}, warmup={warmup}, batch_size={batch_size}, threads={threads}: "
                         "expected runs, batch_size, threads >= 1 and warmup >= 0")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = model.eval().cpu() if hasattr(model, "cpu") else model
        x = torch.randn(batch_size, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)
    med = statistics.median(times)
    return {"ms_per_batch": med * 1e3, "ms_min": min(times) * 1e3, "ms_max": max(times) * 1e3,
            "spread": max(times) / min(times), "images_per_s": batch_size / med,
            "batch_size": batch_size, "threads": threads, "runs": runs}


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
