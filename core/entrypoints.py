"""The host's entry points, from one look at the installed distributions.

Plugin loading (group ``host.plugins``) and discovery (``host.celery_task``)
both need each installed entry point of their group, with the name and
version of the distribution that provides it. :func:`installed_entry_points`
finds several groups in one pass: every distribution on ``sys.path`` has its
``entry_points.txt`` read once, and only one that provides an entry point of
those groups has its metadata read, up to the ``Name`` and ``Version`` headers.
The plugin manager asks for every host group and keeps the answer, which
discovery then uses (:attr:`core.plugin_manager.HostPluginManager.installed`): a
worker's start-up reads the installed distributions once, not once per group.

Nothing is cached between calls, so a distribution installed meanwhile (as
the tests do) is seen by the next call. The scan is the standard library's
:mod:`importlib.metadata`, which Celery and kombu import anyway.

The helpers both users name things with (:func:`normalize`, :func:`describe`)
live here too.
"""

from __future__ import annotations

import difflib
import json
import pkgutil
import re
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote, urlparse

#: The group of pluggy plugins, enabled by name in ``host.plugins``.
PLUGIN_GROUP = "host.plugins"
#: The group of CKAN-style ``task_imports()`` functions.
TASK_GROUP = "host.celery_task"
#: Every group the host reads: what one scan at start-up collects.
HOST_GROUPS = (PLUGIN_GROUP, TASK_GROUP)

#: What a distribution is called when an entry point has none (built by hand).
UNKNOWN = ("(unknown distribution)", "?")


class Installed(NamedTuple):
    """One installed entry point and the distribution that provides it."""

    entry_point: metadata.EntryPoint
    distribution: str
    version: str

    @property
    def sort_name(self) -> str:
        """The normalized distribution name, to sort by: empty for an entry point without one."""
        return normalize(self.distribution) if self.entry_point.dist is not None else ""


def normalize(name: str) -> str:
    """PEP 503 name normalisation: ``Example_Ext`` and ``example-ext`` are one."""
    return re.sub(r"[-_.]+", "-", name).lower()


def describe(ep: metadata.EntryPoint) -> str:
    """``host.celery_task:tasks = example_ext.celery_import:task_imports``."""
    return f"{ep.group}:{ep.name} = {ep.value}"


class Scan(dict[str, list[Installed]]):
    """The installed entry points by group, and those declared under a near miss of a group's name.

    ``misgrouped[group]``: entry points whose group is a likely typo of
    ``group`` (``host.celery_tasks``, ``host.plugin``). The host never reads
    them; the messages name them, since nothing else would.
    """

    def __init__(self) -> None:
        super().__init__()
        self.misgrouped: dict[str, list[Installed]] = {}


def installed_entry_points(groups: Iterable[str]) -> Scan:
    """The installed entry points of each of ``groups``, in ``sys.path`` order.

    A distribution that more than one folder of ``sys.path`` holds counts
    once, the first, as for ``import``.
    """
    # entry_points() reads each distribution's entry_points.txt once, for every
    # group; select() then only filters what was read.
    everything = metadata.entry_points()
    identities: dict[int, tuple[str, str]] = {}
    scan = Scan()
    groups = list(groups)
    for group in groups:
        scan[group] = identified(everything.select(group=group), identities)
    # A handful of group names: looking for near misses costs microseconds.
    others = [name for name in everything.groups if name not in groups]
    for group in groups:
        for typo in near_groups(group, others):
            scan.misgrouped.setdefault(group, []).extend(
                identified(everything.select(group=typo), identities)
            )
    return scan


def near_groups(group: str, others: Iterable[str]) -> list[str]:
    """Group names that are likely typos of ``group``: ``host.celery_tasks``, ``host_plugins``."""
    return difflib.get_close_matches(group, list(others), n=5, cutoff=0.8)


def declared_in(dist: metadata.Distribution | None, name: str) -> str:
    """Where the author declares ``name``'s entry points: the project's own file when the
    distribution was installed from a folder (``pip install -e .``), else ``NAME's setup.py or
    pyproject.toml``."""
    project = _project_folder(dist)
    if project is not None:
        found = [project / f for f in ("pyproject.toml", "setup.py", "setup.cfg") if (project / f).is_file()]
        declaring = [f for f in found if _mentions_host_groups(f)]
        if declaring or found:
            return str((declaring or found)[0])
    return f"{name}'s setup.py or pyproject.toml"


def fix_and_reinstall(dist: metadata.Distribution | None, name: str, what: str, close: str | None) -> str:
    """``did you mean X? Correct WHAT in FILE, then reinstall NAME``, and why reinstall."""
    fix = f"correct {what} in {declared_in(dist, name)}, then {reinstall(dist, name)}"
    fix += ": entry points are read at install time"
    return f"{close} {fix[0].upper()}{fix[1:]}" if close else fix


def reinstall(dist: metadata.Distribution | None, name: str) -> str:
    """``reinstall NAME (pip install -e /its/folder)``: how to reinstall it, as it was installed."""
    project = _project_folder(dist)
    if project is None:
        return f"reinstall {name}"
    editable = "-e " if _direct_url(dist).get("dir_info", {}).get("editable") else ""
    return f"reinstall {name} (pip install {editable}{project})"


def reinstall_command(dist: metadata.Distribution | None, name: str) -> str:
    """``reinstall NAME (pip install ...)``, from where it came: its folder, its URL, or the index."""
    if _project_folder(dist) is not None:
        return reinstall(dist, name)
    found = _direct_url(dist)
    url = str(found.get("url", ""))
    vcs = found.get("vcs_info", {}).get("vcs") if isinstance(found.get("vcs_info"), dict) else None
    # Not from the package index (a local wheel, a VCS checkout): from where it came from.
    source = f"{vcs}+{url}" if vcs and url else url or name
    return f"reinstall {name} (pip install {source})"


def _direct_url(dist: metadata.Distribution | None) -> dict[str, Any]:
    """PEP 610's ``direct_url.json``: where a distribution was installed from, when not an index."""
    text = dist.read_text("direct_url.json") if dist is not None else None
    try:
        found = json.loads(text) if text else {}
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _project_folder(dist: metadata.Distribution | None) -> Path | None:
    """The folder a distribution was installed from, if it was a local folder."""
    url = urlparse(str(_direct_url(dist).get("url", "")))
    folder = Path(unquote(url.path)) if url.scheme == "file" else None
    return folder if folder is not None and folder.is_dir() else None


def _mentions_host_groups(path: Path) -> bool:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "host." in text  # host.celery_task, host.plugins, or a near miss of either


def top_level_names(dist: metadata.Distribution | None) -> tuple[list[str], str | None]:
    """The top-level modules and packages ``dist`` installs, and the folder it is installed in.

    From its ``top_level.txt`` and its list of files; for a distribution that has
    neither, the modules beside its metadata folder. For messages only.
    """
    if dist is None:
        return [], None
    names = set((dist.read_text("top_level.txt") or "").split())
    for file in dist.files or []:
        first = file.parts[0] if file.parts else ""
        if len(file.parts) > 1 and not first.endswith((".dist-info", ".egg-info", ".data")):
            names.add(first)
        elif file.suffix == ".py":
            names.add(file.stem)
    try:
        folder: Path | None = Path(str(dist.locate_file("")))
    except NotImplementedError:  # a distribution that is not a folder of files
        folder = None
    if not names and folder is not None and folder.is_dir():
        names.update(info.name for info in pkgutil.iter_modules([str(folder)]))
    names = {n for n in names if n.isidentifier() and not n.startswith("__")}
    return sorted(names), str(folder) if folder is not None else None


def identified(
    eps: Iterable[metadata.EntryPoint], identities: dict[int, tuple[str, str]] | None = None
) -> list[Installed]:
    """Each entry point with its distribution's name and version, read once per distribution.

    :param identities: what was read already, by ``id()`` of the distribution.
    """
    known = {} if identities is None else identities
    found = []
    for ep in eps:
        dist = ep.dist
        if id(dist) not in known:
            known[id(dist)] = name_and_version(dist)
        found.append(Installed(ep, *known[id(dist)]))
    return found


#: A header line of a metadata file, as the email parser reads one.
_HEADER = re.compile(r"([\041-\071\073-\176]+):[ \t]*(.*)")
_IDENTITY = ("name", "version")


def name_and_version(dist: metadata.Distribution | None) -> tuple[str, str]:
    """The distribution's ``Name`` and ``Version``, from the headers of its metadata file.

    ``dist.name`` and ``dist.version`` each read and parse the whole file, whose
    body is often the project's README; with hundreds of extensions that was a
    large part of discovery. Only the header lines up to these two are read
    here; anything unusual in them falls back to ``dist.name`` and ``dist.version``.
    """
    if dist is None:
        return UNKNOWN
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO")
    if text:
        fields: dict[str, str] = {}
        # A blank line ends the headers: the body (the README) is not even split into lines.
        for line in text.partition("\n\n")[0].splitlines():
            match = _HEADER.fullmatch(line)
            if match is None:  # the end of the headers, a continuation line or anything odd
                break
            key = match.group(1).lower()
            if key in _IDENTITY and key not in fields:
                fields[key] = match.group(2)
                if len(fields) == len(_IDENTITY):
                    return fields["name"], fields["version"]
    return dist.name, dist.version
