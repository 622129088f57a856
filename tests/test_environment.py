"""environment.yml (conda cannot run here) must describe the same environment as pyproject.toml."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    """Both install what `.[all,test]` does: the core, every extra but the benchmark peers, and the test tools."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = project["dependencies"] + [r for name, reqs in extras.items() if name not in ("all", "bench")
                                        for r in reqs]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert any(_name(d) == "python" for d in conda) and "pip" in conda
    assert "-e .[all,test]" in pip
    listed = [p for p in pip if not p.startswith("-e")]
    assert sorted(listed) == sorted(wanted)
    python_floor = project["requires-python"].removeprefix(">=")
    assert f"python>={python_floor}" in conda


def test_all_is_every_extra_but_test_and_bench():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    others = [name for name in project["optional-dependencies"] if name not in ("all", "test", "bench")]
    assert others == ["report", "data", "cluster", "integrations"]
    assert project["optional-dependencies"]["all"] == [f"{project['name']}[{','.join(others)}]"]


def test_torch_ranges_admit_the_installed_builds():
    from importlib.metadata import version

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in map(Requirement, project["dependencies"]):
        if requirement.name in ("torch", "torchvision"):
            installed = version(requirement.name).split("+")[0]
            assert requirement.specifier.contains(installed), (requirement, installed)
