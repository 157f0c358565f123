"""What the unit tests share: random ResNet-18s with non-trivial BN (``random_resnet``), and
the tiny ResNet-18 and random images of the QAT and LSQ tests (imported by test_qat.py and
test_lsq.py as fixtures)."""
import pytest
import torch
from torch import nn

from qlib import data as qdata
from qlib.models import resnet18

NUM_CLASSES = 5
FAST = dict(batch_size=16, max_steps=2, w_range="minmax")  # two optimizer steps of 16 images


# BN statistics and affine parameters: means' sd, variances' low end and width, biases' sd
# (scales are drawn from 0.5 to 1.5 in both)
SPREADS = {"wide": (0.5, 0.2, 2.0, 0.3), "narrow": (0.2, 0.5, 1.0, 0.1)}


def random_resnet(num_classes: int = 29, seed: int = 0, spread: str = "wide") -> nn.Module:
    """A random-init ResNet-18 (weights from ``torch.manual_seed(seed)``) whose BN layers carry
    non-trivial statistics, scales and biases (from their own generator, seeded ``seed``), so
    that folding BN and quantizing folded weights are really tested; in eval mode."""
    mean_sd, var_low, var_width, bias_sd = SPREADS[spread]
    torch.manual_seed(seed)
    m = resnet18(num_classes)
    g = torch.Generator().manual_seed(seed)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            n = mod.num_features
            mod.running_mean.copy_(torch.randn(n, generator=g) * mean_sd)
            mod.running_var.copy_(torch.rand(n, generator=g) * var_width + var_low)
            mod.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            mod.bias.data.copy_(torch.randn(n, generator=g) * bias_sd)
    return m.eval()


def x_batch(seed: int = 1) -> torch.Tensor:
    """Eight random 32x32 images (standard normal), from their own generator."""
    return torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||."""
    return float((a - b).norm() / b.norm())


def _split(n, seed):
    g = torch.Generator().manual_seed(seed)
    return qdata.Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                       torch.randint(0, NUM_CLASSES, (n,), generator=g),
                       [f"t{i // 4}" for i in range(n)], [str(i) for i in range(n)])


@pytest.fixture(scope="module")
def splits():
    return qdata.Splits(_split(32, 0), _split(16, 1), _split(16, 2),
                        [str(i) for i in range(NUM_CLASSES)], "random test images", "tracks")


@pytest.fixture(scope="module")
def fp():
    return random_resnet(NUM_CLASSES, spread="narrow")


@pytest.fixture(scope="module")
def x(splits):
    return qdata.to_float(splits.test.images[:8])


@pytest.fixture(scope="module")
def calib_x(splits):
    return qdata.to_float(splits.train.images)
