"""Type checkers can follow the installed package: mypy, run with this venv and the project's configuration on a
file outside the checkout, reads the signatures of avemo.training, avemo.client and avemo.export. It fails when the
editable install is one static analysers cannot see into (setuptools' default import-hook finder): the imports
are then "not found" and the deliberate type errors below go unreported."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

# One name with a known signature from each package, each called once correctly and once with a wrong type.
_CHECKED = """\
from avemo.client.busy import is_busy_message
from avemo.export.triton_config import flavour_model_name
from avemo.training.data.dialogues import fold_group

ok_busy: bool = is_busy_message("Exceeds maximum queue size")
ok_name: str = flavour_model_name("emotion", "onnx")
ok_group: str | None = fold_group("iemocap", "Ses01F_impro01")
wrong_busy = is_busy_message(42)
wrong_name = flavour_model_name("emotion", 3)
wrong_group: int = fold_group("iemocap", "Ses01F_impro01")
"""
# line -> what mypy must say there (the deliberate errors, 1-based lines of _CHECKED)
EXPECTED = {
    8: 'Argument 1 to "is_busy_message" has incompatible type "int"',
    9: 'Argument 2 to "flavour_model_name" has incompatible type "int"',
    10: 'Incompatible types in assignment (expression has type "str | None", variable has type "int")',
}


@pytest.fixture(scope="module")
def mypy_output(repo_root, tmp_path_factory) -> str:
    pytest.importorskip("mypy", reason="mypy is in the dev extra (pip install -e '.[dev]')")
    work = tmp_path_factory.mktemp("typecheck")
    (work / "checked.py").write_text(_CHECKED)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(repo_root / "pyproject.toml"),
            "--cache-dir",
            str(work / "cache"),
            "--no-error-summary",
            "--show-error-codes",
            "checked.py",
        ],
        cwd=work,  # not the checkout: avemo is found only where it is installed
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode in (0, 1), f"mypy crashed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_mypy_finds_the_installed_package(mypy_output):
    unseen = [
        line
        for line in mypy_output.splitlines()
        if "avemo" in line
        and (
            "Cannot find implementation or library stub" in line
            or "import-not-found" in line
            or "import-untyped" in line
            or "missing library stubs or py.typed marker" in line
        )
    ]
    assert not unseen, "mypy cannot follow the installed avemo (is it an editable install in strict mode?):\n" + (
        "\n".join(unseen)
    )


def test_mypy_reads_the_signatures(mypy_output):
    errors = {}
    for line in mypy_output.splitlines():
        m = re.match(r"checked\.py:(\d+): error: (.*)", line)
        if m:
            errors.setdefault(int(m.group(1)), []).append(m.group(2))
    for lineno, message in EXPECTED.items():
        assert any(message in e for e in errors.get(lineno, [])), (
            f"line {lineno}: expected {message!r}; mypy said:\n{mypy_output}"
        )
    assert set(errors) == set(EXPECTED), f"errors on other lines than the deliberate ones:\n{mypy_output}"
