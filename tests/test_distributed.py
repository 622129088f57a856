"""Distributed training: a real two-process torchrun on the CPU, and the Monitor under DistributedDataParallel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist
from torch import nn

from analysis.config import TrainConfig
from analysis.hooks import Monitor, read_stats
from analysis.store import list_runs
from analysis.train import train

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = dict(depth=8, width=4, image_size=8, batch_size=8, steps=4, val_every=2, val_batches=1, stats_every=1,
                norm="none", device="cpu", threads=1)
KEY = ["step", "module", "call", "kind", "stat", "param"]


@pytest.fixture(scope="module")
def torchrun_run(tmp_path_factory):
    """One run trained by ``torchrun --nproc_per_node 2 -m analysis.train`` with gloo on the CPU."""
    root = tmp_path_factory.mktemp("runs")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "analysis.train", "--root", str(root), *(f"--set={k}={v}" for k, v in SETTINGS.items())]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return root, finished.stdout


def test_torchrun_writes_one_complete_run_with_both_ranks_statistics(torchrun_run):
    root, stdout = torchrun_run
    config = TrainConfig(**SETTINGS)
    assert [p.name for p in root.iterdir()] == [config.run_id()]
    assert stdout.strip().splitlines() == [f"{config.run_id()}: complete: {root / config.run_id()}"]  # rank 0 only
    record = json.loads((root / config.run_id() / "config.json").read_text())
    assert record["status"] == "complete" and record["world_size"] == 2 and record["steps_completed"] == 4
    assert (root / config.run_id() / "model.pt").is_file()
    assert list_runs(root)["world_size"].tolist() == [2]

    stats = read_stats(root / config.run_id() / "stats.parquet")
    assert sorted(stats["rank"].unique()) == [0, 1]
    assert not stats.duplicated([*KEY, "rank"]).any()
    assert not stats["module"].str.startswith("module.").any()
    per_rank = stats.groupby(["rank", "step"]).size().unstack("rank")
    assert list(per_rank.index) == [1, 2, 3, 4] and (per_rank[0] == per_rank[1]).all()

    def by_rank(kind: str, stat: str) -> pd.DataFrame:
        rows = stats[(stats["kind"] == kind) & (stats["stat"] == stat)].fillna({"param": ""})
        return rows.pivot_table(index=KEY, columns="rank", values="value")

    # parameter gradients are read after DDP's all-reduce: the same on both ranks, at every step
    grads = by_rank("param_grad", "norm")
    assert len(grads) == 4 * len(grads.xs(1, level="step")) > 0
    pd.testing.assert_series_equal(grads[0], grads[1], check_names=False, rtol=0, atol=0)
    pd.testing.assert_series_equal(by_rank("global", "grad_norm")[0], by_rank("global", "grad_norm")[1],
                                   check_names=False, rtol=0, atol=0)
    # activations describe each rank's own share of the batch
    activations = by_rank("activation", "rms")
    assert len(activations) > 0 and (activations[0] != activations[1]).all()


def test_torchrun_run_matches_one_process_on_the_whole_batch(torchrun_run, tmp_path):
    """batch_size is the global batch: two half-batch gradients averaged are the full-batch gradient."""
    root, _ = torchrun_run
    config = TrainConfig(**SETTINGS)
    single = train(config, root=tmp_path, progress=False)
    distributed = pd.read_parquet(root / config.run_id() / "metrics.parquet")
    train_rows = single.metrics[single.metrics["metric"] != "time"].reset_index(drop=True)
    pd.testing.assert_frame_equal(distributed[distributed["metric"] != "time"].reset_index(drop=True),
                                  train_rows, rtol=1e-5)
    ours = read_stats(single.path / "stats.parquet").query("kind == 'param_grad' and stat == 'norm'")
    theirs = read_stats(root / config.run_id() / "stats.parquet").query(
        "kind == 'param_grad' and stat == 'norm' and rank == 0")
    pd.testing.assert_series_equal(theirs.set_index(KEY)["value"], ours.set_index(KEY)["value"], rtol=1e-5)


@pytest.fixture
def one_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_monitor_looks_through_ddp_and_names_modules_as_unwrapped(one_process_group):
    def run(wrap: bool) -> pd.DataFrame:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        trained = nn.parallel.DistributedDataParallel(model) if wrap else model
        torch.manual_seed(1)
        with Monitor(trained, optimizer=optimizer, every=1) as monitor:
            for _ in range(2):
                optimizer.zero_grad()
                trained(torch.randn(3, 4)).square().mean().backward()
                optimizer.step()
        return monitor.frame()

    wrapped, plain = run(wrap=True), run(wrap=False)
    assert set(wrapped["module"]) == {"", "0", "1", "2"} and (wrapped["rank"] == 0).all()
    pd.testing.assert_frame_equal(wrapped, plain)
