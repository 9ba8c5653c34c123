"""The set-up a fresh machine runs: the README's test command is the one CI runs, and the lock pins
every declared dependency at a version its range in pyproject.toml allows."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
VENV_STEP = "python -m venv .venv && . .venv/bin/activate && "


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    head = text[: text.index("\n## ")]  # the commands at the top, before the first section
    return re.findall(r"```bash\n(.+?)\n```", head, flags=re.S)


def _lock() -> dict[str, str]:
    pins = {}
    for number, line in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep, f"constraints.txt:{number}: {line!r} is not NAME==VERSION"
            pins[canonicalize_name(name)] = version
    return pins


def test_ci_runs_the_readme_test_command_word_for_word() -> None:
    quickstart, test = _readme_commands()
    assert "graft quickstart" in quickstart and "-c constraints.txt" in quickstart
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").rstrip("\n").splitlines()
    assert VENV_STEP in test
    assert ci[-1] == test.replace(VENV_STEP, "")
    assert 'python -m venv "$venv" && . "$venv/bin/activate"' in ci  # its own new environment


def test_the_lock_pins_every_declared_dependency_within_its_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = [*project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        declared += extra
    pins = _lock()
    for text in declared:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name == "graft":  # an extra naming another extra of ours
            continue
        assert name in pins, f"{requirement.name} is declared but constraints.txt does not pin it"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {requirement.name}=={pins[name]}, outside {text!r}"
        )
