"""Distributions written as real files: ``*.dist-info`` folders with entry points, as pip leaves them.

Discovery and plugin loading read the installed distributions through
:mod:`importlib.metadata`; a :class:`Site` on ``sys.path`` (in this process, or
``PYTHONPATH`` for a subprocess) is found the same way, with no mock. The
``installed_extension`` fixture (:mod:`core.testing.plugin`) writes into one.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: ``{group: {entry point name: "module:attr"}}``
EntryPoints = Mapping[str, Mapping[str, str]]


class Site:
    """A folder on ``sys.path`` holding distributions written as real files.

    Each distribution gets ``NAME-VERSION.dist-info/{METADATA,entry_points.txt}``
    and its package's modules, exactly as pip would leave them.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def add(
        self,
        name: str,
        version: str = "1.0",
        entry_points: EntryPoints | None = None,
        files: Mapping[str, str] | None = None,
    ) -> Path:
        """Write the distribution ``name``: metadata, entry points and ``files`` (dedented); its dist-info."""
        dist_info = self.path / f"{name.replace('-', '_')}-{version}.dist-info"
        dist_info.mkdir(parents=True)
        (dist_info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8"
        )
        lines = []
        for group, eps in (entry_points or {}).items():
            lines.append(f"[{group}]")
            lines += [f"{ep_name} = {value}" for ep_name, value in eps.items()]
            lines.append("")
        (dist_info / "entry_points.txt").write_text("\n".join(lines), encoding="utf-8")
        for relative, source in (files or {}).items():
            target = self.path / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(textwrap.dedent(source), encoding="utf-8")
        # The import system caches folder listings: a module written now must be found now.
        importlib.invalidate_caches()
        return dist_info

    def entry_points(self, group: str = "host.celery_task") -> list[Any]:
        """Only this site's entry points of ``group`` (not those installed elsewhere)."""
        import importlib_metadata

        found = importlib_metadata.distributions(path=[str(self.path)])
        return [ep for dist in found for ep in dist.entry_points if ep.group == group]

    def forget_modules(self) -> None:
        """Drop the modules imported from this site, so the next test imports its own."""
        for name, module in list(sys.modules.items()):
            if str(getattr(module, "__file__", "") or "").startswith(str(self.path)):
                del sys.modules[name]


def install_site(directory: Path, name: str, entry_points: EntryPoints) -> Path:
    """The distribution ``name`` with these entry points, alone in ``directory/site``; that folder."""
    site = Site(directory / "site")
    site.path.mkdir()
    site.add(name, "1.0", entry_points=entry_points)
    return site.path
