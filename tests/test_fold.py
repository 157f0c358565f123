"""qlib.fold: the folded scales leave the float function unchanged, in every folding case."""
import pytest
import torch

from qlib import fold, quant
from tiny import random_resnet, rel_err, x_batch

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: 2 shared cores, threads only add contention at these sizes


def random_scales(groups, seed=2):
    g = torch.Generator().manual_seed(seed)
    return {gr.key: torch.exp(torch.randn(gr.channels, generator=g)) for gr in groups}


def test_folding_graph_table():
    m = random_resnet()
    bn, shared = fold.scalable_layers(m, "bn"), fold.scalable_layers(m, "shared")
    assert len(bn) == 8 and len(shared) == 12
    consumers = [c for g in shared for c in g.consumers]
    assert len(consumers) == len(set(consumers)) == 20  # every conv but the stem, and fc
    assert fold.unscaled_layers(m, "shared") == ["conv1"]
    assert {"fc", "layer2.0.downsample.0", "layer1.0.conv1"} <= set(fold.unscaled_layers(m, "bn"))
    with pytest.raises(ValueError, match="mode='x'"):
        fold.scalable_layers(m, "x")


@pytest.mark.parametrize("which", ["each", "bn", "shared"])
@pytest.mark.parametrize("bn_folded", [False, True])
def test_outputs_unchanged(which, bn_folded):
    m = random_resnet()
    if bn_folded:
        m = quant.fold_batchnorm(m)
    x = x_batch()
    with torch.no_grad():
        ref = m(x)
    groups = fold.scalable_layers(m, "shared" if which != "bn" else "bn")
    cases = [[g] for g in groups] if which == "each" else [groups]
    for i, case in enumerate(cases):
        scales = random_scales(case, seed=10 + i)
        m2 = fold.apply_scales(m, scales)
        with torch.no_grad():
            out = m2(x)
        assert rel_err(out, ref) <= 1e-4, case[0].key
        # the consumers really changed (not a no-op) and the input model is untouched
        c = case[0].consumers[0]
        assert not torch.allclose(m2.get_submodule(c).weight, m.get_submodule(c).weight)
    with torch.no_grad():
        assert torch.equal(m(x), ref)


def test_bad_scales_rejected():
    m = random_resnet()
    with pytest.raises(ValueError, match="unknown group"):
        fold.apply_scales(m, {"nope": torch.ones(3)})
    with pytest.raises(ValueError, match="> 0"):
        fold.apply_scales(m, {"layer1.0.conv2": -torch.ones(64)})
    with pytest.raises(ValueError, match="64 values"):
        fold.apply_scales(m, {"layer1.0.conv2": torch.ones(63)})
