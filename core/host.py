"""What a ``host`` command needs, built on first use: config, plugins, configured app, discovery."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from core.celery_app import HostCelery
    from core.config import HostConfig
    from core.discovery import Discovery
    from plugins.manager import HostPluginManager


class Host:
    """The configuration, plugins, app and tasks of one command, each built once when first used.

    :param strict: apply ``host.extensions.on_error`` (stop on a broken plugin
        or extension unless it is ``warn``); ``host tasks``, ``host plugins``
        and ``host doctor`` show every problem instead.
    """

    def __init__(self, config_path: str | None, *, strict: bool = True) -> None:
        self.config_path = config_path
        self.strict = strict

    @cached_property
    def config(self) -> HostConfig:
        from core.config import load_config

        return load_config(self.config_path)

    @cached_property
    def plugins(self) -> HostPluginManager:
        from core.celery_app import load_plugins

        return load_plugins(self.config)

    @cached_property
    def app(self) -> HostCelery:
        from core.celery_app import celery, configure_app

        return configure_app(celery, self.config, self.plugins, strict=self.strict, warn=_warn)

    def configure(self) -> HostCelery:
        """Configure the shared app (once)."""
        return self.app

    @cached_property
    def discovery(self) -> Discovery:
        from core.discovery import discover

        return discover(self.app, self.config, plugin_manager=self.plugins)

    def setup_logging(self) -> None:
        from core.config import configure_logging

        configure_logging(self.config)

    def refuse_root(self, what: str) -> None:
        """A worker or beat runs code that messages name: never as root, unless the ini says so."""
        import os

        from core.config import APP_SECTION
        from core.errors import ConfigError

        if os.geteuid() == 0 and not self.config.host["allow_root"]:
            raise ConfigError(
                f"refusing to start {what} as root: its tasks would run with every privilege of the "
                "machine, and a task message is input from the network",
                path=str(self.config.path),
                section=APP_SECTION,
                key="host.allow_root",
                hint="run it as an unprivileged user (supervisor: user=, `host supervisor --user`), "
                "or, for a throw-away container, set host.allow_root = true (or HOST_ALLOW_ROOT=true)",
            )

    def tasks_or_fail(self) -> Discovery:
        """Discovery, failing (exit 2) on any broken extension unless on_error = warn."""
        from core.celery_app import enforce

        found = self.discovery
        enforce(found.errors, self.config, warn=_warn)
        return found


def _warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)
