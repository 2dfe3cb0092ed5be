import torch
from torch import nn

from dualcam_lib.feature_reuse import MemoizedBackbone


class CountingConv(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.rows = 0

    def forward(self, x):
        self.rows += x.shape[0]
        return self.conv(x)


def test_repeated_images_are_answered_from_memory_with_the_same_values():
    inner = CountingConv().eval()
    memo = MemoizedBackbone(inner, capacity=10)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        first = memo(x)
        assert inner.rows == 4 and torch.equal(first, inner.conv(x))
        # two seen images and one new one, in another order: only the new one runs
        mixed = torch.stack([x[2], torch.randn(3, 8, 8), x[0]])
        again = memo(mixed)
    assert inner.rows == 5 and memo.hits == 2 and memo.misses == 5
    assert torch.equal(again[0], first[2]) and torch.equal(again[2], first[0])
    assert torch.allclose(again[1], inner.conv(mixed[1:2])[0])


def test_oldest_entries_leave_first_and_clear_forgets():
    inner = CountingConv().eval()
    memo = MemoizedBackbone(inner, capacity=3)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        memo(x[:2])
        memo(x[2:])  # 4 stored for a moment, then x[0] leaves
        assert len(memo.store) == 3
        rows = inner.rows
        memo(x[1:2])
        assert inner.rows == rows  # still stored
        memo(x[0:1])
        assert inner.rows == rows + 1  # evicted, so run again
    memo.clear()
    assert len(memo.store) == 0 and memo.hits == memo.misses == 0


def test_a_caller_modifying_the_output_does_not_corrupt_the_store():
    memo = MemoizedBackbone(CountingConv().eval(), capacity=4)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        out = memo(x)
        reference = out.clone()
        out.zero_()
        assert torch.equal(memo(x), reference)


def test_gradient_inputs_and_zero_capacity_bypass_the_store():
    inner = CountingConv()
    memo = MemoizedBackbone(inner, capacity=4)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    memo(x).sum().backward()
    assert x.grad is not None and len(memo.store) == 0
    off = MemoizedBackbone(inner, capacity=0)
    with torch.no_grad():
        off(x.detach())
        off(x.detach())
    assert len(off.store) == 0 and inner.rows == 6
