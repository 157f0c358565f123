"""How an LSQ fine-tune's result grows with its length: ``run`` trains chapter 07's LSQ recipe
(``lsq.lsq_train``) and measures the model against FP32 every few optimizer steps; ``python -m
qlib.lsq_curve`` is the same as one command, for runs longer than the book's (README, "Longer QAT
runs").
"""
from __future__ import annotations

import time
from typing import Callable, Optional

import torch
from torch import nn

from . import calib, measure, models
from . import data as qdata
from .lsq import gptq_init, lsq_train, parse_config
from .qat import LEARN, QATSettings


def run(model_fp: nn.Module, splits: qdata.Splits, settings: QATSettings, reference,
        every: int, init_model: Optional[nn.Module] = None,
        calib_x: Optional[torch.Tensor] = None, progress: bool = True,
        on_row: Optional[Callable[[dict], None]] = None):
    """An LSQ fine-tune (``lsq_train``, without the per-epoch validation pass) measured against
    FP every ``every`` optimizer steps and at its end: returns ``(model, rows)``, one row per
    measurement — step 0 is the starting (PTQ) model — holding ``reference.row``'s numbers
    (agreement, KL, accuracy, ...), ``step``, ``train_seconds`` (the training time so far
    without the measurements') and ``recovered`` (``recovery`` of step 0's agreement). The
    measurements change no parameter and draw no random numbers, so the model is the one
    ``lsq_train`` returns for the same settings. ``on_row(row)`` is
    called with each row as it is measured.
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every={every!r}: expected an integer >= 1 (optimizer steps between measurements)")
    rows = []

    def add(row):
        row["recovered"] = measure.recovery(rows[0]["agreement"] if rows else row["agreement"], row["agreement"])
        rows.append(row)
        if on_row is not None:
            on_row(row)

    spent, last = 0.0, time.perf_counter()

    def measure_at(m, step):  # the time to build the starting model counts as training, from step 1
        nonlocal spent, last
        spent += time.perf_counter() - last
        m.eval()
        add({"step": step, "train_seconds": spent if step else 0.0, **reference.row(m)})
        last = time.perf_counter()

    def on_step(m, step):
        if step % every == 0:
            measure_at(m, step)

    model, hist = lsq_train(model_fp, splits, settings, init_model=init_model, calib_x=calib_x,
                            progress=progress, validate=False, on_step=on_step)
    total = sum(hist["steps"])
    if rows[-1]["step"] != total:
        measure_at(model, total)
    return model, rows


def main(argv=None) -> int:
    """Command line: one long LSQ fine-tune with the measurements of ``run``."""
    import argparse
    import sys

    from .results import write_json
    from .config import Config

    ap = argparse.ArgumentParser(
        prog="python -m qlib.lsq_curve",
        description="One LSQ fine-tune of the FP32 baseline (chapter 07's recipe: GPTQ start, conv1/fc at "
                    "8 bits, distillation to FP32, mixup, Adam, cosine schedule over all steps), with its "
                    "agreement and KL to FP32 on the held-out images measured along the way. Data: QLIB_DATA.")
    ap.add_argument("--config", default="W2A4", help="weight and activation bits, e.g. W2A4 (default)")
    ap.add_argument("--steps", type=int, default=240, help="optimizer steps of batch 128 in all (default 240)")
    ap.add_argument("--minutes", type=float, default=None,
                    help="time box of the optimizer steps: the run ends after this many minutes of them (or after --steps), "
                         "its cosine schedule running over the minutes (default: none; chapter 07's 5-minute runs: 4.5)")
    ap.add_argument("--every", type=int, default=None, help="steps between measurements (default steps/10)")
    ap.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate of the weights (default 1e-4)")
    ap.add_argument("--step-lr", type=float, default=1e-3, help="of the steps' logarithms (default 1e-3)")
    ap.add_argument("--mixup", type=float, default=0.4)
    ap.add_argument("--no-augment", dest="augment", action="store_false",
                    help="train on the training images as they are (default: models.augment on each batch)")
    ap.add_argument("--learn", default="all", choices=LEARN,
                    help="what the fine-tune moves: all (default), weights (steps frozen) or steps (weights frozen)")
    ap.add_argument("--seed", type=int, default=None, help="the fine-tune's seed (default: QLIB_SEED's)")
    ap.add_argument("--out", default=None, help="also write the rows as JSON to this file")
    a = ap.parse_args(argv)
    cfg = Config.from_env()
    try:
        w, b = parse_config(a.config)
        if a.steps < 1:
            raise ValueError(f"--steps {a.steps}: expected an integer >= 1")
        every = a.every if a.every is not None else max(1, a.steps // 10)
        keep = ("conv1", "fc")
        s = QATSettings(lr=a.lr, step_lr=a.step_lr, optimizer="adam", distill=1.0, mixup=a.mixup, augment=a.augment,
                        keep_8bit=keep, w_bits=w, a_bits=b, learn=a.learn, minutes=a.minutes,
                        seed=cfg.seed if a.seed is None else a.seed)  # checked before the data are read
        splits = qdata.load(cfg)
        s = s.with_steps(a.steps, len(splits.train))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    fp, _ = models.baseline(cfg, splits)
    calib_x, _ = calib.sample(splits, cfg.calib_size, cfg.seed)
    ref = measure.Reference(fp, splits)
    init = gptq_init(fp, w, calib_x, keep)
    print(f"{a.config}: {s.max_steps} steps" + (f" at most, as many as {a.minutes:g} min of training hold," if a.minutes else "")
          + f" over {s.epochs} epochs of {len(splits.train)} training images; "
          f"agreement and KL on {ref.fp['n_fidelity']} held-out images every {every} steps", flush=True)

    def show(r):
        print(f"step {r['step']:>5}  train {r['train_seconds'] / 60:5.1f} min  agreement {r['agreement']:.2%}  "
              f"recovered {r['recovered']:+z.0%} of PTQ's loss  KL {r['kl']:.4f}  test accuracy {r['accuracy']:.2%}",
              flush=True)

    _, rows = run(fp, splits, s, ref, every, init_model=init, calib_x=calib_x, progress=False, on_row=show)
    if a.out:
        out = write_json({"config": a.config, "settings": {k: getattr(s, k) for k in (
            "epochs", "max_steps", "lr", "step_lr", "mixup", "augment", "distill", "seed", "keep_8bit",
            "learn", "minutes")},
            "rows": rows}, a.out)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
