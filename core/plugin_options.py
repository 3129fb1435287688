"""Plugin options: declared by ``host_config_declarations``, read from ``[plugin:NAME]``.

Each enabled plugin declares its options (name, type, default, help). Its
section of the ini is then validated like ``[app:main]``: an unknown key or a
value of the wrong type is a :class:`~core.errors.ConfigError` naming the
file, the section and the key. ``HOST_PLUGIN_<NAME>_<OPTION>`` in the
environment overrides the file.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from core.config import ENVIRONMENT, PLUGIN_ENV_PREFIX, HostConfig, plugin_section_name, suggest
from core.errors import ConfigError
from core.errors_text import near
from core.options import Option
from core.plugin_manager import HostPluginManager, Plugin


def read_options(pm: HostPluginManager, config: HostConfig) -> None:
    """Validate each active plugin's section and environment into ``pm.options``.

    :raises ConfigError: for an unknown key, a wrong type, a value not among
        the choices, or a required option that is missing.
    """
    _check_sections(pm, config)
    declared = pm.option_declarations()
    _check_environment(pm, declared, config)
    for plugin in pm.active:
        sources = pm.option_sources[plugin.name] = {}
        pm.options[plugin.name] = _read_plugin(plugin, declared.get(plugin.name, {}), config, sources)


def _check_environment(
    pm: HostPluginManager, declared: dict[str, dict[str, Option]], config: HostConfig
) -> None:
    """A ``HOST_PLUGIN_<NAME>_...`` variable of an active plugin must name one of its options."""
    known = {env_var(p.name, o) for p in pm.active for o in declared.get(p.name, {})}
    for plugin in pm.active:
        prefix = env_var(plugin.name, "")
        options = {env_var(plugin.name, o): o for o in declared.get(plugin.name, {})}
        for var in sorted(config.plugin_environ):
            if var.startswith(prefix) and var not in known:
                raise ConfigError(
                    f"unknown option of plugin {plugin.label} in the environment",
                    path=ENVIRONMENT,
                    key=var,
                    hint=suggest(var, options, render=str)
                    if options
                    else "the plugin declares no options: unset the variable",
                )
    _check_misspelled_plugin_variables(pm, declared, config)


def _check_misspelled_plugin_variables(
    pm: HostPluginManager, declared: dict[str, dict[str, Option]], config: HostConfig
) -> None:
    """``HOST_PLUGIN_WEATHR_RETRIES`` for ``weather``'s ``retries``: a typo in the plugin's part.

    A variable of a plugin that is installed but not enabled, or of none near
    an enabled one, is left alone: it may be meant for another configuration.
    """
    installed = tuple(env_var(p.name, "") for p in pm.records) + tuple(env_var(n, "") for n in pm.order)
    options = {env_var(p.name, o): p for p in pm.active for o in declared.get(p.name, {})}
    bare = {var[len(PLUGIN_ENV_PREFIX) :]: var for var in options}
    for var in sorted(config.plugin_environ):
        if var.startswith(installed):
            continue
        close = near(var[len(PLUGIN_ENV_PREFIX) :], bare, cutoff=0.8)
        if close:
            meant = bare[close[0]]
            raise ConfigError(
                f"this variable sets no plugin's option, but looks meant for plugin {options[meant].label}: "
                "it is not read",
                path=ENVIRONMENT,
                key=var,
                hint=f"did you mean {meant}?",
            )


def _check_sections(pm: HostPluginManager, config: HostConfig) -> None:
    """A section that looks meant for an enabled plugin, but is not its ``[plugin:NAME]``, is an error.

    Its options would silently not be read: ``[plugin:wether]`` or
    ``[plugins:weather]`` for ``host.plugins = weather``. A section of an
    installed plugin that is not enabled is left alone (it is not read).
    """
    if config.parser is None:
        return
    enabled = {plugin_section_name(name): name for name in pm.order}
    installed = {plugin_section_name(p.name) for p in pm.records}
    for section in config.parser.sections():
        if section in enabled or section in installed:
            continue
        close = near(section, enabled, cutoff=0.8) or _part_of(section, enabled)
        if close:
            keys = list(config.parser[section])
            path = config.origin(section, keys[0]) if keys else config.path
            name = enabled[close[0]]
            raise ConfigError(
                f"this section configures no plugin, but looks meant for plugin {name!r}, "
                f"which host.plugins enables: its options are not read from here",
                path=str(path),
                section=section,
                hint=f"did you mean [{close[0]}]?",
            )


def _part_of(section: str, enabled: dict[str, str]) -> list[str]:
    """``[plugin:weather]`` for ``hostext_weather`` (or the other way round): a part of the name."""
    name = section.removeprefix("plugin:")
    if name == section or not name:
        return []

    def parts(text: str) -> set[str]:
        return set(re.split(r"[-_.]", text.lower())) - {""}

    return [s for s, n in enabled.items() if parts(name) < parts(n) or parts(n) < parts(name)][:1]


def env_var(plugin: str, option: str) -> str:
    """``example``, ``greeting`` -> ``HOST_PLUGIN_EXAMPLE_GREETING``."""
    return PLUGIN_ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", f"{plugin}_{option}").upper()


def _read_plugin(
    plugin: Plugin, options: dict[str, Option], config: HostConfig, sources: dict[str, str]
) -> dict[str, Any]:
    section = plugin_section_name(plugin.name)
    values: dict[str, Any] = {}
    for key, raw in config.plugin_section(plugin.name).items():
        path = str(config.origin(section, key))  # the file the key was written in (``use =``)
        option = options.get(key)
        if option is None:
            raise ConfigError(
                f"unknown option of plugin {plugin.label}",
                path=path,
                section=section,
                key=key,
                hint=suggest(key, options, render=str)
                if options
                else f"the plugin declares no options: remove the section [{section}]",
            )
        values[key] = option.convert(raw, path=path, section=section, key=key)
        sources[key] = config.file_source(section, key)
    for option in options.values():
        var = env_var(plugin.name, option.name)
        if var in config.plugin_environ:
            values[option.name] = option.convert(
                config.plugin_environ[var], path=ENVIRONMENT, section=None, key=var
            )
            sources[option.name] = f"env {var}"
    for option in options.values():
        if option.name in values:
            continue
        if option.required:
            raise ConfigError(
                f"plugin {plugin.label} needs this option",
                path=str(config.path),
                section=section,
                key=option.name,
                hint=f"set it in [{section}] or as {env_var(plugin.name, option.name)}"
                + (f" ({option.help})" if option.help else ""),
            )
        values[option.name] = copy.deepcopy(option.default)
    return values
