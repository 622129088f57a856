"""The wheel: core requirements only, every extra, the console script and the notebooks; installed into a fresh
virtual environment that holds the core dependencies and nothing optional, it runs the README's plain-loop example
and names the extra that each optional feature needs."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import wheel_check  # noqa: E402

CORE = ["numpy>=1.24", "pandas>=2.0", "pyarrow>=14", "pyyaml>=6.0", "torch>=2.1", "torchvision>=0.16", "tqdm>=4.66"]


def test_wheel_metadata_and_a_core_only_install(tmp_path):
    wheel = wheel_check.build_wheel(tmp_path / "dist")
    found = wheel_check.check_metadata(wheel)
    assert wheel.name.startswith("trainability_lab-")
    assert found["core"] == CORE
    assert found["extras"] == ["all", "bench", "cluster", "data", "integrations", "report", "test"]
    assert found["console_scripts"] == [("trainability-lab", "analysis.__main__:main")]
    assert [Path(n).name for n in found["notebooks"]] == [
        "architecture_costs.ipynb", "depth_study.ipynb", "init_study.ipynb", "lesion_study.ipynb", "summary.ipynb"]

    python = wheel_check.fresh_environment(tmp_path / "venv", wheel, core_from_here=True)
    (tmp_path / "work").mkdir()
    inside = wheel_check.check_installed(python, tmp_path / "work")
    assert inside["optional_installed"] == []
    assert inside["errors"]["digits"] == (
        "the 'digits' dataset needs the 'data' extra, which is not installed: pip install 'trainability-lab[data]'")
    assert inside["script"]["returncode"] == 2  # a usage error: one line naming the extra
    assert inside["script"]["stderr"] == [
        "python -m analysis: the command line (it runs notebooks and compiles reports) needs the 'report' extra "
        "(jupyter, ipykernel, nbconvert, nbformat, papermill, matplotlib, seaborn, bleach missing): "
        "pip install 'trainability-lab[report]'"]
