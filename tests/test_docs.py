"""The docs stay true: quoted files match, every key, command and hook is documented.

A code block right after ``<!-- quote: PATH -->`` must be the whole file PATH;
one after ``<!-- excerpt: PATH -->`` must be a run of whole lines of it.
"""

from __future__ import annotations

import inspect
import re

import pytest

from conftest import ROOT
from core.cli import cli
from core.config import HOST_OPTIONS
from example_ext import plugin as example_plugin
from plugins import hookspecs

QUOTE = re.compile(r"<!-- (?P<kind>quote|excerpt): (?P<path>\S+) -->\n```\w*\n(?P<body>.*?)```", re.DOTALL)
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PLUGINS_DOC = ROOT / "docs" / "plugins.md"
EXAMPLE_PLUGIN = "example_ext/example_ext/plugin.py"
#: ``## host_queues()``: a hook's section, its arguments as the spec names them.
HOOK_HEADING = re.compile(r"^## (?P<hook>host_\w+)\((?P<args>[^)]*)\)$", re.MULTILINE)

HOOKS = sorted(
    name for name, value in vars(hookspecs).items() if name.startswith("host_") and callable(value)
)
EXAMPLE_HOOKS = sorted(name for name in vars(example_plugin) if name.startswith("host_"))


def quotes(kind: str) -> list[tuple[str, str, str]]:
    """``(doc, path, body)`` of every quote of ``kind`` in the docs."""
    found = []
    for doc in DOCS:
        for match in QUOTE.finditer(doc.read_text(encoding="utf-8")):
            if match["kind"] == kind:
                found.append((doc.name, match["path"], match["body"]))
    return found


def params(kind: str) -> list:
    return [pytest.param(*q, id=f"{q[0]}:{q[1]}:{i}") for i, q in enumerate(quotes(kind))]


def test_the_readme_quotes_example_ext():
    quoted = {path for _, path, _ in quotes("quote")}
    assert {
        "example_ext/setup.py",
        "example_ext/example_ext/celery_import.py",
        "example_ext/example_ext/tasks.py",
    } <= quoted


@pytest.mark.parametrize(("doc", "path", "body"), params("quote"))
def test_quoted_files_are_verbatim(doc, path, body):
    assert body == (ROOT / path).read_text(encoding="utf-8"), f"{doc} quotes {path} out of date"


@pytest.mark.parametrize(("doc", "path", "body"), params("excerpt"))
def test_excerpts_are_verbatim(doc, path, body):
    text = (ROOT / path).read_text(encoding="utf-8")
    # Whole lines only: the excerpt starts at a line's start and ends with a newline.
    assert body.endswith("\n") and "\n" + body in "\n" + text, f"{doc} quotes lines of {path} out of date"


@pytest.mark.parametrize("key", sorted(HOST_OPTIONS))
def test_every_host_key_is_documented(key):
    for doc in (ROOT / "README.md", ROOT / "docs" / "configuration.md"):
        assert f"`host.{key}`" in doc.read_text(encoding="utf-8"), f"host.{key} missing from {doc.name}"


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_is_in_the_readme(command):
    assert f"`host {command}" in (ROOT / "README.md").read_text(encoding="utf-8")


# -- hooks: documented, quoted from example_ext, tested ------------------------------


def hook_sections() -> dict[str, tuple[str, str]]:
    """``{hook: (its arguments as the heading gives them, the section's text)}`` of docs/plugins.md."""
    text = PLUGINS_DOC.read_text(encoding="utf-8")
    sections = {}
    for match in HOOK_HEADING.finditer(text):
        end = text.find("\n## ", match.end())
        sections[match["hook"]] = (match["args"], text[match.end() : end if end != -1 else len(text)])
    return sections


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_section_in_the_plugin_guide(hook):
    args = ", ".join(inspect.signature(getattr(hookspecs, hook)).parameters)
    documented = hook_sections()
    assert hook in documented, f"docs/plugins.md has no section '## {hook}({args})'"
    assert documented[hook][0] == args, f"docs/plugins.md: the heading should be '## {hook}({args})'"


def test_the_plugin_guide_documents_no_hook_that_does_not_exist():
    assert sorted(set(hook_sections()) - set(HOOKS)) == []


@pytest.mark.parametrize("hook", EXAMPLE_HOOKS)
def test_hooks_example_ext_implements_are_quoted_from_it(hook):
    _, section = hook_sections()[hook]
    excerpts = [
        m["body"] for m in QUOTE.finditer(section) if (m["kind"], m["path"]) == ("excerpt", EXAMPLE_PLUGIN)
    ]
    assert any(f"def {hook}(" in body for body in excerpts), (
        f"the section of {hook} in docs/plugins.md should quote it from {EXAMPLE_PLUGIN}"
    )


def test_the_hooks_are_found():
    # The parametrized tests above and below would pass with nothing to check.
    assert "host_queues" in HOOKS and "host_queues" in EXAMPLE_HOOKS


def sources_of_the_tests() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "tests").rglob("*.py")))


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook):
    named = re.compile(rf"^\s*(async\s+)?def test_hook_{hook}\b", re.MULTILINE)
    tested = named.search(sources_of_the_tests()) is not None
    assert tested, f"no test under tests/ is named test_hook_{hook}"


#: ``tests/test_x.py`` and ``test_name`` as the docs cite them (backticked).
CITED_FILE = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+))?`")
CITED_TEST = re.compile(r"`(test_\w+)`")


def _test_names() -> set[str]:
    found: set[str] = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        found.update(re.findall(r"^def (test_\w+)\(", path.read_text(encoding="utf-8"), re.MULTILINE))
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_test_the_docs_cite_exists(doc):
    """The deployment guide says which test proves each step: those tests must exist."""
    text = doc.read_text(encoding="utf-8")
    names = _test_names()
    for path, name in CITED_FILE.findall(text):
        assert (ROOT / path).is_file(), f"{doc.name} cites {path}, which does not exist"
        if name:
            assert name in (ROOT / path).read_text(encoding="utf-8"), f"{doc.name} cites {path}::{name}"
    missing = sorted(set(CITED_TEST.findall(text)) - names)
    assert not missing, f"{doc.name} cites tests that do not exist: {missing}"


@pytest.mark.parametrize(
    "module",
    sorted(
        p.relative_to(ROOT / "core").as_posix()
        for p in (ROOT / "core").rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py")
    ),
)
def test_the_architecture_page_names_every_module(module):
    """docs/architecture.md is the map: a module it does not name is a module nobody can find."""
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    name = module.removeprefix("cli/")
    named = {f"`{name}`", f"`{module}`", f"`core/{module}`"}
    assert any(form in page for form in named), f"docs/architecture.md does not name core/{module}"
