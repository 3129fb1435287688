"""The docs stay true: quoted files match, every key and command is documented."""

from __future__ import annotations

import re

import pytest

from conftest import ROOT
from core.cli import cli
from core.config import HOST_OPTIONS

QUOTE = re.compile(r"<!-- quote: (?P<path>\S+) -->\n```\w*\n(?P<body>.*?)```", re.DOTALL)
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def quotes() -> list[tuple[str, str, str]]:
    found = []
    for doc in DOCS:
        for match in QUOTE.finditer(doc.read_text(encoding="utf-8")):
            found.append((doc.name, match["path"], match["body"]))
    return found


def test_the_readme_quotes_example_ext():
    quoted = {path for _, path, _ in quotes()}
    assert {
        "example_ext/setup.py",
        "example_ext/example_ext/celery_import.py",
        "example_ext/example_ext/tasks.py",
    } <= quoted


@pytest.mark.parametrize(("doc", "path", "body"), quotes(), ids=lambda v: v if "/" in v else None)
def test_quoted_files_are_verbatim(doc, path, body):
    assert body == (ROOT / path).read_text(encoding="utf-8"), f"{doc} quotes {path} out of date"


@pytest.mark.parametrize("key", sorted(HOST_OPTIONS))
def test_every_host_key_is_documented(key):
    for doc in (ROOT / "README.md", ROOT / "docs" / "configuration.md"):
        assert f"`host.{key}`" in doc.read_text(encoding="utf-8"), f"host.{key} missing from {doc.name}"


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_is_in_the_readme(command):
    assert f"`host {command}" in (ROOT / "README.md").read_text(encoding="utf-8")
