"""The environment files agree with each other and with what is installed."""

from importlib.metadata import version
from pathlib import Path

import yaml

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python < 3.11
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for dep in deps:
        name, _, pinned = dep.partition("==")
        assert pinned, f"pyproject.toml: dependency {dep!r} is not pinned to an exact version"
        pins[name.split("[")[0].lower()] = pinned
    return pins


def test_every_dependency_is_pinned_and_installed_at_its_pin() -> None:
    pins = _pins()
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    for name, pinned in pins.items():
        assert version(name).split("+")[0] == pinned, name


def test_conda_environment_installs_the_same_pins() -> None:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert pip_section == ["-e .[dev]"]  # pyproject.toml's pins, nothing else
