"""The project's own files agree: pyproject's lower bounds are the versions nox's 'lowest' session tests,
and the lock pins every dependency pyproject names (so setup.sh installs exactly what was tested)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")

ROOT = Path(__file__).parents[1]


def _dependencies() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["dev"]
    return {re.split(r"[<>=!~ ;\[]", d, maxsplit=1)[0].lower(): d for d in deps}


def test_pyproject_lower_bounds_are_the_versions_the_lowest_session_tests():
    lowest = re.search(r"^LOWEST = \[(.*)\]", (ROOT / "noxfile.py").read_text(), re.M).group(1)
    pins = dict(re.findall(r'"([\w-]+)==([\d.]+)"', lowest))
    assert set(pins) == {"transformers", "peft", "accelerate"}
    deps = _dependencies()
    for name, version in pins.items():
        floor = re.search(r">=([\d.]+)", deps[name]).group(1)
        assert tuple(map(int, version.split("."))) == tuple(map(int, (floor + ".0.0").split(".")[:3])), (name, floor, version)


def test_the_lock_pins_every_dependency_but_torch():
    locked = {}
    for line in (ROOT / "requirements" / "locked.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            locked[name.lower().replace("_", "-")] = version
    assert set(_dependencies()) - {"torch"} <= set(locked)
    assert "torch" not in locked  # setup.sh keeps a torch that is already installed
