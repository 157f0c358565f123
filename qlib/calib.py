"""Calibration: a seeded sample of the train split (never val or test), and hooks that collect
layer inputs and activation statistics on it."""
from __future__ import annotations

import torch

from . import data as qdata


def indices(n_train: int, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` distinct train-split indices drawn with ``seed`` (all of them if n >= n_train)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"calibration size n={n!r}: expected an integer >= 1")
    if n_train < 1:
        raise ValueError("the train split is empty: there is no calibration data")
    g = torch.Generator().manual_seed(10_007 + seed)
    return torch.randperm(n_train, generator=g)[:n].sort().values


def sample(splits: qdata.Splits, n: int = 256, seed: int = 0):
    """The calibration set: (normalised float images, train indices used)."""
    idx = indices(len(splits.train), n, seed)
    return qdata.to_float(splits.train.images[idx]), idx
