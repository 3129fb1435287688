"""The ini a test runs on: written from a few keyword arguments, on the embedded broker by default.

::

    ini_text({"celery.task_time_limit": 30}, plugins=["weather"],
             plugin_options={"weather": {"city": "Oslo"}}, eager=True)

gives::

    [app:main]
    celery.broker_url = embedded+sqlite:///%(here)s/data/broker.sqlite
    celery.result_backend = embedded+sqlite:///%(here)s/data/results.sqlite
    ...
    celery.task_time_limit = 30
    host.plugins = weather
    host.task_mode = eager

    [plugin:weather]
    city = Oslo

The broker and the result store are SQLite files in a ``data/`` folder
beside the ini, so that each test has its own and needs no server.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

#: ``[app:main]`` of every test's ini unless the test says otherwise.
DEFAULTS: dict[str, str] = {
    "celery.broker_url": "embedded+sqlite:///%(here)s/data/broker.sqlite",
    "celery.result_backend": "embedded+sqlite:///%(here)s/data/results.sqlite",
    # Store the task name and arguments with each result (host result shows them).
    "celery.result_extended": "true",
    # Tests often run as root (CI, containers), where a worker refuses to start otherwise.
    "host.allow_root": "true",
}


def ini_value(value: Any) -> str:
    """A Python value as the ini writes it: ``true``/``false``, numbers, JSON for lists and dicts."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


def ini_text(
    settings: Mapping[str, Any] | None = None,
    *,
    plugins: Iterable[str] = (),
    plugin_options: Mapping[str, Mapping[str, Any]] | None = None,
    eager: bool = False,
) -> str:
    """The text of an ini file.

    :param settings: ``[app:main]`` keys (``celery.*``, ``host.*``, ``smtp.*``), over :data:`DEFAULTS`.
    :param plugins: the plugins to enable, in order (``host.plugins``).
    :param plugin_options: ``{plugin: {option: value}}``, each a ``[plugin:NAME]`` section.
    :param eager: ``host.task_mode = eager``: tasks run where they are sent, with no worker.
    """
    keys = dict(DEFAULTS)
    names = list(plugins)
    if names:
        keys["host.plugins"] = " ".join(names)
    if eager:
        keys["host.task_mode"] = "eager"
    keys.update({key: ini_value(value) for key, value in (settings or {}).items()})
    sections = {"app:main": keys}
    for plugin, options in (plugin_options or {}).items():
        sections[f"plugin:{plugin}"] = {key: ini_value(value) for key, value in options.items()}
    return "\n".join(
        "\n".join([f"[{name}]", *(f"{key} = {value}" for key, value in values.items())]) + "\n"
        for name, values in sections.items()
    )
