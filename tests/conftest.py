"""Shared fixtures: the tiny settings tests train with, and one real sweep per test run.

Helper modules beside the tests (``drawn``, ``tampered``) import by name.
"""
from __future__ import annotations

import contextlib
import os

import pytest

TINY = dict(width=4, image_size=8, batch_size=8, steps=4, val_every=2, val_batches=1, stats_every=2,
            warmup_steps=0, device="cpu", threads=1)
"""Settings of a tiny TrainConfig (seconds to train on a CPU); tests override what they measure."""
TINY_STUDY = {**{name: TINY[name] for name in ("width", "batch_size", "steps", "val_every", "val_batches",
                                                "stats_every", "warmup_steps", "device")}, "seeds": [0]}
"""The depth-study notebook's parameters at the same tiny size (32x32 images, one seed)."""


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory):
    """One real sweep point, executed once per test run and shared read-only: the depth-study notebook at
    depth 8, both variants, :data:`TINY_STUDY`. Returns the runs folder and the study id."""
    from analysis import sweep

    root = tmp_path_factory.mktemp("tiny-sweep")
    points = sweep.expand_grid([8], ["both"], {name: [value] for name, value in TINY_STUDY.items()})
    results = sweep.run_sweep(points, runs_dir=root, workers=1, threads=1, progress=False)
    assert list(results["status"]) == ["complete"], results["error"].tolist()
    return root, results["study_id"].iloc[0]


@pytest.fixture
def file_events(monkeypatch):
    """A context manager that logs ``("fsync", path)`` and ``("replace", source)`` inside it, in order."""
    events: list[tuple[str, str]] = []
    fsync, replace = os.fsync, os.replace

    def logged_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def logged_replace(source, target):
        events.append(("replace", str(source)))
        replace(source, target)

    @contextlib.contextmanager
    def logging():
        with monkeypatch.context() as patch:
            patch.setattr(os, "fsync", logged_fsync)
            patch.setattr(os, "replace", logged_replace)
            yield events

    return logging
