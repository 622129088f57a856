"""Every command reports misuse as one line naming what is wrong, with exit status 2 and no traceback."""
import subprocess
import sys

import pytest

from analysis.__main__ import main


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    return path


@pytest.mark.parametrize("argv, message", [
    (["main", "--depths", "21"], "main: error: depth: 21 is not supported; valid depths: "),
    (["report", "{missing}"], "report: error: paths: {missing}: give one runs folder and/or existing executed"),
    (["report", "{tmp}", "--out", "{file}"], "report: error: out: {file} exists and is not a folder"),
    (["main", "--out", "{file}"], "main: error: out: {file} exists and is not a folder"),
    (["sweep", "--depths", "8", "--runs-dir", "{file}"], "sweep: error: runs_dir: {file} is a file, not a folder"),
    (["sweep", "--depths", "8", "--set", "optimizer=sgd,'adam"],
     "sweep: error: --set optimizer: \"sgd,'adam\" is not a comma-separated list of YAML values"),
    (["sweep", "--depths", "8", "--set", "dataset=" + "x" * 100_000], "sweep: error: dataset: 'xxxx"),
])
def test_misuse_is_one_line_with_status_2(argv, message, tmp_path, a_file, capsys):
    names = {"missing": tmp_path / "missing", "tmp": tmp_path, "file": a_file}
    assert main([arg.format(**names) for arg in argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(message.format(**names)) and captured.err.count("\n") == 1
    assert len(captured.err) < 400


def test_the_installed_command_prints_no_traceback(a_file):
    result = subprocess.run([sys.executable, "-m", "analysis", "sweep", "--depths", "8", "--runs-dir", str(a_file)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == f"sweep: error: runs_dir: {a_file} is a file, not a folder\n"
