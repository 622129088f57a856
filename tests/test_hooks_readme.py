"""The README's examples of the monitor run as written: a plain loop, Lightning, Hugging Face, TensorBoard."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from readme import python_block  # noqa: E402


def run_example(heading: str) -> dict:
    namespace: dict = {}
    exec(compile(python_block(heading), f"README example: {heading}", "exec"), namespace)
    return namespace


def test_plain_loop_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    frame = run_example("A plain training loop")["frame"]
    assert sorted(frame.step.unique()) == [0, 2, 4]
    assert list((tmp_path / "runs" / "example" / "stats.parquet").glob("part-*.parquet"))


@pytest.mark.filterwarnings("ignore:.*LeafSpec")  # pytorch-lightning's own use of a deprecated torch API
def test_lightning_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    frame = run_example("Lightning")["frame"]
    assert sorted(frame.step.unique()) == [0, 2, 4]
    activations = frame[frame.kind == "activation"]
    assert set(activations.call) == {0, 1}
    assert set(frame.kind) >= {"activation", "activation_grad", "param_grad", "update", "block"}


def test_hugging_face_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = run_example("Hugging Face Trainer")
    frame = namespace["frame"]
    assert sorted(frame.step.unique()) == [0, 2, 4]
    assert set(frame[frame.kind == "activation"].call) == {0, 1}
    assert namespace["callback"].monitor is None


def test_tensorboard_example_exports_the_plain_loop_rows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    frame = run_example("A plain training loop")["frame"]
    assert run_example("TensorBoard")["written"] == len(frame)
    assert list((tmp_path / "runs" / "example" / "tensorboard").glob("events.out.tfevents.*"))
