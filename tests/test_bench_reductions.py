"""The reductions benchmark: its four timings per size and its table, on a small real run."""

from __future__ import annotations

import torch

from analysis.bench import reductions
from analysis.hooks import one_pass


def test_both_variants_are_timed_on_a_one_pass_sized_output():
    shape = (16, 8, 64, 64)
    assert torch.Size(shape).numel() >= one_pass.MIN_NUMEL
    us = reductions.time_calls(shape, calls=2, device=torch.device("cpu"), pool_bytes=1 << 20)
    assert sorted(us) == sorted(reductions.VARIANTS) and all(value > 0 for value in us.values())


def test_the_table_gives_each_size_and_ratio():
    us = {(True, False): 150.0, (False, False): 420.0, (True, True): 100.0, (False, True): 120.0}
    text = reductions.markdown([("cpu", (64, 16, 32, 32), us)], calls=40)
    assert "| cpu | 64x16x32x32 | 1,048,576 | 150 | 420 | 2.80 | 100 | 120 | 1.20 |" in text
    assert "median of 40 calls each" in text
