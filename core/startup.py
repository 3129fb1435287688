"""Start-up: the one path from an ini file to a configured app and its tasks.

    ini --> config --> plugins --> settings --> app --> discovery
    load_config   load_plugins  celery_settings  configure_app  discover

Every command, ``host doctor``, the lazy ``$HOST_CONFIG`` path, ``bench/`` and
the tests take this path, through :class:`Host` (each step built once, when
first used) or :func:`configure`; nothing else wires it. A step that fails
raises a :class:`~core.errors.HostError` naming the file, section and key, or
the plugin or extension; :func:`diagnose` runs the same steps and reports each
problem instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from core.config import APP_SECTION, HostConfig, configure_logging, load_config
from core.errors import ConfigError, ExtensionError, HostError, ResultTimeout, combine

if TYPE_CHECKING:
    from core.app import HostCelery
    from core.beat_entries import Source
    from core.discovery import Discovery
    from core.health import Check
    from core.plugin_manager import HostPluginManager, Plugin

logger = logging.getLogger("host")

Warn = Callable[[str], None]


class Host:
    """The configuration, plugins, app and tasks of one command, each built once when first used.

    :param app: the app to configure (the shared one, :data:`core.celery_app.celery`).
    :param strict: apply ``host.extensions.on_error`` (stop on a broken plugin
        or extension unless it is ``warn``); ``host tasks``, ``host plugins``
        and ``host doctor`` show every problem instead.
    :param warn: shows a skipped plugin or extension (default: the ``host`` logger).
    """

    def __init__(
        self, app: HostCelery, config_path: str | None, *, strict: bool = True, warn: Warn | None = None
    ) -> None:
        self._app, self.config_path, self.strict, self.warn = app, config_path, strict, warn

    @cached_property
    def config(self) -> HostConfig:
        return load_config(self.config_path)

    @cached_property
    def plugins(self) -> HostPluginManager:
        return load_plugins(self.config)

    @cached_property
    def app(self) -> HostCelery:
        return configure_app(self._app, self.config, self.plugins, strict=self.strict, warn=self.warn)

    @cached_property
    def discovery(self) -> Discovery:
        from core.discovery import discover

        return discover(self.app, self.config, plugin_manager=self.plugins)

    def setup_logging(self) -> None:
        configure_logging(self.config)

    def refuse_root(self, what: str) -> None:
        """A worker or beat runs code that messages name: never as root, unless the ini says so."""
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
        """Discovery, failing (exit 2) on any broken extension unless on_error = warn.

        The modules found are included in the app's configuration, so that
        the worker's pool processes import them too.
        """
        found = self.discovery
        enforce(found.errors, self.config, self.warn)
        include = self.app.conf.include or ()
        self.app.conf.include = list(dict.fromkeys([*include, *found.modules]))
        return found

    def known_tasks(self) -> list[str]:
        """Every task name a worker on this configuration runs, Celery's own left out."""
        found = self.discovery
        return sorted(set(found.task_names) | {n for n in self.app.tasks if not n.startswith("celery.")})

    def require_task(self, name: str) -> None:
        """``name`` is a task a worker on this configuration runs; else an error (exit 2).

        An unknown name gets the closest known ones. A task of a broken extension
        (one its modules registered before it failed, or a name it shares with
        another extension) is refused, naming both: the message would wait for a
        worker that cannot start, or run another extension's task of that name.
        Any other task is refused too while an extension is broken and
        ``host.extensions.on_error`` is not ``warn``, with the error ``host
        celeryd`` stops on: no worker can start on this configuration to run it.
        """
        from core.discovery import check_task_name

        broken = [e.distribution for e in self.discovery.errors if isinstance(e, ExtensionError)]
        for ext in self.discovery.extensions:
            if ext.error is not None and name == ext.error.duplicate_task:
                self._contested(name, ext.error)
            elif ext.error is not None and name in ext.lost:
                raise HostError(
                    f"task {name!r} belongs to {ext.label}, which is broken, so no worker runs it: "
                    f"{ext.error.message}",
                    hint=ext.error.hint,
                )
        check_task_name(name, self.known_tasks(), broken=broken)
        if self.config.host["extensions.on_error"] != "warn":
            enforce(self.discovery.errors, self.config)

    def _contested(self, name: str, error: ExtensionError) -> None:
        """Two extensions define ``name``: refuse while no worker can start, else warn."""
        owner = next((row for row in self.discovery.task_rows() if row["task"] == name), None)
        first = f"{owner['extension']}=={owner['version']} (module {owner['module']})" if owner else "another"
        problem = (
            f"task {name!r} is defined by two extensions, {first} and {error.distribution}=={error.version} "
            f"(module {error.module}), and {error.distribution} was left out"
        )
        hint = (
            "rename one of the tasks, or disable one of the extensions: "
            f"host.celery_task.disabled = {error.distribution}"
        )
        if self.config.host["extensions.on_error"] != "warn":
            raise HostError(f"{problem}: no worker can start on this configuration", hint=hint)
        (self.warn or logger.warning)(f"{problem}: a worker runs the task of {first}")

    def why_pending(self, name: str, queue: str | None, task_id: str, error: HostError) -> HostError:
        """Why a task sent with ``--wait`` is still PENDING: no worker consumes its queue, if so.

        Asked only once the wait has failed (:func:`core.control.queue_info`:
        consumer counts on RabbitMQ and the embedded broker); ``error`` is
        returned unchanged when the task is not PENDING, the broker cannot
        count consumers, or some worker does consume the queue.
        """
        from core.control import queue_info
        from core.settings import queue_prefix

        app = self.app
        try:
            if app.backend.get_task_meta(task_id, cache=False).get("status") != "PENDING":
                return error
            options = {"queue": self.queue_name(queue)} if queue else {}
            routed = app.amqp.router.route(options, name, (), {})["queue"]
            full = str(getattr(routed, "name", routed))
            short = full.removeprefix(queue_prefix(self.config))
            [info] = queue_info(app, [short])
        except Exception:  # the question is a courtesy: never hide the real error behind another
            return error
        if info.consumers is None or info.consumers > 0:
            return error
        waiting = f" ({info.waiting} message(s) waiting in it)" if info.waiting else ""
        worker = f"host celeryd --config {self.config.path}"
        if short not in self._consumed_queues():
            worker += f" -- -Q {short}"
        return ResultTimeout(
            f"{error.message}: no worker consumes the queue {short!r}{waiting}",
            hint=f"start one: {worker}; the task runs once one does (host result {task_id} shows it then)",
        )

    def _consumed_queues(self) -> list[str]:
        """The queues ``host celeryd`` consumes without ``-Q``, as plugins name them."""
        from core.control import known_queues
        from core.settings import queue_prefix

        return [q.removeprefix(queue_prefix(self.config)) for q in known_queues(self.app)]

    def queue_name(self, name: str) -> str:
        """The name on the broker of the queue plugins and ``-Q`` call ``name``."""
        from core.settings import queue_name

        return queue_name(self.config, name)

    def beat_sources(self) -> dict[str, Source]:
        """Where each periodic entry came from: an ini section or key, or a plugin."""
        from core.beat_entries import entry_sources

        schedule = self.app.conf.beat_schedule or {}
        return entry_sources(schedule, self.config, self.plugins, self.app.host_changed_by)

    def beat_problems(self) -> list[tuple[str, HostError]]:
        """``(entry, error)`` for each periodic entry whose task no installed extension provides.

        An ini entry's error is a :class:`ConfigError` naming its file and
        section; a plugin's is that plugin's :class:`~core.errors.PluginError`.
        """
        from core.beat_entries import unknown_task_errors

        schedule = self.app.conf.beat_schedule or {}
        known = set(self.discovery.task_names) | set(self.app.tasks)
        return unknown_task_errors(schedule, known, self.beat_sources(), self.plugins)

    def beat_or_fail(self) -> dict[str, Any]:
        """The schedule beat runs, every entry's task checked, for ``host celerybeat`` and ``celeryd -B``.

        An ini entry naming a task nobody provides stops the command (exit 2);
        a plugin's entry is the plugin's error, which ``host.extensions.on_error
        = warn`` skips with a warning (the entry is left out). So does a lock
        store beat cannot elect through (``host.locks.url``).
        """
        from core.beat import check_election

        check_election(self.app)
        problems = self.beat_problems()
        ini = [error for _, error in problems if isinstance(error, ConfigError)]
        if ini:
            raise combine_entries(ini)
        from_plugins = [(name, error) for name, error in problems if not isinstance(error, ConfigError)]
        enforce([error for _, error in from_plugins], self.config, self.warn)
        schedule = dict(self.app.conf.beat_schedule or {})
        if from_plugins:
            for name, _ in from_plugins:
                schedule.pop(name, None)
            self.app.conf.beat_schedule = schedule
        return schedule

    def beat_schedule_folder(self) -> Path:
        """The folder beat keeps its state file in (``data/`` by the ini unless it says), created.

        Created private (0700), as the embedded stores' folder is: it must be
        writable by the user beat runs as.
        """
        key = "celery.beat_schedule_filename"
        folder = Path(self.config.path.parent, self.app.conf.beat_schedule_filename).parent
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(
                f"cannot create the folder {folder}: {e.strerror}",
                path=str(self.config.origin(APP_SECTION, key)),
                section=APP_SECTION,
                key=key,
                hint="create it, writable by the user beat runs as, or name another file",
            ) from e
        return folder


def combine_entries(errors: Sequence[HostError]) -> HostError:
    """One error for several periodic entries that cannot run: the only one, or a numbered list."""
    if len(errors) == 1:
        return errors[0]
    text = "\n".join(f"  {i}. {e}" for i, e in enumerate(errors, 1))
    return ConfigError(f"{len(errors)} periodic entries cannot run:\n{text}", hint="correct each entry")


class PluginCommands(NamedTuple):
    """The commands the enabled plugins add, the plugin adding each, and the first plugin problem."""

    commands: dict[str, Any]
    owners: dict[str, Plugin]
    problem: str | None


def plugin_commands(config_path: str | None, reserved: set[str]) -> PluginCommands:
    """The commands the enabled plugins add, and the first plugin problem, if any.

    Only ``host.plugins`` is read, not the whole configuration, so that ``host
    --help`` stays fast; a command that runs validates everything.

    :raises HostError: when there is no configuration file (a broken one is a problem returned).
    """
    from core.config import plugin_names, resolve_config_path
    from core.plugin_manager import make_plugin_manager, registered

    path = resolve_config_path(config_path, os.environ)
    try:
        names = plugin_names(path)
    except HostError as e:  # a broken file: the commands that run say so in full
        return PluginCommands({}, {}, str(e).splitlines()[0])
    if not names and not registered:  # (registered: plugins a test registered in-process)
        return PluginCommands({}, {}, None)
    pm = make_plugin_manager(names)
    commands = pm.commands(reserved)
    owners = {name: plugin for plugin in pm.active for name in plugin.commands}
    return PluginCommands(commands, owners, str(pm.errors[0]).splitlines()[0] if pm.errors else None)


def settings_for(config: HostConfig) -> dict[str, Any]:
    """The Celery settings the host derives from ``config`` and its plugins, without an app (bench/)."""
    from core.settings import celery_settings

    settings, _ = celery_settings(config, load_plugins(config))
    return settings


def load_plugins(config: HostConfig) -> HostPluginManager:
    """Load the plugins ``host.plugins`` names and read their ``[plugin:NAME]`` options.

    A broken plugin is recorded on the manager, not raised; an invalid option is
    a :class:`ConfigError`.
    """
    from core.plugin_manager import make_plugin_manager
    from core.plugin_options import read_options

    pm = make_plugin_manager(config.host["plugins"])
    read_options(pm, config)
    return pm


def configure_app(
    app: HostCelery,
    config: HostConfig,
    plugin_manager: HostPluginManager | None = None,
    *,
    strict: bool = True,
    warn: Warn | None = None,
    lazy: bool = False,
) -> HostCelery:
    """Apply a configuration and its plugins to an app: the one place settings reach ``app.conf``.

    (The one setting written later is ``include``: the task modules discovery
    found, added by :meth:`Host.tasks_or_fail`, which needs the configured app
    to find them.)

    :param plugin_manager: the loaded plugins; default: load those the ini enables.
    :param strict: apply ``host.extensions.on_error`` to broken plugins: raise
        unless it is ``warn``. ``host plugins`` and ``host doctor`` pass False
        and show the errors themselves.
    :param warn: shows a skipped plugin's error (default: the ``host`` logger).
    :param lazy: called from within Celery's first use of the configuration.
    """
    from core import signals
    from core.settings import celery_settings
    from core.urls import check_urls

    pm = plugin_manager if plugin_manager is not None else load_plugins(config)
    settings, changed_by = celery_settings(config, pm)
    if strict:
        enforce(pm.errors, config, warn)
    check_urls(config, settings, changed_by)
    app.host_config, app.host_plugins, app.host_changed_by = config, pm, changed_by
    # Within on_configure, Celery is reading the configuration: force=True would recurse.
    app.config_from_object(settings, force=not lazy)
    signals.connect(app, pm)
    return app


def enforce(errors: Sequence[HostError], config: HostConfig, warn: Warn | None = None) -> None:
    """Stop on broken extensions or plugins, unless ``host.extensions.on_error = warn``."""
    if not errors:
        return
    if config.host["extensions.on_error"] != "warn":
        raise combine(errors)
    for error in errors:
        (warn or logger.warning)(f"skipped: {error}")


def configure(app: HostCelery, path: str | os.PathLike[str] | None = None, **kwargs: Any) -> HostCelery:
    """Configure ``app`` from an ini file; for processes that send tasks.

    :param path: the ini file; ``None`` means ``$HOST_CONFIG`` or ./development.ini.
    :param kwargs: passed to :func:`core.config.load_config` (``environ``).
    """
    return configure_app(app, load_config(path, **kwargs))


def configure_from_environment(app: HostCelery) -> HostConfig:
    """The lazy path: Celery needs the settings and nothing configured the app."""
    config = load_config(None, os.environ)
    configure_app(app, config, lazy=True)
    return config


def diagnose(app: HostCelery, config_path: str | None, timeout: float, commands: set[str]) -> Iterator[Check]:
    """The start-up path, step by step, each problem reported instead of raised (``host doctor``).

    A step whose input is missing (no valid configuration, say) is skipped
    rather than failing again.

    :param commands: the commands ``host`` has itself, which no plugin's command may take.
    """
    from core import health
    from core.health import Check, from_error

    # One verdict on the file: "ok" only once everything read from it is checked,
    # its URLs and the plugins' options included, so a problem is never an "ok"
    # and a "FAIL" for the same file.
    try:
        config = load_config(config_path)
        configure_logging(config)
        pm = load_plugins(config)
        configure_app(app, config, pm, strict=False)
    except HostError as e:
        yield from_error("config", e)
        return
    yield Check("config", True, f"{config.path} is valid")
    from core.discovery import discover

    yield from health.plugin_checks(pm, commands)
    found = discover(app, config, plugin_manager=pm)
    yield from health.extension_checks(found)
    from core.beat import check_election

    known = set(found.task_names) | set(app.tasks)
    contested = health.contested_tasks(found)
    yield from health.beat_checks(app, config, pm, known, check_election, contested)
    yield from health.notification_checks(config)
    yield from health.service_checks(app, config, timeout)
    yield from health.outage_checks(app)
    yield from health.embedded_store_checks(app)
    from core import exclusive, locks

    needed = any(exclusive.is_exclusive(task) for task in app.tasks.values())
    yield from locks.doctor_checks(app, needed=needed)
