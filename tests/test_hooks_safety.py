"""Monitor safety: hooks always removed, no tensors kept alive, bounded memory, readable parts."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import time
import weakref
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from analysis.hooks import Monitor, read_stats
from analysis.models import build_model

ROOT = Path(__file__).resolve().parents[1]


def assert_no_hooks(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    for name, module in model.named_modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                     "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs"):
            assert not getattr(module, attr), (name, attr)
    assert not optimizer._optimizer_step_pre_hooks and not optimizer._optimizer_step_post_hooks


def make(depth: int = 8):
    torch.manual_seed(0)
    model = build_model(depth)
    return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def step(model, optimizer, x):
    optimizer.zero_grad()
    model(x).logsumexp(1).mean().backward()
    optimizer.step()


def test_hooks_removed_on_normal_exit():
    model, optimizer = make()
    x = torch.randn(2, 3, 32, 32)
    with Monitor(model, optimizer=optimizer, every=1) as monitor:
        assert model.fc._forward_hooks and optimizer._optimizer_step_pre_hooks
        step(model, optimizer, x)
    assert_no_hooks(model, optimizer)
    rows = len(monitor.frame())
    step(model, optimizer, x)
    assert len(monitor.frame()) == rows and monitor.current_step == 1


def test_hooks_removed_when_body_raises():
    model, optimizer = make()
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(RuntimeError, match="boom"):
        with Monitor(model, optimizer=optimizer, every=1) as monitor:
            model(x).sum().backward()  # a recorded step left unfinished
            raise RuntimeError("boom")
    assert_no_hooks(model, optimizer)
    state = monitor._state
    assert not state.recording and not state.tensor_handles and not state.outputs and not state.halves
    assert monitor.frame().empty


def test_tensor_hooks_removed_forward_inside_backward_after_exit():
    model, optimizer = make()
    x = torch.randn(2, 3, 32, 32)

    def forward_inside():
        with Monitor(model, optimizer=optimizer, every=1) as monitor:
            loss = model(x).sum()
        return loss, weakref.ref(monitor), len(monitor.frame())

    loss, monitor_ref, rows = forward_inside()
    gc.collect()
    # the graph is still alive, yet nothing in it refers to the monitor any more
    assert monitor_ref() is None
    loss.backward()
    assert rows == 0


def test_backward_after_exit_records_nothing():
    model, optimizer = make()
    x = torch.randn(2, 3, 32, 32)
    with Monitor(model, optimizer=optimizer, every=1) as monitor:
        loss = model(x).sum()
    loss.backward()
    optimizer.step()
    assert monitor.frame().empty
    state = monitor._state
    assert all(not batch.raws for batch in state.batches.values()) and not state.calls


def test_no_activation_or_gradient_kept_alive():
    model, optimizer = make()
    refs: list[weakref.ref] = []

    def keep_refs(module, args, output):
        refs.append(weakref.ref(output))
        if output.requires_grad:
            output.register_hook(lambda g: refs.append(weakref.ref(g)))

    handles = [m.register_forward_hook(keep_refs) for m in model.modules()]
    with Monitor(model, optimizer=optimizer, every=1) as monitor:
        for _ in range(2):
            step(model, optimizer, torch.randn(2, 3, 32, 32))
            gc.collect()
            assert refs and all(r() is None for r in refs), sum(r() is not None for r in refs)
            refs.clear()
        state = monitor._state
        assert not state.outputs and not state.grad_targets and not state.halves and not state.tensor_handles
    for handle in handles:
        handle.remove()


def test_live_tensor_count_does_not_grow():
    model, optimizer = make()
    x = torch.randn(2, 3, 32, 32)

    def live_tensors() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))

    with Monitor(model, optimizer=optimizer, every=1):
        step(model, optimizer, x)
        before = live_tensors()
        for _ in range(3):
            step(model, optimizer, x)
        assert live_tensors() == before


def small_setup(tmp_path: Path):
    """A two-layer MLP, its SGD optimizer, a batch and a statistics path under ``tmp_path``."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    return model, torch.optim.SGD(model.parameters(), lr=0.01), torch.randn(3, 4), tmp_path / "stats.parquet"


def test_buffer_bounded_with_path(tmp_path):
    model, optimizer, x, path = small_setup(tmp_path)
    with Monitor(model, optimizer=optimizer, every=1, path=path, flush_rows=200) as monitor:
        step(model, optimizer, x)
        per_step = len(monitor._rows)
        for _ in range(59):
            step(model, optimizer, x)
            assert len(monitor._rows) < 200 + per_step
            assert len(monitor._state.order) <= 4 and not monitor._tables
        parts = sorted(path.glob("part-*.parquet"))
        assert len(parts) >= 60 * per_step // (200 + per_step)
        frame = monitor.frame()  # flushed parts + pending rows
        assert len(frame) == 60 * per_step
    assert frame.step.nunique() == 60
    stored = read_stats(path)
    assert len(stored) == 60 * per_step
    pd.testing.assert_frame_equal(stored, frame)
    assert len(pd.read_parquet(path)) == len(stored)


def test_parts_written_atomically_and_temp_files_ignored(tmp_path):
    model = nn.Sequential(nn.Linear(4, 2))
    path = tmp_path / "stats"
    with Monitor(model, every=1, path=path, flush_rows=1) as monitor:
        model(torch.randn(2, 4))
        monitor.step()
    (path / ".part-99-000000.parquet.tmp").write_bytes(b"PAR1 half written")
    assert not list(path.glob("*.tmp"))[0].name.startswith("part-")
    assert len(read_stats(path)) == len(monitor.frame()) > 0
    assert len(pd.read_parquet(path)) == len(read_stats(path))


def test_read_stats_missing_and_empty(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_stats(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    assert read_stats(tmp_path / "empty").empty


def test_killed_run_leaves_readable_parts(tmp_path):
    path = tmp_path / "stats.parquet"
    script = textwrap.dedent(f"""
        import torch
        from torch import nn
        from analysis.hooks import Monitor
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        x = torch.randn(3, 4)
        with Monitor(model, optimizer=optimizer, every=1, path={str(path)!r}, flush_rows=50):
            while True:
                optimizer.zero_grad()
                model(x).sum().backward()
                optimizer.step()
    """)
    process = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while len(list(path.glob("part-*.parquet"))) < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    frame = read_stats(path)
    assert len(frame) >= 5 * 50 and frame.value.notna().all()
    assert not any(name.startswith("part-") and name.endswith(".tmp") for name in os.listdir(path))


def parts(path: Path) -> list[Path]:
    return sorted(path.glob("part-*.parquet"))


def test_parts_flushed_by_time_after_recorded_steps(tmp_path):
    model, optimizer, x, path = small_setup(tmp_path)
    with Monitor(model, optimizer=optimizer, every=2, path=path, flush_seconds=3600) as monitor:
        assert monitor.flush_seconds == 3600.0
        step(model, optimizer, x)  # step 0, recorded: under an hour since the monitor started
        per_step = len(monitor._rows)
        assert per_step and not parts(path)
        monitor._flushed_at -= 3600  # as if an hour had passed
        step(model, optimizer, x)  # step 1 is not recorded: nothing is checked
        assert not parts(path)
        step(model, optimizer, x)  # step 2, recorded: both pending steps are written as one part
        assert len(parts(path)) == 1 and not monitor._rows
        assert sorted(read_stats(path).step.unique()) == [0, 2] and len(read_stats(path)) == 2 * per_step
        step(model, optimizer, x)
        step(model, optimizer, x)  # step 4, recorded; the clock restarted at the last write
        assert len(parts(path)) == 1 and len(monitor._rows) == per_step
        monitor.flush()  # now, whatever the clock
        assert len(parts(path)) == 2 and not monitor._rows
        monitor.flush()  # nothing pending: no empty part
        assert len(parts(path)) == 2
    assert len(parts(path)) == 2
    pd.testing.assert_frame_equal(read_stats(path), monitor.frame())
    assert sorted(monitor.frame().step.unique()) == [0, 2, 4]


def test_flush_without_path_keeps_rows_in_memory():
    model = nn.Sequential(nn.Linear(4, 2))
    with Monitor(model, every=1) as monitor:
        model(torch.randn(2, 4))
        monitor.step()
        before = monitor.frame()
        monitor.flush()
        assert not monitor._rows and len(monitor._tables) == 1
        pd.testing.assert_frame_equal(monitor.frame(), before)


def test_parts_are_fsynced_before_the_rename_and_the_folder_after(tmp_path, file_events):
    path = tmp_path / "stats"
    model = nn.Sequential(nn.Linear(4, 2))
    with Monitor(model, every=1, path=path) as monitor:
        model(torch.randn(2, 4))
        monitor.step()
        with file_events() as events:
            monitor.flush()
    [part] = parts(path)
    temp = str(path / f".{part.name}.tmp")
    assert events == [("fsync", temp), ("replace", temp), ("fsync", str(path))]


def test_part_names_carry_the_rank_and_read_stats_merges_ranks(tmp_path, monkeypatch):
    from analysis.hooks import writer

    monkeypatch.setattr(writer.time, "time_ns", lambda: 123)  # two ranks' writers made at the same instant
    written = []
    for rank in (0, 1):
        rows = writer.Rows(rank)
        rows.extend(step=[5], module=["fc"], module_type=["Linear"], index=[0], call=[0], kind=["activation"],
                    stat=["rms"], value=[float(rank + 1)], param=[None])
        written.append(writer.PartWriter(tmp_path, rank).write(rows.table()).name)
    assert written == ["part-00000000000000000123-00000-000000.parquet",
                       "part-00000000000000000123-00001-000000.parquet"]
    frame = read_stats(tmp_path)
    assert frame["rank"].tolist() == [0, 1] and frame["value"].tolist() == [1.0, 2.0]


def test_parts_written_before_the_rank_column_read_as_rank_0(tmp_path):
    import pyarrow.parquet as pq

    from analysis.hooks import writer

    rows = writer.Rows()
    rows.extend(step=[1], module=["fc"], module_type=["Linear"], index=[0], call=[0], kind=["weight"],
                stat=["norm"], value=[2.0], param=["weight"])
    pq.write_table(rows.table().drop_columns(["rank"]), tmp_path / "part-0-000000.parquet")
    frame = read_stats(tmp_path)
    assert frame["rank"].dtype == "int64" and frame["rank"].tolist() == [0]
    assert frame["param"].tolist() == ["weight"] and frame["value"].tolist() == [2.0]
