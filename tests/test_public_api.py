"""The package as a library: its public names, its type information, the README's examples."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import sessions

ROOT = Path(__file__).resolve().parent.parent


def test_every_public_name_imports_from_the_package_top() -> None:
    assert {"SessionManagerService", "SessionState", "MemorySessionStorage",
            "RedisSessionStorage", "SessionStorage", "OpusSessionsError",
            "load_settings"} <= set(sessions.__all__)  # fmt: skip
    for name in sessions.__all__:
        value = getattr(sessions, name)
        home = importlib.import_module(sessions._EXPORTS[name])
        assert getattr(home, name) is value, name


def test_the_type_checking_imports_name_the_same_objects_as_the_exports() -> None:
    source = (ROOT / "sessions" / "__init__.py").read_text()
    typed = dict(
        (name, module)
        for module, name in re.findall(r"from (sessions\.\w+) import (\w+) as \2", source)
    )
    assert typed == sessions._EXPORTS


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="Nope"):
        sessions.Nope  # type: ignore[attr-defined]  # noqa: B018


def test_importing_one_module_does_not_load_every_backend() -> None:
    code = "import sys, sessions.keys; print('redis' in sys.modules, 'psycopg' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.stdout.split() == ["False", "False"], done.stderr


def test_the_package_ships_its_type_information() -> None:
    assert (ROOT / "sessions" / "py.typed").exists()
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in data["tool"]["setuptools"]["package-data"]["sessions"]


def _python_examples() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## From Python", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_readmes_python_examples_run_as_written(redis_url: str, key_prefix: str) -> None:
    examples = _python_examples()
    assert len(examples) == 2
    code = "\n".join(examples)
    code = code.replace('"redis://127.0.0.1:6379"', repr(redis_url))
    code = code.replace('"myapp:session:"', repr(key_prefix))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "['my card was declined']"
    assert "'valid': False" in lines[1] and "session has ended" in lines[1]
