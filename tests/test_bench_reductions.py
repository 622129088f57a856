"""The reductions benchmark: its timings and table, on a small real run."""

from __future__ import annotations

import torch

from analysis.bench import reductions
from analysis.hooks import one_pass


def test_both_variants_are_timed_on_a_one_pass_sized_output():
    shape = (16, 4, 32, 32)
    assert torch.Size(shape).numel() >= one_pass.MIN_NUMEL
    fused, stock = reductions.time_calls(shape, calls=2, device=torch.device("cpu"), pool_bytes=1 << 20)
    assert fused > 0 and stock > 0


def test_the_table_gives_each_size_and_ratio():
    text = reductions.markdown([("cpu", (64, 16, 32, 32), 150.0, 420.0)], calls=40)
    assert "| cpu | 64x16x32x32 | 1,048,576 | 150 | 420 | 2.80 |" in text
    assert "median of 40 calls each" in text
