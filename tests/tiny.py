"""The tiny ResNet-18 and random images that the QAT and LSQ tests share (imported by
test_qat.py and test_lsq.py as fixtures)."""
import pytest
import torch

from qlib import data as qdata
from qlib.models import resnet18

NUM_CLASSES = 5
FAST = dict(batch_size=16, max_steps=2, w_range="minmax")  # two optimizer steps of 16 images


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
    torch.manual_seed(0)
    m = resnet18(NUM_CLASSES)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
    return m.eval()


@pytest.fixture(scope="module")
def x(splits):
    return qdata.to_float(splits.test.images[:8])


@pytest.fixture(scope="module")
def calib_x(splits):
    return qdata.to_float(splits.train.images)
