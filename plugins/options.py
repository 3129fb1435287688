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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.config import ENVIRONMENT, PLUGIN_ENV_PREFIX, HostConfig, plugin_section_name, suggest
from core.convert import convert_value
from core.errors import ConfigError
from plugins.manager import HostPluginManager, Plugin

#: The types an option can declare, as the ini converts them.
TYPES = ("string", "int", "float", "bool", "list", "dict", "any")
_NAME = re.compile(r"^[a-z][a-z0-9_.]*$")


@dataclass(frozen=True)
class PluginOption:
    """One declared option of a plugin."""

    name: str
    type: str = "string"
    default: Any = None
    help: str = ""
    choices: tuple[Any, ...] = ()
    required: bool = False


def declare_options(pm: HostPluginManager) -> dict[str, dict[str, PluginOption]]:
    """Call every active plugin's ``host_config_declarations``; a bad declaration fails that plugin."""
    declared: dict[str, dict[str, PluginOption]] = {}
    for plugin in pm.implementing("host_config_declarations"):
        options: dict[str, PluginOption] = {}
        try:
            pm.call_one(plugin, "host_config_declarations", declare=_declarer(options))
        except _BadDeclaration as e:
            pm.fail(plugin, plugin.error_for(str(e), hint="see host_config_declarations in docs/plugins.md"))
            continue
        except Exception as e:
            pm.raised(plugin, "host_config_declarations", e)
            continue
        declared[plugin.name] = options
    return declared


class _BadDeclaration(Exception):
    pass


def _declarer(options: dict[str, PluginOption]) -> Any:
    def declare(
        name: str,
        *,
        type: str = "string",
        default: Any = None,
        help: str = "",
        choices: Sequence[Any] = (),
        required: bool = False,
    ) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise _BadDeclaration(
                f"declares the option {name!r}: use lower-case letters, digits, '_' and '.'"
            )
        if name in options:
            raise _BadDeclaration(f"declares the option {name!r} twice")
        if type not in TYPES:
            raise _BadDeclaration(
                f"declares the option {name!r} with type {type!r}; use one of {', '.join(TYPES)}"
            )
        if isinstance(choices, str) or (choices and type in ("list", "dict")):
            raise _BadDeclaration(
                f"declares the option {name!r} with choices {choices!r}: "
                "give a list of values, for a string, int, float, bool or any option"
            )
        options[name] = PluginOption(name, type, default, help, tuple(choices), required)

    return declare


def read_options(pm: HostPluginManager, config: HostConfig) -> None:
    """Validate each active plugin's section and environment into ``pm.options``.

    :raises ConfigError: for an unknown key, a wrong type, a value not among
        the choices, or a required option that is missing.
    """
    declared = declare_options(pm)
    _check_environment(pm, declared, config)
    for plugin in pm.active:
        sources = pm.option_sources[plugin.name] = {}
        pm.options[plugin.name] = _read_plugin(plugin, declared.get(plugin.name, {}), config, sources)


def _check_environment(
    pm: HostPluginManager, declared: dict[str, dict[str, PluginOption]], config: HostConfig
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


def env_var(plugin: str, option: str) -> str:
    """``example``, ``greeting`` -> ``HOST_PLUGIN_EXAMPLE_GREETING``."""
    return PLUGIN_ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", f"{plugin}_{option}").upper()


def _read_plugin(
    plugin: Plugin, options: dict[str, PluginOption], config: HostConfig, sources: dict[str, str]
) -> dict[str, Any]:
    section = plugin_section_name(plugin.name)
    path = str(config.path)
    values: dict[str, Any] = {}
    for key, raw in config.plugin_section(plugin.name).items():
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
        values[key] = _convert(option, raw, path=path, section=section, key=key)
        sources[key] = "file"
    for option in options.values():
        var = env_var(plugin.name, option.name)
        if var in config.plugin_environ:
            values[option.name] = _convert(
                option, config.plugin_environ[var], path=ENVIRONMENT, section=None, key=var
            )
            sources[option.name] = f"env {var}"
    for option in options.values():
        if option.name in values:
            continue
        if option.required:
            raise ConfigError(
                f"plugin {plugin.label} needs this option",
                path=path,
                section=section,
                key=option.name,
                hint=f"set it in [{section}] or as {env_var(plugin.name, option.name)}"
                + (f" ({option.help})" if option.help else ""),
            )
        values[option.name] = copy.deepcopy(option.default)
    return values


def _convert(option: PluginOption, raw: str, *, path: str, section: str | None, key: str) -> Any:
    value = convert_value(option.type, raw, path=path, section=section, key=key)
    if option.required and value in ("", [], {}):
        raise ConfigError("this option is required and may not be empty", path=path, section=section, key=key)
    if option.choices and value not in option.choices:
        allowed = ", ".join(str(choice) for choice in option.choices)
        raise ConfigError(f"{value!r} is not one of {allowed}", path=path, section=section, key=key)
    return value
