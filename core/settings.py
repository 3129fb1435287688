"""From the validated ini and the loaded plugins to the settings Celery gets.

In this order:

1. the ini's ``celery.*`` values (with environment overrides and defaults);
2. ``host.site_id``: every queue name, the default exchange and routing key,
   and the control and event exchanges get the prefix ``host:SITE:``, so
   hosts sharing a broker never consume each other's tasks (CKAN 2.x does
   the same with its ``ckan:SITE:`` queue prefix);
3. the plugins' :func:`~plugins.hookspecs.host_queues`: declared queues
   (consumed by ``host celeryd`` unless ``-Q`` says otherwise) and routes;
4. the plugins' :func:`~plugins.hookspecs.host_beat_schedule`;
5. each plugin's :func:`~plugins.hookspecs.host_celery_config`, which sees
   all of the above and may change anything.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from core.config import HostConfig

if TYPE_CHECKING:
    from plugins.manager import HostPluginManager

DEFAULT_QUEUE = "celery"
#: Exchanges other than the task exchange whose names are shared broker-wide.
_SITE_EXCHANGES = {"control_exchange": "celery", "event_exchange": "celeryev"}
_QUEUE_NAME = re.compile(r"^[^\s,]+$")


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
}


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
    """
    settings = copy.deepcopy(dict(config.celery))
    changed_by: dict[str, str] = {}
    for key, value in HOST_DEFAULTS.items():
        settings.setdefault(key, value)
    _apply_site_prefix(settings, config, changed_by)
    if pm is None:
        return settings, changed_by
    queues, routes = plugin_queues(pm)
    _apply_queues(settings, config, queues, routes, changed_by)
    _apply_beat(settings, pm, changed_by)
    for plugin in pm.implementing("host_celery_config"):
        before = copy.deepcopy(settings)
        try:
            pm.call_one(plugin, "host_celery_config", config=settings, host_config=config)
        except Exception as e:
            settings.clear()
            settings.update(before)  # half a change is worse than none
            pm.raised(plugin, "host_celery_config", e)
            continue
        for key in set(settings) | set(before):
            if settings.get(key, _MISSING) != before.get(key, _MISSING):
                changed_by[key] = f"plugin {plugin.name}"
    return settings, changed_by


_MISSING = object()


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


def plugin_queues(pm: HostPluginManager) -> tuple[dict[str, list[str]], dict[str, tuple[str, str]]]:
    """Every plugin's queues, and the routes ``{pattern: (queue, plugin)}`` they ask for.

    Two plugins routing the same pattern to different queues is an error of
    the second one.
    """
    queues: dict[str, list[str]] = {}
    routes: dict[str, tuple[str, str]] = {}
    for plugin, declared in pm.call_each("host_queues"):
        if declared is None:
            continue
        checked = _checked_queues(declared)
        if checked is None:
            pm.returned(plugin, "host_queues", declared, "a mapping of queue names to lists of task names")
            continue
        clash = next(
            ((p, routes[p]) for q, ps in checked.items() for p in ps if p in routes and routes[p][0] != q),
            None,
        )
        if clash:
            pattern, (queue, owner) = clash
            message = f"routes {pattern!r} to a queue, but plugin {owner!r} already routes it to {queue!r}"
            pm.fail(plugin, plugin.error_for(message, hint="route each task name from one plugin only"))
            continue
        plugin.queues = checked
        for queue, patterns in checked.items():
            queues.setdefault(queue, [])
            for pattern in patterns:
                if pattern not in routes:
                    queues[queue].append(pattern)
                    routes[pattern] = (queue, plugin.name)
    return queues, routes


def _checked_queues(declared: Any) -> dict[str, list[str]] | None:
    if not isinstance(declared, Mapping):
        return None
    checked = {}
    for queue, patterns in declared.items():
        if not isinstance(queue, str) or not _QUEUE_NAME.match(queue):
            return None
        if isinstance(patterns, str) or not isinstance(patterns, Iterable):
            return None
        patterns = list(patterns)
        if not all(isinstance(p, str) and p for p in patterns):
            return None
        checked[queue] = patterns
    return checked


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
    declared = dict(settings.get("task_queues") or {}) or {default: {"routing_key": default}}
    for queue in queues:
        name = queue_name(config, queue)
        # The default exchange (direct) with the queue's own name as its key.
        declared.setdefault(name, {"routing_key": name})
    settings["task_queues"] = declared
    plugin_routes = {pattern: {"queue": queue_name(config, queue)} for pattern, (queue, _) in routes.items()}
    ini_routes = settings.get("task_routes")
    # Celery tries routers in order: the ini's own routes win.
    settings["task_routes"] = [*_as_routers(ini_routes), plugin_routes]
    changed_by["task_queues"] = changed_by["task_routes"] = "plugins (host_queues)"


def _as_routers(routes: Any) -> list[Any]:
    if not routes:
        return []
    return list(routes) if isinstance(routes, (list, tuple)) else [routes]


def _apply_beat(settings: dict[str, Any], pm: HostPluginManager, changed_by: dict[str, str]) -> None:
    schedule = dict(settings.get("beat_schedule") or {})
    added = False
    for plugin, entries in pm.call_each("host_beat_schedule"):
        if entries is None:
            continue
        if not _valid_schedule(entries):
            expected = 'a mapping of entry names to {"task": ..., "schedule": ...}'
            pm.returned(plugin, "host_beat_schedule", entries, expected)
            continue
        plugin.beat = list(entries)
        for name, entry in entries.items():
            # The ini's own entries win on a name clash.
            schedule.setdefault(name, dict(entry))
            added = True
    if added:
        settings["beat_schedule"] = schedule
        changed_by["beat_schedule"] = "plugins (host_beat_schedule)"


def _valid_schedule(entries: Any) -> bool:
    return isinstance(entries, Mapping) and all(
        isinstance(name, str)
        and isinstance(entry, Mapping)
        and isinstance(entry.get("task"), str)
        and entry.get("schedule") is not None
        for name, entry in entries.items()
    )


_QUEUE_OPTIONS = ("-Q", "--queues", "-X", "--exclude-queues")


def site_queues(args: tuple[str, ...] | list[str], config: HostConfig) -> list[str]:
    """With ``host.site_id``, the queue names given to ``-Q``/``-X`` get the site prefix.

    Operators name queues as the plugins declare them (``-Q example``); the
    worker consumes ``host:SITE:example``. Every other argument is untouched.
    """
    if not queue_prefix(config):
        return list(args)

    def prefixed(names: str) -> str:
        return ",".join(queue_name(config, n.strip()) for n in names.split(",") if n.strip())

    out: list[str] = []
    expect_value = False
    for arg in args:
        if arg == "--":
            out.append(arg)
            expect_value = False
        elif expect_value:
            out.append(prefixed(arg))
            expect_value = False
        elif arg in _QUEUE_OPTIONS:
            out.append(arg)
            expect_value = True
        elif arg.startswith(("--queues=", "--exclude-queues=")):
            option, _, names = arg.partition("=")
            out.append(f"{option}={prefixed(names)}")
        elif arg[:2] in ("-Q", "-X") and len(arg) > 2:
            out.append(arg[:2] + prefixed(arg[2:]))
        else:
            out.append(arg)
    return out
