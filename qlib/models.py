"""ResNet-18 factory, training, evaluation and the cached baseline."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

from . import atomic
from . import data as qdata
from .config import Config

ARCHS = ("resnet18",)
RECIPE = dict(version=3, batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True,
              label_smoothing=0.1, warmup_epochs=1, rotate_deg=10.0, scale=(0.85, 1.15),
              translate=0.1, brightness=0.25, contrast=0.25)


def mixed_precision(device="cpu", precision: str = "fp32") -> str:
    """The precision training runs in (``Config.precision``): "fp32", or "bf16-mixed" (autocast
    to bfloat16, float32 master weights). bfloat16 is not the default: it is faster only where
    the CPU has bfloat16 instructions (AVX512-BF16, AMX). oneDNN reports bfloat16 support on
    any AVX-512 CPU and emulates it there: on this study's 2-core Xeon (AVX-512, neither of
    those) a ResNet-18 training step at 64x64, batch 128, took 1.63 s in bf16-mixed against
    0.70 s in fp32. Part of the baseline's cache key, since it changes the weights."""
    if precision not in ("fp32", "bf16-mixed"):
        raise ValueError(f"precision={precision!r}: expected 'fp32' or 'bf16-mixed'")
    if precision == "bf16-mixed" and torch.device(device).type == "cpu":
        try:
            ok = torch.ops.mkldnn._is_mkldnn_bf16_supported()
        except (AttributeError, RuntimeError):
            ok = False
        if not ok:
            raise ValueError("precision='bf16-mixed': this CPU has no bfloat16 support in oneDNN; "
                             "use precision='fp32' (QLIB_PRECISION=fp32)")
    return precision


def resnet18(num_classes: int, pretrained: bool = False) -> torch.nn.Module:
    """torchvision's standard ResNet-18 with a new ``num_classes`` head.

    ``pretrained=True`` asks torchvision's weights API for the ImageNet weights; when they
    cannot be had (offline, no cached file) it prints one note and returns a random init.
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r}: expected an integer >= 2")
    weights = None
    if pretrained:
        weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
        try:
            # torch.hub writes 'Downloading: <url> to <local cache path>' to stdout before it
            # tries: keep that (and the progress bar) out of the book; the note below says it all
            with contextlib.redirect_stdout(io.StringIO()):
                model = torchvision.models.resnet18(weights=weights, progress=False)
        except Exception as e:  # offline: URLError / OSError / RuntimeError from the hub
            print(f"Note: ImageNet weights for ResNet-18 could not be loaded ({type(e).__name__}); "
                  "training from scratch instead.")
            model = torchvision.models.resnet18(weights=None)
            weights = None
    else:
        model = torchvision.models.resnet18(weights=None)
    model.fc = torch.nn.Linear(model.fc.in_features, num_classes)
    model.pretrained = weights is not None
    return model


def build(arch: str, num_classes: int) -> torch.nn.Module:
    """An untrained model of a named architecture (used to rebuild saved models)."""
    if arch not in ARCHS:
        raise ValueError(f"arch={arch!r}: expected one of {ARCHS}")
    return resnet18(num_classes, pretrained=False)


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------

def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Light per-image augmentation of a normalised batch: small rotation, scale and shift,
    brightness and contrast. No flips: left/right signs are different classes."""
    n = x.shape[0]
    r = RECIPE
    u = lambda lo, hi: torch.rand(n, generator=gen) * (hi - lo) + lo  # noqa: E731
    ang = u(-r["rotate_deg"], r["rotate_deg"]) * math.pi / 180
    s = 1.0 / u(*r["scale"])
    tx, ty = u(-r["translate"], r["translate"]) * 2, u(-r["translate"], r["translate"]) * 2
    theta = torch.stack([torch.stack([s * torch.cos(ang), -s * torch.sin(ang), tx], 1),
                         torch.stack([s * torch.sin(ang), s * torch.cos(ang), ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    b = u(-r["brightness"], r["brightness"]).view(n, 1, 1, 1)
    c = u(1 - r["contrast"], 1 + r["contrast"]).view(n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * c + mean + b


def cpuinfo(key: str) -> str | None:
    """The value of the first ``key : value`` line of Linux's ``/proc/cpuinfo`` (``"model name"``,
    ``"flags"``, ...); None where the file or the key is missing."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.split(":", 1)[0].strip() == key), None)
    except OSError:
        return None


def machine() -> dict:
    """What a CPU training's rounding depends on: the CPU, the kernels PyTorch dispatches to on it
    (``torch.backends.cpu.get_cpu_capability``: AVX2, AVX512, ...), the thread count and the
    PyTorch version. Training is bit-reproducible only where all of them match: one epoch of
    the baseline from the same seed ended at training loss 3.04 (AVX512 kernels, 2 threads),
    3.32 (AVX2 kernels forced) and 2.83 (one thread) on one machine."""
    return {"cpu": cpuinfo("model name") or "unknown", "kernels": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def describe_machine(m: dict) -> str:
    """One line for readers from a ``machine()`` record."""
    return f"{m['cpu']} · {m['kernels']} kernels · {m['threads']} threads · PyTorch {m['torch']}"


def train(model: torch.nn.Module, splits: qdata.Splits, cfg: Config, epochs: int | None = None,
          lr: float | None = None, progress: bool = True) -> dict:
    """SGD (Nesterov momentum, weight decay), linear warm-up then cosine decay, label smoothing,
    light augmentation; in ``cfg.precision`` (bfloat16 autocast and channels-last for
    "bf16-mixed", see ``mixed_precision``). Returns the curves as data: per epoch train loss/accuracy, val accuracy."""
    from tqdm.auto import tqdm

    epochs = cfg.epochs if epochs is None else epochs
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs={epochs!r}: expected an integer >= 1")
    r = RECIPE
    lr = r["lr"] if lr is None else lr
    device = cfg.torch_device
    precision = mixed_precision(device, cfg.precision)
    bf16 = precision == "bf16-mixed"
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    device_type = torch.device(device).type
    model.to(device, memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=r["momentum"],
                          weight_decay=r["weight_decay"], nesterov=r["nesterov"])
    steps_per_epoch = math.ceil(len(splits.train) / r["batch_size"])
    total = epochs * steps_per_epoch
    warm = min(r["warmup_epochs"] * steps_per_epoch, total // 4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: (k + 1) / warm if k < warm else 0.5 * (1 + math.cos(math.pi * (k - warm) / max(1, total - warm))))
    gen = torch.Generator().manual_seed(cfg.seed)
    hist = {"epoch": [], "train_loss": [], "train_acc": [], "val_acc": [], "lr": [], "seconds": []}
    bar = tqdm(total=total, desc="training", unit="batch", disable=not progress, mininterval=2)
    for ep in range(epochs):
        model.train()
        t0, loss_sum, correct, seen = time.time(), 0.0, 0, 0
        for x, y in qdata.batches(splits.train, r["batch_size"], shuffle=True, seed=cfg.seed * 1000 + ep):
            x, y = augment(x, gen).to(device, memory_format=fmt), y.to(device)
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
                out = model(x)
            loss = F.cross_entropy(out.float(), y, label_smoothing=r["label_smoothing"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(y)
            correct += (out.argmax(1) == y).sum().item()
            seen += len(y)
            bar.update(1)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):  # a curve only
            val = evaluate(model, splits.val)["accuracy"]
        hist["epoch"].append(ep + 1)
        hist["train_loss"].append(loss_sum / seen)
        hist["train_acc"].append(correct / seen)
        hist["val_acc"].append(val)
        hist["lr"].append(opt.param_groups[0]["lr"])
        hist["seconds"].append(time.time() - t0)
        bar.set_postfix(epoch=ep + 1, loss=f"{loss_sum / seen:.3f}", val=f"{val:.3f}")
    bar.close()
    model.to(memory_format=torch.contiguous_format).eval()  # as a loaded checkpoint: same speed
    hist["precision"] = precision
    hist["machine"] = machine()  # a retraining elsewhere gives other weights: see machine()
    return hist


@torch.inference_mode()
def predict(model: torch.nn.Module, split: qdata.Split, batch_size: int = 64) -> torch.Tensor:
    """Logits of a model on a split (float32, CPU)."""
    model.eval()
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    outs = [model(x.to(dev)).float().cpu() for x, _ in qdata.batches(split, batch_size)]
    return torch.cat(outs) if outs else torch.empty(0)


def evaluate(model: torch.nn.Module, split: qdata.Split, num_classes: int | None = None,
             batch_size: int = 64) -> dict:
    """Top-1 accuracy, per-class accuracy, confusion matrix (rows: true class) and logits."""
    logits = predict(model, split, batch_size)
    k = num_classes or logits.shape[1]
    pred = logits.argmax(1)
    y = split.labels
    conf = torch.bincount(y * k + pred, minlength=k * k).view(k, k)
    per_class = conf.diag().float() / conf.sum(1).clamp(min=1).float()
    return {"accuracy": (pred == y).float().mean().item(), "per_class": per_class,
            "confusion": conf, "logits": logits}


# --------------------------------------------------------------------------------------
# The cached baseline
# --------------------------------------------------------------------------------------

def baseline_key(cfg: Config, arch: str = "resnet18") -> dict:
    ident, _ = qdata._cache_key(cfg)
    return {"data": ident, "split": cfg.split, "seed": cfg.seed, "epochs": cfg.epochs,
            "arch": arch, "pretrained": cfg.pretrained, "recipe": RECIPE,
            "precision": mixed_precision(cfg.torch_device, cfg.precision)}


def baseline_path(cfg: Config, arch: str = "resnet18") -> Path:
    key = baseline_key(cfg, arch)
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(cfg.cache_dir) / f"baseline-{arch}-{digest}.pt"


def baseline(cfg: Config, splits: qdata.Splits | None = None, arch: str = "resnet18",
             progress: bool = True):
    """The FP32 baseline: trained once, then loaded from the cache.

    Returns ``(model, history)``. The checkpoint is keyed by a hash of everything that affects
    it (data, split, image size, seed, epochs, architecture, recipe) and written atomically; a
    checkpoint that is unreadable or made for another configuration is reported and retrained.
    """
    if arch not in ARCHS:
        raise ValueError(f"arch={arch!r}: expected one of {ARCHS}")
    splits = splits or qdata.load(cfg)
    key = json.loads(json.dumps(baseline_key(cfg, arch), default=str))
    path = baseline_path(cfg, arch)
    if path.is_file():
        reason = None
        try:
            ck = torch.load(path, map_location="cpu", weights_only=False)
            if ck.get("key") != key:
                reason = "it was made for another configuration"
            else:
                model = resnet18(splits.num_classes, pretrained=False)
                model.load_state_dict(ck["state_dict"])
                model.pretrained = ck["pretrained"]
                return model.eval(), ck["history"]
        except Exception as e:
            reason = f"it is unreadable ({type(e).__name__}: {e})"
        print(f"Baseline checkpoint {path.name} not used: {reason}; retraining.")
    torch.manual_seed(cfg.seed)
    model = resnet18(splits.num_classes, pretrained=cfg.pretrained)
    t0 = time.time()
    hist = train(model, splits, cfg, progress=progress)
    hist["train_seconds"] = time.time() - t0
    model.cpu().eval()
    atomic.torch_save({"key": key, "state_dict": model.state_dict(), "history": hist,
                       "pretrained": model.pretrained}, path)
    return model, hist
