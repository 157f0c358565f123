"""The chapters' result rows: ``record`` writes one JSON row-set per chapter to
``book/results/<chapter>.json``; ``table`` reads them all back as one DataFrame.

In smoke mode rows go to ``<cache_dir>/smoke-results`` so a CI run never overwrites the
published (real-data) results. ``QLIB_RESULTS`` overrides the folder.
"""
from __future__ import annotations

import datetime
import json
import numbers
import os
import subprocess
from pathlib import Path

from . import atomic

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ("chapter", "method", "bits", "accuracy", "acc_lo", "acc_hi", "agreement", "kl",
           "size_mb", "ms_per_batch", "images_per_s", "settings", "data", "date", "commit")


def results_dir(cfg=None) -> Path:
    if os.environ.get("QLIB_RESULTS"):
        return Path(os.environ["QLIB_RESULTS"])
    if cfg is not None and cfg.smoke:
        return Path(cfg.cache_dir) / "smoke-results"
    return ROOT / "book" / "results"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10)
        # "+dirty": the code or the notebook sources differ from the commit (book/ holds the
        # outputs a build rewrites, README.md the results table chapter 08 writes)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)book", ":(exclude)README.md"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (out.stdout.strip() or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def record(chapter: str, rows: list, cfg=None, data: str | None = None) -> Path:
    """Write a chapter's rows (dicts with at least 'method') atomically; returns the file."""
    if not rows or not all(isinstance(r, dict) and "method" in r for r in rows):
        raise ValueError(f"rows: expected a non-empty list of dicts with a 'method' key, got {rows!r:.200}")
    stamp = {"chapter": chapter, "date": datetime.date.today().isoformat(), "commit": git_commit(),
             "data": data or "", "image_size": getattr(cfg, "image_size", None),
             "split": getattr(cfg, "split", None), "smoke": bool(getattr(cfg, "smoke", False))}
    out = [{**stamp, **r} for r in rows]
    return write_json(out, results_dir(cfg) / f"{chapter}.json")


def write_json(obj, path) -> Path:
    """JSON to a temporary file in the same folder, then renamed: never a partial file."""
    with atomic.replacing(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=_jsonable)
    return Path(path)


def _jsonable(v):
    if hasattr(v, "item"):
        return v.item()
    if hasattr(v, "tolist"):
        return v.tolist()
    if hasattr(v, "__dataclass_fields__"):
        import dataclasses
        return dataclasses.asdict(v)
    return str(v)


def load(chapter: str, cfg=None) -> list:
    path = results_dir(cfg) / f"{chapter}.json"
    return json.loads(path.read_text()) if path.is_file() else []


def chapter_files(folder) -> list:
    """The chapters' row files in a results folder (``NN_name.json``; not ``bench.json``), in
    chapter order."""
    return sorted(Path(folder).glob("[0-9][0-9]_*.json"))


def table(cfg=None):
    """Every recorded row of every chapter as a pandas DataFrame (one row per variant)."""
    import pandas as pd

    rows = []
    for p in chapter_files(results_dir(cfg)):
        rows.extend(json.loads(p.read_text()))
    df = pd.DataFrame(rows)
    return df


def variant_path(cfg, name: str, ext: str = ".safetensors") -> Path:
    """Where a chapter saves the model file of a variant that the benchmark (``python -m
    qlib.bench``) and the results chapter measure: ``<cache_dir>/variants/<name><ext>``.
    Packed low-bit models use ``.safetensors`` (qlib.export), int8-engine models ``.int8.pt``."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"variant name={name!r}: expected a plain file name")
    d = Path(cfg.cache_dir) / "variants"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{name}{ext}"


# The seed paper's Table 1, as published ("Optimizing Image Classifiers with Advanced LLM
# Quantization Techniques", Brown, Krishnan, Ghosh, Yang). Its own figures, labelled as such
# wherever they are shown; nothing of ours is computed from them. Accuracy on its (leaky)
# test split at 224x224; size of its PyTorch model file; CPU time with an unstated protocol.
SEED_TABLE1 = [
    {"model": "Baseline (full precision)", "accuracy": 99.85, "size_mb": 44.1, "cpu_time_s": 2.143},
    {"model": "QAT", "accuracy": 99.63, "size_mb": 11.4, "cpu_time_s": 2.056},
    {"model": "GPTQ", "accuracy": 63.2, "size_mb": 11.4, "cpu_time_s": 2.014},
    {"model": "AWQ", "accuracy": 75.5, "size_mb": 11.4, "cpu_time_s": 1.964},
    {"model": "SmoothQuant", "accuracy": 99.87, "size_mb": 42.67, "cpu_time_s": 0.512},
]


def span(values, fmt: str = "{:.1f}", sep: str = "-") -> str:
    """A range of numbers as the book's prose shows it: ``fmt`` of the smallest and the largest
    value joined by ``sep`` ("4.1-4.3", "-0.33 to -0.13"), or one value where both ends print
    alike ("4.7", not "4.7-4.7"). A value that rounds to zero prints without a minus sign
    ("+0%", "0 images"), as Python's "z" format option does for one number ("{:+z.0%}")."""
    values = list(values)
    if not values:
        raise ValueError("span: got no values; expected at least one number")

    def show(v):  # negative zero: fmt prints v exactly as it prints -0.0, text around the number included
        text = fmt.format(v)
        if isinstance(v, numbers.Integral):  # an integer has no negative zero
            return text
        return fmt.format(0.0) if text == fmt.format(-0.0) else text

    lo, hi = show(min(values)), show(max(values))
    return lo if lo == hi else lo + sep + hi
