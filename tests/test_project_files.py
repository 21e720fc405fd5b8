"""The operator-facing files agree with the code: README's commands, .env.example, Procfile."""

from __future__ import annotations

import re
from pathlib import Path

from tests.test_config import SETTING_NAMES

ROOT = Path(__file__).resolve().parent.parent


GATE = ".venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy"


def test_ci_runs_the_test_command_readme_gives() -> None:
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    command = lines[-1]
    assert command.startswith("python3 -m venv") and "pytest" in command
    readme = (ROOT / "README.md").read_text()
    assert command in readme.splitlines()


def test_ci_passes_the_gate_readme_names_before_the_tests() -> None:
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert GATE in lines[:-1]
    assert GATE in (ROOT / "README.md").read_text().splitlines()


def test_every_setting_the_code_reads_is_documented() -> None:
    code = (ROOT / "bot" / "config.py").read_text()
    read = set(re.findall(r'_\w+\(env, "([A-Z_]+)"', code))
    assert read == set(SETTING_NAMES)
    example = (ROOT / ".env.example").read_text()
    readme = (ROOT / "README.md").read_text()
    for name in SETTING_NAMES:
        assert re.search(rf"^#?{name}=", example, re.MULTILINE), f"{name} not in .env.example"
        assert f"`{name}`" in readme, f"{name} not in README's settings table"


def test_procfile_runs_the_bot_as_a_web_process() -> None:
    assert (ROOT / "Procfile").read_text().strip() == "web: python -m bot"


def test_every_test_the_reliability_table_names_exists() -> None:
    table = (ROOT / "docs" / "reliability.md").read_text()
    # Test names, not test files; ``test_recovery_*`` stands for every test of that prefix.
    named = set(re.findall(r"\b(test_\w+\*?)(?!\w|\.py)", table))
    defined = {
        match
        for path in (ROOT / "tests").rglob("test_*.py")
        for match in re.findall(r"^(?:async )?def (test_\w+)", path.read_text(), re.MULTILINE)
    }
    assert len(named) > 50, "the table names too few tests to be the one in docs/"
    missing = {
        name
        for name in named
        if not any(d.startswith(name[:-1]) if name.endswith("*") else d == name for d in defined)
    }
    assert not missing, f"named in docs/reliability.md but not defined: {sorted(missing)}"
