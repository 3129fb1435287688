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

import re
from collections.abc import Iterable
from importlib import metadata
from typing import NamedTuple

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


def installed_entry_points(groups: Iterable[str]) -> dict[str, list[Installed]]:
    """The installed entry points of each of ``groups``, in ``sys.path`` order.

    A distribution that more than one folder of ``sys.path`` holds counts
    once, the first, as for ``import``.
    """
    # entry_points() reads each distribution's entry_points.txt once, for every
    # group; select() then only filters what was read.
    everything = metadata.entry_points()
    identities: dict[int, tuple[str, str]] = {}
    return {group: identified(everything.select(group=group), identities) for group in groups}


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
