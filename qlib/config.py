"""The study's configuration: one frozen dataclass, built from notebook parameters and
``QLIB_*`` environment variables (parameters win over the environment)."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

SPLITS = ("tracks", "export")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16-mixed")
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = str(ROOT / ".cache" / "qlib")


def _env_bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"QLIB_SMOKE={value!r}: expected one of 1/0, true/false, yes/no")


class DataError(ValueError):
    """The configured data source cannot be read: a missing folder, a malformed export, labels
    out of range (raised by ``data`` and ``yolo``)."""


@dataclass(frozen=True)
class Config:
    """Everything that decides what data a chapter sees and how the baseline is made.

    data: "" or "synthetic" (the offline default), "gtsrb" (torchvision), or the path
        of a Roboflow YOLO export (the real data of the study).
    split: "tracks" (no GTSRB track in two splits) or "export" (the export's own folders).
    smoke: tiny synthetic run for CI (32x32, a few images per class, one epoch).
    precision: how the baseline trains: "fp32", or "bf16-mixed" (autocast to bfloat16, float32
        master weights; QLIB_PRECISION=bf16-mixed) — faster only where the CPU has bfloat16
        instructions (AVX512-BF16, AMX); on this study's 2-core machine it was 2.3x slower.
    """

    data: str = ""
    image_size: int = 64
    split: str = "tracks"
    seed: int = 0
    device: str = "auto"
    smoke: bool = False
    cache_dir: str = DEFAULT_CACHE
    crop: bool = True
    epochs: int = 15
    pretrained: bool = True
    calib_size: int = 256
    precision: str = "fp32"

    def __post_init__(self):
        if not isinstance(self.image_size, int) or self.image_size < 16:
            raise ValueError(f"image_size={self.image_size!r}: expected an integer >= 16")
        if self.split not in SPLITS:
            raise ValueError(f"split={self.split!r}: expected one of {SPLITS}")
        if self.device not in DEVICES:
            raise ValueError(f"device={self.device!r}: expected one of {DEVICES}")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs={self.epochs!r}: expected an integer >= 1")
        if not isinstance(self.calib_size, int) or self.calib_size < 1:
            raise ValueError(f"calib_size={self.calib_size!r}: expected an integer >= 1")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}: expected one of {PRECISIONS} (QLIB_PRECISION)")

    @classmethod
    def from_env(cls, **params) -> "Config":
        """Parameters given here (e.g. a notebook's parameters cell) override QLIB_* variables.

        A parameter passed as None or "" falls back to the environment, then the default.
        In smoke mode the data is synthetic, 32x32 and trained for one epoch, whatever else
        was asked, so that every chapter runs in seconds.
        """
        env = {
            "data": os.environ.get("QLIB_DATA"),
            "image_size": os.environ.get("QLIB_IMAGE_SIZE"),
            "split": os.environ.get("QLIB_SPLIT"),
            "seed": os.environ.get("QLIB_SEED"),
            "device": os.environ.get("QLIB_DEVICE"),
            "cache_dir": os.environ.get("QLIB_CACHE"),
            "epochs": os.environ.get("QLIB_EPOCHS"),
            "precision": os.environ.get("QLIB_PRECISION"),
        }
        smoke_env = os.environ.get("QLIB_SMOKE")
        kw = {}
        for f in dataclasses.fields(cls):
            v = params.pop(f.name, None)
            if v is None or v == "":
                v = env.get(f.name)
                if v is not None and v != "" and f.type in ("int", int):
                    try:
                        v = int(v)
                    except ValueError:
                        raise ValueError(f"QLIB_{f.name.upper()}={v!r}: expected an integer") from None
            if v is not None and (v != "" or f.name == "data"):
                kw[f.name] = v
        if params:
            raise ValueError(f"unknown Config parameter(s) {sorted(params)}: expected some of "
                             f"{[f.name for f in dataclasses.fields(cls)]}")
        smoke = bool(kw.get("smoke", False)) or (smoke_env is not None and _env_bool(smoke_env))
        if smoke:
            kw.update(smoke=True, data="synthetic", image_size=32, epochs=1, pretrained=False,
                      calib_size=min(int(kw.get("calib_size", 256)), 64))
        return cls(**kw)

    @property
    def torch_device(self):
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda': no CUDA device is available here; use 'auto' or 'cpu'")
        return torch.device(self.device)

    @property
    def source(self) -> str:
        """'synthetic', 'gtsrb' or 'yolo' (a path)."""
        d = (self.data or "").strip()
        if d in ("", "synthetic"):
            return "synthetic"
        if d.lower() == "gtsrb":
            return "gtsrb"
        return "yolo"
