"""``python -m qlib.bench``: every saved variant timed in one process, under one protocol.

The chapters save the model files of their variants under ``<cache_dir>/variants/``
(``qlib.results.variant_path``): ``NAME.safetensors`` is a packed low-bit (or FP32) file
written by ``qlib.export`` and runs as a float model; ``NAME.int8.pt`` runs on PyTorch's int8
engine. A variant with both (W4A8: 4-bit storage, int8 execution) is stored as the first and
executed as the second; both sizes are reported.

Rounds are interleaved (A B C ... A B C ...), so drift of the machine (thermal, other load)
hits every variant alike; throughput is reported as a ratio to FP32 measured in the same run.
In each round a variant runs a block of batches back to back (``measure.latencies``): the
first is timed "cold" (the other variants ran since, and together they outgrow the CPU's
cache), the others "warm", as a model serving alone runs; both are reported.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from . import measure
from .models import machine
from .config import Config


def discover(folder: Path) -> dict:
    """{variant name: {"packed": path or None, "int8": path or None}}"""
    found = {}
    for p in sorted(folder.glob("*.safetensors")):
        found.setdefault(p.name[: -len(".safetensors")], {})["packed"] = p
    for p in sorted(folder.glob("*.int8.pt")):
        found.setdefault(p.name[: -len(".int8.pt")], {})["int8"] = p
    return found


def missing(folder: Path, results_folder: Path) -> dict:
    """The variants the chapters' results in ``results_folder`` name (their ``variant_file``)
    that have no saved file in ``folder``: ``{variant: [chapters that recorded it]}``. Their
    files live in the cache, not in the repository: a new checkout has the results but not
    the files until the chapters run again."""
    import json

    from .results import chapter_files

    have = set(discover(Path(folder)))
    named: dict = {}
    for p in chapter_files(results_folder):
        for row in json.loads(p.read_text()):
            v = row.get("variant_file") if isinstance(row, dict) else None
            if v and v not in have:
                named.setdefault(v, [])
                if p.stem not in named[v]:
                    named[v].append(p.stem)
    return named


def missing_after(folder: Path, results_folder: Path, chapters) -> dict:
    """The variants ``missing`` from ``folder`` that running ``chapters`` (two-digit numbers:
    ``["07", "08"]`` or ``"07 08"``) will not save: those no chapter among them recorded. This is
    what ``make book CHAPTERS=...`` checks before it runs chapter 08, which times the saved files."""
    chapters = chapters.split() if isinstance(chapters, str) else list(chapters)
    bad = [c for c in chapters if not (isinstance(c, str) and len(c) == 2 and c.isdigit())]
    if bad:
        raise ValueError(f"chapters={chapters!r}: {bad} are not two-digit chapter numbers (expected e.g. '07 08')")
    return {v: chs for v, chs in missing(folder, results_folder).items() if not any(c[:2] in chapters for c in chs)}


def describe_missing(absent: dict, code: bool = False) -> str:
    """``missing``'s answer as a reader reads it: ``variant (chapter/chapter), ...``; ``code``
    sets the variant names in Markdown code."""
    return ", ".join(f"{f'`{v}`' if code else v} ({'/'.join(chs)})" for v, chs in absent.items())


def load_runnable(files: dict):
    """The model that executes a variant: the int8 engine model if there is one."""
    if files.get("int8"):
        from . import int8

        return int8.load(files["int8"]), "int8 engine"
    from . import export

    return export.load(files["packed"]).eval(), "float32"


def cache_mb(level: int = 3):
    """The size of the CPU's level-``level`` cache in MB (Linux sysfs), or None if unknown."""
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for d in sorted(base.glob("index*")):
        try:
            if int((d / "level").read_text()) == level:
                size = (d / "size").read_text().strip()
                mult = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}.get(size[-1:], 1)
                return int(size.rstrip("KMG")) * mult / 1e6
        except (OSError, ValueError):
            continue
    return None


def run(folder, batch_size: int = 64, threads: int = 2, image_size: int = 64, rounds: int = 15,
        warmup: int = 3, progress: bool = True, block: int = 4) -> dict:
    """Time every variant found in ``folder`` (``measure.latencies``: interleaved rounds of
    ``block`` batches per variant); returns the table as data: per variant the warm median
    (``ms_per_batch``, ``speedup_vs_fp32``), the cold one (``ms_cold``, ``speedup_cold``; with
    ``block`` = 1 every batch is both) and the bytes its tensors hold in memory."""
    for name, v in (("batch_size", batch_size), ("threads", threads), ("rounds", rounds), ("image_size", image_size),
                    ("block", block)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r}: expected an integer >= 1")
    folder = Path(folder)
    variants = discover(folder)
    if not variants:
        raise ValueError(f"no saved variant in {folder}: run the chapters first (make book)")
    models = {name: load_runnable(files) for name, files in variants.items()}
    stats = measure.latencies({name: m for name, (m, _) in models.items()}, image_size, batch_size,
                              threads, warmup, runs=rounds, progress=progress, block=block)
    rows = []
    fp = stats.get("fp32")
    for name, (m, engine) in models.items():
        st, files = stats[name], variants[name]
        stored = files.get("packed") or files.get("int8")
        rows.append({
            "variant": name, "engine": engine,
            "size_mb": os.path.getsize(stored) / 1e6,
            "int8_file_mb": os.path.getsize(files["int8"]) / 1e6 if files.get("int8") else None,
            "memory_mb": measure.memory_mb(m),
            # by name: torch.ao's quantized BatchNorm2d is not a subclass of nn.BatchNorm2d
            "bn_folded": not any(type(mod).__name__.startswith("BatchNorm") for mod in m.modules()),
            **{k: st[k] for k in ("ms_per_batch", "ms_min", "ms_max", "spread", "images_per_s")},
            "ms_cold": st["ms_cold"],
            "speedup_vs_fp32": (fp["ms_per_batch"] / st["ms_per_batch"]) if fp else None,
            "speedup_cold": (fp["ms_cold"] / st["ms_cold"]) if fp else None,
        })
    return {"batch_size": batch_size, "threads": threads, "image_size": image_size, "rounds": rounds, "block": block,
            "machine": machine(), "l3_cache_mb": cache_mb(3),  # machine() names the PyTorch version
            "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}


def format_table(res: dict) -> str:
    lines = [f"{'variant':<22}{'engine':<13}{'size MB':>9}{'memory MB':>11}{'ms warm':>9}{'spread':>8}{'img/s':>8}"
             f"{'x FP32':>8}{'ms cold':>9}{'x FP32':>8}"]
    for r in sorted(res["rows"], key=lambda r: -r["size_mb"]):
        sp = f"{r['speedup_vs_fp32']:.2f}" if r["speedup_vs_fp32"] else "-"
        spc = f"{r['speedup_cold']:.2f}" if r["speedup_cold"] else "-"
        lines.append(f"{r['variant']:<22}{r['engine']:<13}{r['size_mb']:>9.2f}{r['memory_mb']:>11.1f}{r['ms_per_batch']:>9.1f}"
                     f"{r['spread']:>8.2f}{r['images_per_s']:>8.0f}{sp:>8}{r['ms_cold']:>9.1f}{spc:>8}")
    total = sum(r["memory_mb"] for r in res["rows"])
    l3 = res.get("l3_cache_mb")
    lines.append(f"warm: batches 2-{res['block']} of each block; cold: the first, after the other variants "
                 f"({total:.0f} MB of tensors in all" + (f"; L3 cache {l3:.0f} MB)" if l3 else ")"))
    return "\n".join(lines)


def main(argv=None) -> int:
    cfg = Config.from_env()
    ap = argparse.ArgumentParser(prog="python -m qlib.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", default=str(Path(cfg.cache_dir) / "variants"), help="folder of saved variants")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=cfg.image_size)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--block", type=int, default=4, help="batches per variant per round: the first cold, the rest warm")
    ap.add_argument("--out", default=None, help="JSON output (default: book/results/bench.json, smoke: cache)")
    ap.add_argument("--check", metavar="CHAPTERS", default=None,
                    help="time nothing: exit 1, naming them, if variants the results record have no file and the "
                         "chapters named (\"07 08\") will not save them (make book CHAPTERS=... runs this before chapter 08)")
    a = ap.parse_args(argv)
    if a.check is not None:
        return _check(Path(a.variants), cfg, a.check)
    try:
        res = run(a.variants, a.batch_size, a.threads, a.image_size, a.rounds, block=a.block)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from .results import results_dir, write_json

    recorded = results_dir(cfg)
    absent = missing(Path(a.variants), recorded)
    if absent:
        print(f"note: {len(absent)} variant(s) recorded in {recorded} have no file in {a.variants} "
              f"and are not timed: {describe_missing(absent)}. Run those chapters (make book) to save them.", file=sys.stderr)
    print(format_table(res))

    out = write_json(res, Path(a.out) if a.out else recorded / "bench.json")
    print(f"wrote {out}")
    return 0


def _check(folder: Path, cfg, chapters: str) -> int:
    from .results import results_dir

    try:
        absent = missing_after(folder, results_dir(cfg), chapters)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not absent:
        return 0
    need = sorted({c[:2] for chs in absent.values() for c in chs} | set(chapters.split()))
    print(f"!! chapter 08 times the variant files the chapters save in {folder}, and {len(absent)} that the results "
          f"record are not there: {describe_missing(absent)}. Run without them, it would leave their rows without a "
          f"speed-up in the book and in the README's table. Run their chapters too: make book CHAPTERS=\"{' '.join(need)}\" "
          f"(or set MISSING_OK=1 to run chapter 08 anyway).", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
