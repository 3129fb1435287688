"""From the validated ini and the loaded plugins to the settings Celery gets.

In this order:

1. the ini's ``celery.*`` values (with environment overrides and defaults);
   ``host.task_mode = eager`` turns on Celery's ``task_always_eager``, and
   running tasks inline (eager mode, ``host.fallback = eager``) stores their
   results as a worker's when there is a result store;
2. ``host.site_id``: every queue name, the default exchange and routing key,
   and the control and event exchanges get the prefix ``host:SITE:``, so
   hosts sharing a broker never consume each other's tasks (CKAN 2.x does
   the same with its ``ckan:SITE:`` queue prefix);
3. the plugins' :func:`~plugins.hookspecs.host_queues`: declared queues
   (consumed by ``host celeryd`` unless ``-Q`` says otherwise) and routes;
4. the periodic entries: the ini's ``[celerybeat:NAME]`` sections and
   ``celery.beat_schedule``, then the plugins'
   :func:`~plugins.hookspecs.host_beat_schedule`, each checked
   (:mod:`core.beat_entries`); beat's state file under the ini's ``data/``;
5. each plugin's :func:`~plugins.hookspecs.host_celery_config`, which sees
   all of the above and may change anything.

The hooks are called by the plugin manager (:mod:`core.plugin_manager`),
which checks and records what each returns; this module only reads it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config import HostConfig
from core.errors import PluginError

if TYPE_CHECKING:
    from core.plugin_manager import HostPluginManager

DEFAULT_QUEUE = "celery"
#: Exchanges other than the task exchange whose names are shared broker-wide.
_SITE_EXCHANGES = {"control_exchange": "celery", "event_exchange": "celeryev"}


def queue_prefix(config: HostConfig) -> str:
    """``host:SITE:`` with ``host.site_id = SITE``, else nothing."""
    site = config.host.get("site_id") or ""
    return f"host:{site}:" if site else ""


def queue_name(config: HostConfig, name: str) -> str:
    """The name on the broker of the queue plugins and ``-Q`` call ``name``."""
    prefix = queue_prefix(config)
    return name if not prefix or name.startswith(prefix) else prefix + name


#: Celery settings whose default the host changes; the ini can still set them.
HOST_DEFAULTS = {
    # Bad messages are rejected with a clear log line and marked failed.
    "worker_consumer": "core.consumer:HostConsumer",
    # Beat, in `host celerybeat` or `host celeryd -B`, sends only while it holds
    # the site's lock: one scheduler fires however many run (core/beat.py).
    "beat_scheduler": "core.beat:HostScheduler",
}
#: Celery's default beat state file, which it writes into the current folder;
#: the host keeps it under the ini's data/ folder instead.
CELERY_BEAT_FILENAME = "celerybeat-schedule"


def effective_settings(
    config: HostConfig, app: Any, pm: HostPluginManager
) -> list[tuple[str, Any, str, str | None]]:
    """Every setting in force, as ``host config show`` lists it: key, value, source, meaning.

    The ini's ``host.*``, ``celery.*`` and ``smtp.*`` values (with the environment and the
    defaults), the host's own defaults for Celery, what the plugins changed,
    and each plugin's options; passwords masked.
    """
    from core.masking import mask

    values = {f"host.{k}": v for k, v in sorted(config.host.items())}
    values.update({f"celery.{k}": v for k, v in sorted(config.celery.items())})
    values.update({f"smtp.{k}": v for k, v in sorted(config.smtp.items())})
    sources = dict(config.sources)
    for key, value in HOST_DEFAULTS.items():
        if key not in config.celery:
            values[f"celery.{key}"], sources[f"celery.{key}"] = value, "host default"
    if config.celery.get("beat_schedule_filename") in (None, CELERY_BEAT_FILENAME):
        key = "celery.beat_schedule_filename"
        values[key], sources[key] = app.conf.beat_schedule_filename, "host default"
    for key, plugin in sorted(app.host_changed_by.items()):
        values[f"celery.{key}"], sources[f"celery.{key}"] = app.conf.get(key), plugin
    for name, options in pm.options.items():
        for key, value in sorted(options.items()):
            values[f"plugin:{name}.{key}"] = value
            sources[f"plugin:{name}.{key}"] = pm.option_sources.get(name, {}).get(key, "default")
    return [
        (key, mask(value, key), sources.get(key, "default"), meaning(key, value))
        for key, value in values.items()
    ]


def meaning(key: str, value: Any) -> str | None:
    """What a value means where the number alone misleads (``host config show`` prints it).

    ``broker_connection_max_retries`` is the one that ended workers: empty is
    "no limit", and 0 is "give up at once", not "keep retrying".
    """
    if key == "celery.broker_connection_max_retries":
        if value is None:
            return "workers retry the broker for as long as it takes"
        if value == 0:
            return "workers stop at the first failed attempt to reach the broker"
        return f"workers stop after {value} failed attempts to reach the broker"
    if key == "celery.result_backend_max_retries" and isinstance(value, (int, float)):
        return f"a result the store cannot take is retried {value:g} times, then logged and dropped"
    return None


def celery_settings(
    config: HostConfig, pm: HostPluginManager | None
) -> tuple[dict[str, Any], dict[str, str]]:
    """The settings for ``app.conf``, and which plugin set each setting a plugin changed.

    Plugin failures are recorded on the manager (``pm.errors``), not raised.

    :raises ConfigError: for a periodic entry of the ini that cannot be (a
        malformed crontab, bad JSON, an unknown key), naming its file and section.
    """
    settings = copy.deepcopy(dict(config.celery))
    changed_by: dict[str, str] = {}
    for key, value in HOST_DEFAULTS.items():
        settings.setdefault(key, value)
    _apply_task_mode(settings, config, changed_by)
    _apply_site_prefix(settings, config, changed_by)
    _apply_beat_defaults(settings, config)
    if pm is None:
        _apply_beat(settings, config, None, changed_by)
        _apply_beat_site(settings, config)
        return settings, changed_by
    queues, routes = pm.queues()
    _apply_queues(settings, config, queues, routes, changed_by)
    _apply_beat(settings, config, pm, changed_by)
    changed_by.update(pm.adjust_settings(settings, config))
    _recheck_beat(settings, pm, changed_by)
    _apply_beat_site(settings, config)
    return settings, changed_by


_MISSING = object()


def _apply_task_mode(settings: dict[str, Any], config: HostConfig, changed_by: dict[str, str]) -> None:
    """``host.task_mode = eager``: tasks run where they are sent (``task_always_eager``).

    A task run inline, in eager mode or by ``host.fallback = eager``, has its
    result stored as a worker's would be (``task_store_eager_result``), so that
    ``host result ID`` reads it later; only with a result store (Celery's
    disabled store cannot take it), and unless the ini says otherwise.
    """
    mode, fallback = config.host.get("task_mode"), config.host.get("fallback")
    if mode == "eager" and not settings.get("task_always_eager"):
        settings["task_always_eager"] = True
        changed_by["task_always_eager"] = "host.task_mode"
    why = (
        "host.task_mode"
        if mode == "eager"
        else "host.fallback"
        if fallback == "eager"
        else "celery.task_always_eager"
        if settings.get("task_always_eager")
        else None
    )
    if why and settings.get("result_backend") and "task_store_eager_result" not in settings:
        settings["task_store_eager_result"] = True
        changed_by["task_store_eager_result"] = why


def _apply_site_prefix(settings: dict[str, Any], config: HostConfig, changed_by: dict[str, str]) -> None:
    """Give every queue, exchange and routing key the site prefix, so sites never meet."""
    prefix = queue_prefix(config)
    if not prefix:
        return
    before = copy.deepcopy(settings)
    settings["task_default_queue"] = prefix + (settings.get("task_default_queue") or DEFAULT_QUEUE)
    for name in ("task_default_exchange", "task_default_routing_key"):
        if settings.get(name):  # unset, Celery takes them from the default queue
            settings[name] = prefix + settings[name]
    for name, default in _SITE_EXCHANGES.items():
        settings[name] = prefix + (settings.get(name) or default)
    if isinstance(settings.get("task_queues"), Mapping):
        settings["task_queues"] = {
            prefix + name: _prefixed_queue_options(options, prefix)
            for name, options in settings["task_queues"].items()
        }
    if settings.get("task_routes"):
        settings["task_routes"] = _prefixed_routes(settings["task_routes"], prefix)
    for key in settings:
        if settings[key] != before.get(key, _MISSING):
            changed_by[key] = "host.site_id"


def _prefixed_queue_options(options: Any, prefix: str) -> Any:
    """A queue's options with its own exchange and routing key prefixed too.

    Two sites binding their queues to one shared exchange and key would each
    receive the other's messages.
    """
    if not isinstance(options, Mapping):
        return options
    return {
        key: prefix + value
        if key in ("exchange", "routing_key", "binding_key") and isinstance(value, str) and value
        else value
        for key, value in options.items()
    }


def _prefixed_routes(routes: Any, prefix: str) -> Any:
    """The ini's routes with the site prefix on every queue they name.

    As Celery reads ``task_routes``: one router or a list of routers, where a
    router is a mapping ``{pattern: route}``, a list of ``[pattern, route]``
    pairs, or the dotted path of a router function; a route is ``{"queue":
    NAME, ...}`` or a bare queue name. A router function chooses its queue at
    run time and is left as it is: it should return
    ``core.settings.queue_name(config, NAME)``.
    """
    if isinstance(routes, (list, tuple)):
        return [_prefixed_router(router, prefix) for router in routes]
    return _prefixed_router(routes, prefix)


def _prefixed_router(router: Any, prefix: str) -> Any:
    if isinstance(router, Mapping):
        return {pattern: _prefixed_route(route, prefix) for pattern, route in router.items()}
    if isinstance(router, (list, tuple)):
        return [[item[0], _prefixed_route(item[1], prefix)] if _is_pair(item) else item for item in router]
    return router  # the dotted path of a router function


def _is_pair(item: Any) -> bool:
    return isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str)


def _prefixed_route(route: Any, prefix: str) -> Any:
    if isinstance(route, str):
        return prefix + route
    if isinstance(route, Mapping) and isinstance(route.get("queue"), str):
        return {**route, "queue": prefix + route["queue"]}
    return route


def _apply_queues(
    settings: dict[str, Any],
    config: HostConfig,
    queues: dict[str, list[str]],
    routes: dict[str, tuple[str, str]],
    changed_by: dict[str, str],
) -> None:
    if not queues:
        return
    default = settings.get("task_default_queue") or DEFAULT_QUEUE
    declared = dict(settings.get("task_queues") or {}) or {default: _host_queue(settings, default)}
    for queue in queues:
        name = queue_name(config, queue)
        declared.setdefault(name, _host_queue(settings, name))
    settings["task_queues"] = declared
    plugin_routes = {pattern: {"queue": queue_name(config, queue)} for pattern, (queue, _) in routes.items()}
    ini_routes = settings.get("task_routes")
    # Celery tries routers in order: the ini's own routes win.
    settings["task_routes"] = [*_as_routers(ini_routes), plugin_routes]
    changed_by["task_queues"] = changed_by["task_routes"] = "plugins (host_queues)"


def _host_queue(settings: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A queue the host declares: on the default exchange, its own name as its routing key,
    of the type ``celery.task_default_queue_type`` asks for.

    Celery gives that type (``x-queue-type``) only to the default queue it
    declares itself, when ``task_queues`` is empty; once the plugins' queues
    fill ``task_queues`` the host must give it to each, or ``quorum`` would
    silently declare classic queues. Queues the ini declares in
    ``celery.task_queues`` are left as written, as Celery leaves them.
    """
    options: dict[str, Any] = {"routing_key": name}
    if settings.get("task_default_queue_type") == "quorum":  # the one type Celery's check knows
        options["queue_arguments"] = {"x-queue-type": "quorum"}
    return options


def _as_routers(routes: Any) -> list[Any]:
    if not routes:
        return []
    return list(routes) if isinstance(routes, (list, tuple)) else [routes]


def _apply_beat_defaults(settings: dict[str, Any], config: HostConfig) -> None:
    """Beat's scheduler elects one sender per site, and keeps its state under the ini's ``data/``.

    A relative ``celery.beat_schedule_filename`` is taken from the ini's folder,
    not from wherever the command was started.
    """
    filename = settings.get("beat_schedule_filename")
    if not filename or filename == CELERY_BEAT_FILENAME:
        settings["beat_schedule_filename"] = str(config.path.parent / "data" / CELERY_BEAT_FILENAME)
    elif not Path(filename).is_absolute():
        settings["beat_schedule_filename"] = str(config.path.parent / filename)


def _apply_beat(
    settings: dict[str, Any], config: HostConfig, pm: HostPluginManager | None, changed_by: dict[str, str]
) -> None:
    """One schedule from the ini's ``[celerybeat:NAME]`` sections and ``celery.beat_schedule``,
    and the plugins' entries (an ini entry wins on a name clash), each checked
    (:mod:`core.beat_entries`).
    """
    from core.beat_entries import beat_sections, merge

    plugin_entries = pm.beat_entries() if pm is not None else {}
    schedule, _ = merge(config, plugin_entries, pm)
    if not schedule and "beat_schedule" not in settings:
        return
    settings["beat_schedule"] = schedule
    contributed = []
    if plugin_entries:
        contributed.append("plugins (host_beat_schedule)")
    if beat_sections(config):
        contributed.append("[celerybeat:NAME] sections")
    if contributed:
        changed_by["beat_schedule"] = ", ".join(contributed)


def _recheck_beat(settings: dict[str, Any], pm: HostPluginManager, changed_by: dict[str, str]) -> None:
    """Entries a plugin's ``host_celery_config`` added or changed are checked like the others."""
    from core.beat_entries import checked_entry

    changer = changed_by.get("beat_schedule", "")
    plugin = pm.record(changer[len("plugin ") :]) if changer.startswith("plugin ") else None
    if plugin is None or not isinstance(settings.get("beat_schedule"), Mapping):
        return
    schedule = dict(settings["beat_schedule"])
    for name, entry in list(schedule.items()):

        def error(message: str, hint: str | None = None, *, _name: str = name) -> PluginError:
            return plugin.error_for(f"host_celery_config() entry {_name!r}: {message}", hint=hint)

        try:
            schedule[name] = checked_entry(entry, error)
        except PluginError as e:
            pm.fail(plugin, e)
            del schedule[name]
    settings["beat_schedule"] = schedule


def _apply_beat_site(settings: dict[str, Any], config: HostConfig) -> None:
    """An entry's queue, as plugins and ``-Q`` name it, gets the site prefix."""
    prefix = queue_prefix(config)
    if not prefix:
        return
    for entry in (settings.get("beat_schedule") or {}).values():
        options = entry.get("options") if isinstance(entry, dict) else None
        if isinstance(options, Mapping) and isinstance(options.get("queue"), str):
            entry["options"] = {**options, "queue": queue_name(config, options["queue"])}
