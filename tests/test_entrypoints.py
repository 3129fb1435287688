"""The one scan of the installed distributions that plugin loading and discovery share.

Distributions are real ``*.dist-info`` folders written by the ``site``
fixture; :func:`~core.entrypoints.installed_entry_points` reads everything on
``sys.path``, so each test looks only at this site's distributions.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import core.discovery
from core.celery_app import HostCelery
from core.config import load_config
from core.discovery import discover
from core.entrypoints import (
    HOST_GROUPS,
    PLUGIN_GROUP,
    TASK_GROUP,
    Installed,
    installed_entry_points,
    name_and_version,
)
from core.plugin_manager import make_plugin_manager
from core.startup import configure_app
from tests.conftest import ROOT, Site, write_ini

TASKS = """\
from core.celery_app import celery


@celery.task(name="{name}.ping")
def ping():
    return "pong"
"""


def installed_meanwhile() -> None:
    """After writing a distribution into a folder already read: importlib.metadata keeps each
    folder's listing until the folder's mtime changes, which a write in the same clock tick
    may not show (as for imports: https://docs.python.org/3/library/importlib.html#importlib.invalidate_caches).
    """
    importlib.invalidate_caches()


def add_extension(site: Site, name: str, version: str = "1.0") -> None:
    """Distribution ``name`` with one ``host.celery_task`` entry point and one task, ``NAME.ping``."""
    pkg = name.replace("-", "_").lower()
    site.add(
        name,
        version,
        {TASK_GROUP: {"tasks": f"{pkg}.celery_import:task_imports"}},
        {
            f"{pkg}/__init__.py": "",
            f"{pkg}/celery_import.py": f'def task_imports():\n    return ["{pkg}.tasks"]\n',
            f"{pkg}/tasks.py": TASKS.format(name=pkg),
        },
    )


def ours(found: list[Installed], site: Site) -> list[tuple[str, str, str]]:
    """``(distribution, version, entry point value)`` of the entries ``site`` holds."""
    return [
        (item.distribution, item.version, item.entry_point.value)
        for item in found
        if item.entry_point.dist is not None and str(site.path) in str(item.entry_point.dist.locate_file(""))
    ]


def providing(value: str) -> list[Installed]:
    """The installed ``host.celery_task`` entry points whose value is ``value``."""
    return [i for i in installed_entry_points([TASK_GROUP])[TASK_GROUP] if i.entry_point.value == value]


# -- the scan -----------------------------------------------------------------------


def test_one_scan_finds_every_group_with_names_and_versions(site: Site) -> None:
    site.add("Mixed-Ext", "2.5", {PLUGIN_GROUP: {"mixed": "mixed_plugin"}, TASK_GROUP: {"tasks": "mixed:f"}})
    site.add("other-ext", "1.0", {"console_scripts": {"other": "other:main"}})

    found = installed_entry_points(HOST_GROUPS)

    assert set(found) == set(HOST_GROUPS)
    # The name as its METADATA spells it, not as its folder does (Mixed_Ext-2.5.dist-info).
    assert ours(found[PLUGIN_GROUP], site) == [("Mixed-Ext", "2.5", "mixed_plugin")]
    assert ours(found[TASK_GROUP], site) == [("Mixed-Ext", "2.5", "mixed:f")]
    assert [item.entry_point.group for item in found[TASK_GROUP]] == [TASK_GROUP] * len(found[TASK_GROUP])


def test_a_distribution_on_two_folders_counts_once_the_first(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site.add("twice-ext", "1.0", {TASK_GROUP: {"tasks": "old:f"}})
    first = Site(tmp_path / "first")
    first.path.mkdir()
    monkeypatch.syspath_prepend(str(first.path))
    first.add("twice-ext", "2.0", {TASK_GROUP: {"tasks": "new:f"}})

    found = installed_entry_points([TASK_GROUP])[TASK_GROUP]

    assert [(i.version, i.entry_point.value) for i in found if i.distribution == "twice-ext"] == [
        ("2.0", "new:f")
    ]


def test_nothing_is_cached_between_calls(site: Site) -> None:
    add_extension(site, "early-ext")
    before = installed_entry_points([TASK_GROUP])[TASK_GROUP]
    add_extension(site, "late-ext")
    installed_meanwhile()

    after = installed_entry_points([TASK_GROUP])[TASK_GROUP]

    assert [name for name, _, _ in ours(before, site)] == ["early-ext"]
    assert sorted(name for name, _, _ in ours(after, site)) == ["early-ext", "late-ext"]


def test_name_and_version_read_from_the_headers_only(site: Site) -> None:
    dist_info = site.add("readme-ext", "3.1", {TASK_GROUP: {"tasks": "readme:f"}})
    body = "Name: not-this\nVersion: 0\n"  # after the blank line: the README, not headers
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: readme-ext\nVersion: 3.1\n\n{body}", encoding="utf-8"
    )

    [item] = [
        i for i in installed_entry_points([TASK_GROUP])[TASK_GROUP] if i.entry_point.value == "readme:f"
    ]

    assert (item.distribution, item.version) == ("readme-ext", "3.1")


def test_unusual_headers_fall_back_to_the_full_parse(site: Site) -> None:
    dist_info = site.add("folded-ext", "1.0", {TASK_GROUP: {"tasks": "folded:f"}})
    # A continuation line before Name: the quick read stops there; the email parser does not.
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nSummary: one\n  two\nName: folded-ext\nVersion: 4.0\n", encoding="utf-8"
    )

    [item] = [
        i for i in installed_entry_points([TASK_GROUP])[TASK_GROUP] if i.entry_point.value == "folded:f"
    ]

    assert (item.distribution, item.version) == ("folded-ext", "4.0")


def test_an_entry_point_without_distribution() -> None:
    assert name_and_version(None) == ("(unknown distribution)", "?")


# -- plugin loading and discovery share it ---------------------------------------------


def test_discovery_uses_the_scan_plugin_loading_made(
    site: Site, fresh_app: HostCelery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_extension(site, "shared-ext")
    ini = write_ini(tmp_path / "test.ini", "[app:main]\ncelery.broker_url = memory://\n")
    config = load_config(ini, environ={})
    pm = make_plugin_manager([])
    configure_app(fresh_app, config, pm)

    def scan_again(groups: object) -> object:
        raise AssertionError("discovery scanned the installed distributions a second time")

    monkeypatch.setattr(core.discovery, "installed_entry_points", scan_again)
    found = discover(fresh_app, config)

    assert pm.installed is not None and set(pm.installed) == set(HOST_GROUPS)
    assert [row for row in found.task_rows() if row["extension"] == "shared-ext"] == [
        {"task": "shared_ext.ping", "extension": "shared-ext", "version": "1.0", "module": "shared_ext.tasks"}
    ]


def test_a_plugin_manager_keeps_the_installation_it_was_made_from(
    site: Site, fresh_app: HostCelery, tmp_path: Path
) -> None:
    ini = write_ini(tmp_path / "test.ini", "[app:main]\ncelery.broker_url = memory://\n")
    config = load_config(ini, environ={})
    pm = make_plugin_manager([])
    add_extension(site, "later-ext")
    installed_meanwhile()

    with_pm = discover(configure_app(fresh_app, config, pm), config)
    fresh = make_plugin_manager([])

    assert "later-ext" not in [ext.distribution for ext in with_pm.extensions]
    assert fresh.installed is not None
    assert "later-ext" in [item.distribution for item in fresh.installed[TASK_GROUP]]


def test_entry_points_given_by_the_caller_are_not_kept(site: Site) -> None:
    assert make_plugin_manager([], entry_points=[]).installed is None


# -- what start-up imports ------------------------------------------------------------


def test_plugin_loading_and_discovery_import_neither_each_other_nor_the_backport() -> None:
    code = (
        "import sys\n"
        "import core.plugin_manager\n"
        "assert 'core.discovery' not in sys.modules, 'core.plugin_manager imports core.discovery'\n"
        "import core.discovery\n"
        "assert 'importlib_metadata' not in sys.modules, 'the importlib_metadata backport was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
