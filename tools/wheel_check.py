"""Build the wheel of this working tree and check it in a fresh virtual environment with the core dependencies only.

    python tools/wheel_check.py                    # core dependencies from the package index (`make wheel-check`)
    python tools/wheel_check.py --core-from-here   # this environment's core packages, linked (offline, seconds)

The wheel is built from a clean copy of the tree (the files git tracks or would
track). Its metadata must list exactly the core requirements of pyproject.toml
without an extra, every extra, the console script, the notebooks and the report templates. Installed
into a new virtual environment that has no optional package, from a temporary
folder (not the source tree), the package must import `analysis.hooks`, run the
README's plain-loop example, find its notebooks, and name the extra to install
where the command line or an optional feature lacks one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme import python_block  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PLAIN_LOOP = "A plain training loop"
SCRIPT = "trainability-lab"

INSIDE = r'''
import importlib.util, json
import torch
import analysis, analysis.hooks, analysis.models, analysis.config, analysis.data, analysis.train
from analysis.extras import EXTRAS, MissingExtra
from analysis.studies import NOTEBOOKS_DIR

def error(call):
    try:
        call()
    except MissingExtra as exc:
        return str(exc)
    return None

def load(name):
    return lambda: __import__(name)

print(json.dumps({
    "analysis": analysis.__file__,
    "torch": torch.__version__,
    "notebooks": sorted(str(p) for p in NOTEBOOKS_DIR.glob("*.ipynb")),
    "optional_installed": sorted(m for modules in EXTRAS.values() for m in modules if importlib.util.find_spec(m)),
    "errors": {
        "analysis.hooks.lightning": error(load("analysis.hooks.lightning")),
        "analysis.hooks.transformers": error(load("analysis.hooks.transformers")),
        "to_tensorboard": error(lambda: __import__("analysis.hooks.export").hooks.export.to_tensorboard(
            analysis.hooks.read_stats("runs/example/stats.parquet"), "runs/tensorboard")),
        "digits": error(lambda: analysis.data.load_data("digits")),
        "python -m analysis": error(load("analysis.default_study")),
    },
}))
'''
"""What runs inside the fresh environment after the README example; prints what it found as JSON."""


class CheckFailed(Exception):
    """The wheel or its installation is not what it should be."""


def run(command: list[str], **options) -> subprocess.CompletedProcess:
    """Run `command`; on failure raise CheckFailed with its output."""
    result = subprocess.run(command, capture_output=True, text=True, **options)
    if result.returncode:
        raise CheckFailed(f"{' '.join(map(str, command))} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


def clean_copy(dest: Path, root: Path = ROOT) -> Path:
    """Copy the files git tracks or would track (not ignored) to `dest`, symbolic links as links."""
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root).stdout
    for name in sorted(set(filter(None, listed.split("\0")))):
        source, target = root / name, dest / name
        if not os.path.lexists(source):  # deleted in the working tree
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, target)
    return dest


def build_wheel(out: Path, root: Path = ROOT) -> Path:
    """The wheel of a clean copy of `root`, built with this environment's setuptools, in `out`."""
    with tempfile.TemporaryDirectory() as temp:
        source = clean_copy(Path(temp) / "source", root)
        run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
             "--wheel-dir", str(out), str(source)])
    wheels = sorted(out.glob("*.whl"))
    if len(wheels) != 1:
        raise CheckFailed(f"expected one wheel in {out}, found {[w.name for w in wheels]}")
    return wheels[0]


def check_metadata(wheel: Path, root: Path = ROOT) -> dict:
    """Check the wheel against pyproject.toml; return its name, core requirements, extras, scripts and files."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = next(n.rsplit("/", 1)[0] for n in names if n.endswith(".dist-info/METADATA"))
        fields = Parser().parsestr(archive.read(f"{info}/METADATA").decode())
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
    requires = [Requirement(r) for r in fields.get_all("Requires-Dist") or []]
    core = sorted(str(r) for r in requires if r.marker is None)
    found = {
        "name": fields["Name"],
        "core": core,
        "extras": sorted(fields.get_all("Provides-Extra") or []),
        "console_scripts": re.findall(r"^(\S+) = (\S+)$", entry_points.split("[console_scripts]")[-1], re.MULTILINE),
        "notebooks": sorted(n for n in names if n.startswith("analysis/notebooks/") and n.endswith(".ipynb")),
        "templates": sorted(n for n in names if n.startswith("analysis/templates/")),
    }
    wanted_templates = sorted(f"analysis/templates/{p.name}" for p in (root / "analysis" / "templates").glob("*.j2"))
    wanted_notebooks = sorted(f"analysis/notebooks/{p.name}" for p in (root / "notebooks").glob("*.ipynb"))
    problems = [
        f"{what}: {found[key]!r}, expected {expected!r}" for what, key, expected in [
            ("name", "name", project["name"]),
            ("core requirements", "core", sorted(str(Requirement(r)) for r in project["dependencies"])),
            ("extras", "extras", sorted(project["optional-dependencies"])),
            ("console scripts", "console_scripts", [(SCRIPT, "analysis.__main__:main")]),
            ("notebooks", "notebooks", wanted_notebooks),
            ("report templates", "templates", wanted_templates),
        ] if found[key] != expected
    ]
    if not wanted_notebooks:
        problems.append("no notebooks in notebooks/")
    if problems:
        raise CheckFailed("the wheel's metadata differ from pyproject.toml:\n  " + "\n  ".join(problems))
    return found


def core_closure(requirements: list[str]) -> set[str]:
    """The installed distributions that `requirements` need, with their dependencies (no extras)."""
    environment = {"extra": ""}
    todo, seen = [Requirement(r) for r in requirements], set()
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen or (requirement.marker is not None and not requirement.marker.evaluate(environment)):
            continue
        try:
            todo += [Requirement(r) for r in metadata.requires(name) or []]
        except metadata.PackageNotFoundError:  # a requirement of another platform, or an optional one
            continue
        seen.add(name)
    return seen


def link_core(dest: Path, requirements: list[str]) -> Path:
    """A folder of links to every file and folder of the installed distributions the core needs, and nothing else:
    a site-packages as if only the core had been installed."""
    dest.mkdir(parents=True)
    for name in sorted(core_closure(requirements)):
        distribution = metadata.distribution(name)
        base = Path(distribution.locate_file(""))
        for top in sorted({Path(str(f)).parts[0] for f in distribution.files or []} - {".."}):
            if os.path.lexists(base / top) and not os.path.lexists(dest / top):
                (dest / top).symlink_to(base / top)
    return dest


def fresh_environment(venv: Path, wheel: Path, core_from_here: bool, root: Path = ROOT) -> Path:
    """A new virtual environment with the wheel and its core dependencies only; returns its python."""
    python = venv / "bin" / "python"
    if core_from_here:
        run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
        requirements = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
        core = link_core(venv / "core", requirements)
        purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip()
        Path(purelib, "core.pth").write_text(f"{core}\n")
        run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--no-index",
             str(wheel)])
    else:
        run([sys.executable, "-m", "venv", str(venv)])
        run([str(python), "-m", "pip", "install", "--quiet", str(wheel)])
    return python


def check_installed(python: Path, workdir: Path) -> dict:
    """Run the README's plain-loop example and the checks of INSIDE with `python` in `workdir`; return what they
    found, with the command line's error."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    (workdir / "example.py").write_text(python_block(PLAIN_LOOP))
    (workdir / "inside.py").write_text(INSIDE)
    run([str(python), "example.py"], cwd=workdir, env=env)
    found = json.loads(run([str(python), "inside.py"], cwd=workdir, env=env).stdout)
    script = subprocess.run([str(python.parent / SCRIPT), "sweep", "--help"], capture_output=True, text=True,
                            cwd=workdir, env=env)
    found["script"] = {"returncode": script.returncode, "stderr": script.stderr.strip().splitlines()}
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], env=env).stdout.strip()
    problems = []
    if not Path(found["analysis"]).is_relative_to(site):
        problems.append(f"analysis was imported from {found['analysis']}, not from the environment's {site}")
    if not found["notebooks"] or not all(Path(p).is_relative_to(site) for p in found["notebooks"]):
        problems.append(f"the installed package's notebooks: {found['notebooks']}")
    if found["optional_installed"]:
        problems.append(f"optional packages are importable: {found['optional_installed']}")
    if not list((workdir / "runs" / "example" / "stats.parquet").glob("part-*.parquet")):
        problems.append("the README example wrote no statistics")
    extras = {"analysis.hooks.lightning": "integrations", "analysis.hooks.transformers": "integrations",
              "to_tensorboard": "integrations", "digits": "data", "python -m analysis": "report"}
    for feature, extra in extras.items():
        message = found["errors"][feature]
        if message is None or f"pip install '{SCRIPT}[{extra}]'" not in message:
            problems.append(f"{feature} without the {extra!r} extra: {message!r}")
    if script.returncode == 0 or f"pip install '{SCRIPT}[report]'" not in script.stderr:
        problems.append(f"the {SCRIPT} command without the 'report' extra: {found['script']}")
    if problems:
        raise CheckFailed("the installed wheel:\n  " + "\n  ".join(problems))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--core-from-here", action="store_true",
                        help="link this environment's core packages instead of installing them from the index")
    args = parser.parse_args(argv)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="wheel-check-") as temp:
        temp = Path(temp)
        try:
            wheel = build_wheel(temp / "dist")
            found = check_metadata(wheel)
            print(f"built {wheel.name} ({time.monotonic() - start:.0f} s): core {', '.join(found['core'])}; "
                  f"extras {', '.join(found['extras'])}; {len(found['notebooks'])} notebooks")
            python = fresh_environment(temp / "venv", wheel, args.core_from_here)
            print(f"installed into a fresh environment ({time.monotonic() - start:.0f} s)")
            (temp / "work").mkdir()
            found = check_installed(python, temp / "work")
        except CheckFailed as failure:
            print(f"wheel check failed: {failure}", file=sys.stderr)
            return 1
    print(f"the README's plain-loop example ran from the installed wheel with the core dependencies only "
          f"(torch {found['torch']}); every optional feature names its extra ({time.monotonic() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
