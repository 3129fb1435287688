"""Shell completion for ``host``: click's own, through ``_HOST_COMPLETE`` (README, "Shell completion").

Each case runs the real ``host`` as the shell's completion function does,
in a folder holding development.ini, so the plugins' commands are there too.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from worker import DEVELOPMENT, HOST, host_env


def complete(directory: Path, words: str, shell: str = "bash") -> list[str]:
    """What ``host`` offers for the last of ``words`` (bash's ``type,value`` lines: the values)."""
    env = host_env({"_HOST_COMPLETE": f"{shell}_complete", "COMP_WORDS": words})
    env["COMP_CWORD"] = str(len(words.split()) - (0 if words.endswith(" ") else 1))
    done = subprocess.run([HOST], env=env, cwd=directory, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [line.split(",", 1)[1] for line in done.stdout.splitlines() if "," in line]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    shutil.copy(DEVELOPMENT, tmp_path / "development.ini")
    return tmp_path


def test_commands_complete(folder: Path) -> None:
    assert complete(folder, "host cel") == ["celerybeat", "celeryd"]
    assert complete(folder, "host res") == ["result", "results"]


def test_a_plugins_commands_complete_too(folder: Path) -> None:
    assert complete(folder, "host ex") == ["example"]
    assert complete(folder, "host example ") == ["hello"]


def test_options_complete(folder: Path) -> None:
    assert "--reload" in complete(folder, "host celeryd --")
    assert complete(folder, "host results --st") == ["--state"]


def test_the_shells_scripts_are_click_s() -> None:
    for shell in ("bash", "zsh", "fish"):
        env = host_env({"_HOST_COMPLETE": f"{shell}_source"})
        done = subprocess.run([HOST], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "_HOST_COMPLETE" in done.stdout, (shell, done.stderr)
