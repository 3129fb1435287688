"""Plugins: loading, options, the set-up hooks, ``host.site_id`` and the commands that show them.

Plugins are written as real distributions by the ``site`` fixture: a
``*.dist-info`` folder whose ``entry_points.txt`` names a module in the group
``host.plugins``, and that module, on ``sys.path``. The tests come in the
three tiers of the rest of the suite:

1. loading and options: a fresh :func:`~plugins.manager.make_plugin_manager`
   over this site's entry points only (the installed example-ext is left out,
   so every message is exact);
2. the set-up hooks: a fresh app (the ``fresh_app`` fixture) configured with
   those plugins, and Celery's own routing asked where a task goes;
3. ``host --help``, ``host plugins`` and ``host doctor`` as real processes,
   with the site on ``PYTHONPATH``.

The worker and task hooks need a worker: they are tested in
test_plugin_worker.py.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import importlib_metadata
import pytest

from core.celery_app import HostCelery
from core.cli.worker import site_queues
from core.config import HostConfig, load_config, plugin_names
from core.discovery import discover
from core.errors import ConfigError, ExtensionError, PluginError
from core.plugin_manager import HostPluginManager, make_plugin_manager
from core.plugin_options import env_var, read_options
from core.settings import queue_name, queue_prefix
from core.startup import configure_app
from plugins import plugin_config
from tests.conftest import ROOT, Site, write_ini
from tests.worker import host, host_env

GROUP = "host.plugins"
FIX = "fix the plugin, or remove {name!r} from host.plugins"

# A plugin with two hooks and a function that is not one.
HELLO = """
from plugins import hookimpl


@hookimpl
def host_queues():
    return {"hello": ["hello.*"]}


@hookimpl
def host_beat_schedule():
    return {}


def greet():
    return "not a hook: no host_ prefix"
"""
NOT_IMPORTED = 'raise AssertionError("a plugin that is not enabled must not be imported")\n'


# -- helpers ----------------------------------------------------------------------


def one_hook(signature: str, body: str) -> str:
    """A plugin module implementing one hook: ``one_hook("host_queues()", "return {}")``."""
    return f"from plugins import hookimpl\n\n\n@hookimpl\ndef {signature}:\n    {body}\n"


def add_plugin(
    site: Site,
    name: str,
    source: str,
    *,
    version: str = "1.0",
    value: str | None = None,
    files: dict[str, str] | None = None,
) -> Path:
    """Plugin ``name`` of distribution ``NAME-plugin``, module ``NAME_plugin``; returns the module's path."""
    module = f"{name}_plugin"
    site.add(
        f"{name}-plugin", version, {GROUP: {name: value or module}}, {f"{module}.py": source, **(files or {})}
    )
    return site.path / f"{module}.py"


def entry_points(site: Site) -> list[importlib_metadata.EntryPoint]:
    """This site's ``host.plugins`` entry points, in the order the installed ones are read."""
    return sorted(site.entry_points(GROUP), key=lambda ep: (ep.name, ep.dist.name))


def manager(site: Site, *names: str) -> HostPluginManager:
    return make_plugin_manager(names, entry_points=entry_points(site))


def prefix(name: str, version: str = "1.0", value: str | None = None) -> str:
    """How a plugin error names its source."""
    value = value or f"{name}_plugin"
    return f"plugin {name!r} ({name}-plugin=={version}, entry point {GROUP}:{name} = {value})"


def only_error(pm: HostPluginManager) -> PluginError:
    assert len(pm.errors) == 1, pm.errors
    return pm.errors[0]


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def ini_path(tmp_path: Path) -> Path:
    return tmp_path / "test.ini"


def config(tmp_path: Path, *lines: str, environ: dict[str, str] | None = None) -> HostConfig:
    """An ini of ``lines`` under ``[app:main]`` (further sections may follow), read with ``environ`` only."""
    text = "\n".join(["[app:main]", "celery.broker_url = memory://", *lines])
    return load_config(write_ini(ini_path(tmp_path), text), environ=environ or {})


def loaded(site: Site, cfg: HostConfig) -> HostPluginManager:
    """What ``load_plugins`` does, with this site's plugins only."""
    pm = make_plugin_manager(cfg.host["plugins"], entry_points=entry_points(site))
    read_options(pm, cfg)
    return pm


def configured(app: HostCelery, site: Site, cfg: HostConfig) -> HostPluginManager:
    """Configure ``app`` with the plugins ``cfg`` enables, keeping plugin errors on the manager."""
    pm = loaded(site, cfg)
    configure_app(app, cfg, pm, strict=False)
    return pm


# -- loading: healthy, not enabled, not installed ------------------------------------


def test_enabled_plugin_is_loaded_and_recorded(site: Site) -> None:
    add_plugin(site, "hello", HELLO, version="2.1")

    pm = manager(site, "hello")

    assert pm.errors == []
    hello = pm.record("hello")
    assert hello is not None
    assert (hello.name, hello.distribution, hello.version, hello.entry_point) == (
        "hello",
        "hello-plugin",
        "2.1",
        "host.plugins:hello = hello_plugin",
    )
    assert (hello.enabled, hello.error, hello.label) == (True, None, "hello (hello-plugin==2.1)")
    assert hello.hooks == ["host_beat_schedule", "host_queues"]
    assert hello.obj is sys.modules["hello_plugin"]
    assert pm.get_name(hello.obj) == "hello"
    assert pm.active == [hello]
    assert pm.call_each("host_queues") == [(hello, {"hello": ["hello.*"]})]


def test_installed_plugin_that_is_not_enabled_is_recorded_but_not_imported(site: Site) -> None:
    add_plugin(site, "hello", HELLO)
    add_plugin(site, "idle", NOT_IMPORTED, version="0.3")

    pm = manager(site, "hello")

    assert pm.errors == []
    assert [p.name for p in pm.records] == ["hello", "idle"]
    idle = pm.record("idle")
    assert idle is not None
    assert (idle.distribution, idle.version, idle.entry_point) == (
        "idle-plugin",
        "0.3",
        "host.plugins:idle = idle_plugin",
    )
    assert (idle.enabled, idle.error, idle.obj, idle.hooks, idle.active) == (False, None, None, [], False)
    assert "idle_plugin" not in sys.modules
    assert [p.name for p in pm.active] == ["hello"]


@pytest.mark.parametrize(
    ("name", "found", "hint"),
    [
        (
            "helo",
            "; hello-plugin==1.0 provides the near name 'hello' (host.plugins:hello = hello_plugin)",
            "did you mean 'hello'? Either host.plugins or hello-plugin's entry point is misspelled: correct "
            "host.plugins, or correct the entry point's name in hello-plugin's setup.py or pyproject.toml, "
            "then reinstall hello-plugin: entry points are read at install time",
        ),
        (
            "zzz",
            " (the installed plugins are: audit, hello)",
            "install the distribution that provides a 'host.plugins' entry point named 'zzz', "
            "or remove the name from host.plugins",
        ),
    ],
)
def test_plugin_named_but_not_installed(site: Site, name: str, found: str, hint: str) -> None:
    add_plugin(site, "hello", HELLO)
    add_plugin(site, "audit", NOT_IMPORTED)

    pm = manager(site, name)

    error = only_error(pm)
    assert str(error) == (
        f"plugin {name!r} is named in host.plugins but no installed distribution provides it{found}\n"
        f"  -> {hint}"
    )
    assert (error.plugin, error.distribution, error.entry_point, error.not_installed) == (
        name,
        None,
        None,
        True,
    )
    assert pm.active == []
    record = pm.record(name)
    assert record is not None and (record.enabled, record.distribution) == (True, None)


def test_plugin_named_when_none_is_installed(site: Site) -> None:
    error = only_error(manager(site, "hello"))

    assert str(error).splitlines()[0] == (
        "plugin 'hello' is named in host.plugins but no installed distribution provides it "
        "(the installed plugins are: none)"
    )


# -- loading: broken plugins ---------------------------------------------------------


def test_plugin_broken_on_import(site: Site) -> None:
    path = add_plugin(site, "boom", "from plugins import hookimpl\n\nRATIO = 1 / 0\n", version="3.0")
    add_plugin(site, "hello", HELLO)

    pm = manager(site, "boom", "hello")

    error = only_error(pm)
    assert str(error) == (
        f"{prefix('boom', '3.0')}: module boom_plugin is broken: "
        f"it raised ZeroDivisionError: division by zero at {path}, line 3\n  -> " + FIX.format(name="boom")
    )
    assert (error.plugin, error.distribution, error.version, error.entry_point, error.not_installed) == (
        "boom",
        "boom-plugin",
        "3.0",
        "host.plugins:boom = boom_plugin",
        False,
    )
    # The other plugin still loads.
    assert [p.name for p in pm.active] == ["hello"]


def test_plugin_raising_attribute_error_on_import_is_broken_not_a_typo(site: Site) -> None:
    # An AttributeError raised while the module is imported is a broken
    # module, not an entry point naming something the module does not have.
    source = "import os\n\nPATH = os.no_such_thing\n\n\nclass Plugin:\n    pass\n\n\nplugin = Plugin()\n"
    path = add_plugin(site, "attr", source, value="attr_plugin:plugin")

    error = only_error(manager(site, "attr"))

    assert str(error) == (
        f"{prefix('attr', value='attr_plugin:plugin')}: module attr_plugin is broken: "
        f"it raised AttributeError: module 'os' has no attribute 'no_such_thing' at {path}, line 3\n  -> "
        + FIX.format(name="attr")
    )


def test_plugin_module_not_installed(site: Site) -> None:
    site.add("ghost-plugin", "1.0", {GROUP: {"ghost": "ghost_plugin"}})

    error = only_error(manager(site, "ghost"))

    assert str(error) == (
        f"{prefix('ghost')}: module ghost_plugin is not installed\n"
        "  -> reinstall ghost-plugin, or remove 'ghost' from host.plugins"
    )
    assert error.not_installed is True


def test_plugin_importing_a_missing_dependency(site: Site) -> None:
    add_plugin(site, "needy", "import not_a_real_dependency_xyz\n")

    error = only_error(manager(site, "needy"))

    assert str(error) == (
        f"{prefix('needy')}: module needy_plugin is broken: "
        "it imports not_a_real_dependency_xyz, which is not installed\n"
        "  -> install not_a_real_dependency_xyz, or the extra of needy-plugin that provides it"
    )
    assert error.not_installed is False
    assert isinstance(error.__cause__, ModuleNotFoundError)


def test_entry_point_attribute_missing(site: Site) -> None:
    path = add_plugin(site, "typo", HELLO, value="typo_plugin:plugin")

    error = only_error(manager(site, "typo"))

    assert str(error) == (
        f"{prefix('typo', value='typo_plugin:plugin')}: module typo_plugin has no plugin ({path})\n"
        "  -> correct the entry point in typo-plugin's setup.py or pyproject.toml, "
        "then reinstall typo-plugin: entry points are read at install time"
    )


def test_entry_point_attribute_typo_gets_the_near_name(site: Site) -> None:
    path = add_plugin(site, "typo", HELLO + "\n\nclass Weather:\n    pass\n", value="typo_plugin:Wether")

    error = only_error(manager(site, "typo"))

    assert str(error) == (
        f"{prefix('typo', value='typo_plugin:Wether')}: module typo_plugin has no Wether ({path})\n"
        "  -> did you mean Weather? Correct the entry point in typo-plugin's setup.py or pyproject.toml, "
        "then reinstall typo-plugin: entry points are read at install time"
    )


def test_entry_point_module_typo_is_not_a_missing_install(site: Site) -> None:
    site.add(
        "hostext-weather",
        "0.1",
        {GROUP: {"weather": "hostext_weather.plugn"}},
        {"hostext_weather/__init__.py": "", "hostext_weather/plugin.py": HELLO},
    )

    error = only_error(manager(site, "weather"))

    assert str(error) == (
        "plugin 'weather' (hostext-weather==0.1, entry point host.plugins:weather = hostext_weather.plugn): "
        "module hostext_weather.plugn does not exist: "
        f"package hostext_weather ({site.path / 'hostext_weather'}) has no module plugn\n"
        "  -> did you mean hostext_weather.plugin? Correct the entry point in hostext-weather's setup.py or "
        "pyproject.toml, then reinstall hostext-weather: entry points are read at install time"
    )
    assert error.not_installed is False


def test_unmarked_hook_function(site: Site) -> None:
    source = HELLO.replace("@hookimpl\ndef host_beat_schedule", "def host_beat_schedule")
    add_plugin(site, "lazy", source)

    pm = manager(site, "lazy")

    assert str(only_error(pm)) == (
        f"{prefix('lazy')}: host_beat_schedule in lazy_plugin is not marked as a hook implementation\n"
        "  -> decorate it with @hookimpl (from plugins import hookimpl)"
    )
    assert pm.active == []
    assert not pm.is_registered(sys.modules["lazy_plugin"])


@pytest.mark.parametrize(
    ("hook", "hint"),
    [
        ("host_queue", "did you mean host_queues?"),
        ("host_frobnicate", "the hooks are listed in docs/plugins.md"),
    ],
)
def test_unknown_hook_name(site: Site, hook: str, hint: str) -> None:
    path = add_plugin(site, "odd", one_hook(f"{hook}()", "return {}"))

    pm = manager(site, "odd")

    assert str(only_error(pm)) == (
        f"{prefix('odd')}: implements {hook} (at {path}, line 4), which is not a host hook\n  -> {hint}"
    )
    assert pm.active == []
    assert not pm.is_registered(sys.modules["odd_plugin"])


def test_hookimpl_argument_the_spec_does_not_have(site: Site) -> None:
    path = add_plugin(site, "extra", one_hook("host_queues(app)", "return {}"))

    pm = manager(site, "extra")

    # Not pluggy's own words: the file and line, and what the hook passes.
    assert str(only_error(pm)) == (
        f"{prefix('extra')}: host_queues(app) at {path}, line 4 takes 'app', which the hook host_queues "
        "does not pass: it passes no arguments\n"
        "  -> host_queues takes no arguments: def host_queues():"
    )
    assert pm.active == []


def test_hookimpl_argument_misspelled_lists_the_hooks_arguments(site: Site) -> None:
    path = add_plugin(site, "cfg", one_hook("host_celery_config(confg, host_config)", "pass"))

    pm = manager(site, "cfg")

    assert str(only_error(pm)) == (
        f"{prefix('cfg')}: host_celery_config(confg, host_config) at {path}, line 4 takes 'confg', which "
        "the hook host_celery_config does not pass: its arguments are: config, host_config\n"
        "  -> did you mean config? Take only the hook's arguments, by name (any of them): "
        "def host_celery_config(config, host_config):"
    )
    assert pm.active == []


def test_plugin_broken_inside_a_hook(site: Site) -> None:
    path = add_plugin(
        site,
        "faulty",
        """
        from plugins import hookimpl


        @hookimpl
        def host_queues():
            raise RuntimeError("no queues today")


        @hookimpl
        def host_beat_schedule():
            return {"faulty.tick": {"task": "faulty.tick", "schedule": 1}}
        """,
    )
    add_plugin(site, "steady", HELLO)

    pm = manager(site, "faulty", "steady")
    results = pm.call_each("host_queues")

    steady = pm.record("steady")
    assert results == [(steady, {"hello": ["hello.*"]})]
    assert str(only_error(pm)) == (
        f"{prefix('faulty')}: host_queues() raised RuntimeError: no queues today "
        f"at {path}, line {line_of(path, 'no queues today')}\n  -> " + FIX.format(name="faulty")
    )
    # Unregistered: none of its other hooks is called again.
    assert pm.active == [steady]
    assert not pm.is_registered(sys.modules["faulty_plugin"])
    assert pm.call_each("host_beat_schedule") == [(steady, {})]
    assert pm.hook.host_beat_schedule() == [{}]


def test_a_hook_error_points_at_the_plugins_own_line(site: Site) -> None:
    """Raised deep inside a library, the error still names the plugin's line that called it."""
    path = add_plugin(site, "parsing", one_hook("host_queues()", 'return __import__("json").loads("{")'))

    pm = manager(site, "parsing")
    pm.call_each("host_queues")

    message = str(only_error(pm))
    assert message.startswith(f"{prefix('parsing')}: host_queues() raised JSONDecodeError: ")
    assert f"at {path}, line {line_of(path, 'json')}\n" in message
    assert isinstance(only_error(pm).__cause__, ValueError)


def test_two_distributions_provide_the_same_plugin_name(site: Site) -> None:
    for dist in ("hello-a", "hello-b"):
        module = dist.replace("-", "_")
        site.add(dist, "1.0", {GROUP: {"hello": module}}, {f"{module}.py": NOT_IMPORTED})

    pm = manager(site, "hello")

    assert str(only_error(pm)) == (
        "plugin 'hello' (hello-a==1.0, entry point host.plugins:hello = hello_a): the plugin name is "
        "provided twice: by hello-a (host.plugins:hello = hello_a) and "
        "hello-b (host.plugins:hello = hello_b)\n"
        "  -> uninstall one of the distributions"
    )
    assert ("hello_a" in sys.modules, "hello_b" in sys.modules) == (False, False)
    # Not enabled, the clash stops nothing.
    assert manager(site).errors == []


def test_host_plugins_environment_variable_overrides_the_ini(site: Site, tmp_path: Path) -> None:
    add_plugin(site, "hello", HELLO)
    add_plugin(site, "audit", HELLO.replace("hello", "audit"))

    cfg = config(tmp_path, "host.plugins = hello", environ={"HOST_PLUGINS": "audit, hello"})

    assert (cfg.host["plugins"], cfg.sources["host.plugins"]) == (["audit", "hello"], "env HOST_PLUGINS")
    assert plugin_names(ini_path(tmp_path), environ={"HOST_PLUGINS": "audit, hello"}) == ["audit", "hello"]
    pm = loaded(site, cfg)
    assert [p.name for p in pm.active] == ["audit", "hello"]
    # In host.plugins order, by either way of calling.
    assert [queues for _, queues in pm.call_each("host_queues")] == [
        {"audit": ["audit.*"]},
        {"hello": ["hello.*"]},
    ]
    assert pm.hook.host_queues() == [{"audit": ["audit.*"]}, {"hello": ["hello.*"]}]
    # An empty variable is unset.
    assert config(tmp_path, "host.plugins = hello", environ={"HOST_PLUGINS": ""}).host["plugins"] == ["hello"]


# -- options -----------------------------------------------------------------------

OPTIONS = """
from plugins import hookimpl


@hookimpl
def host_config_declarations(declare):
    declare("greeting", default="Hello", help="What to say.")
    declare("count", type="int", default=3)
    declare("ratio", type="float", default=0.5)
    declare("debug", type="bool", default=False)
    declare("tags", type="list", default=["a"])
    declare("limits", type="dict", default={"max": 1})
    declare("extra", type="any")
    declare("mode", choices=("fast", "safe"), default="safe")
"""
DEFAULTS = {
    "greeting": "Hello",
    "count": 3,
    "ratio": 0.5,
    "debug": False,
    "tags": ["a"],
    "limits": {"max": 1},
    "extra": None,
    "mode": "safe",
}


def options(
    site: Site, tmp_path: Path, *section: str, environ: dict[str, str] | None = None
) -> HostPluginManager:
    """The ``opts`` plugin enabled, with ``section`` as its ``[plugin:opts]``."""
    add_plugin(site, "opts", OPTIONS)
    return loaded(site, config(tmp_path, "host.plugins = opts", "[plugin:opts]", *section, environ=environ))


def test_declared_options_have_their_defaults(site: Site, tmp_path: Path) -> None:
    pm = options(site, tmp_path)

    assert pm.errors == []
    assert pm.options == {"opts": DEFAULTS}
    assert pm.option_sources == {"opts": {}}


@pytest.mark.parametrize(
    ("key", "raw", "value"),
    [
        ("greeting", "  Good morning ", "Good morning"),
        ("count", "12", 12),
        ("ratio", "2.5", 2.5),
        ("debug", "yes", True),
        ("debug", "off", False),
        ("tags", "x, y z", ["x", "y", "z"]),
        ("tags", '["x y"]', ["x y"]),
        ("limits", '{"max": 5, "per": "minute"}', {"max": 5, "per": "minute"}),
        ("extra", "[1, 2]", [1, 2]),
        ("extra", "plain text", "plain text"),
        ("mode", "fast", "fast"),
    ],
)
def test_option_converts_to_its_type(site: Site, tmp_path: Path, key: str, raw: str, value: object) -> None:
    pm = options(site, tmp_path, f"{key} = {raw}")

    assert pm.options["opts"] == {**DEFAULTS, key: value}
    assert pm.option_sources["opts"] == {key: "file"}


@pytest.mark.parametrize(
    ("key", "raw", "problem"),
    [
        ("count", "many", "'many' is not an integer: write a whole number such as 4"),
        ("ratio", "fast", "'fast' is not a number: write a number such as 2.5"),
        ("debug", "maybe", "'maybe' is not a boolean: use true/false, yes/no, on/off or 1/0"),
        (
            "tags",
            "[1, 2]",
            "'[1, 2]' is not a list (space or comma separated, or JSON): expected a JSON list of strings",
        ),
        ("limits", "[1]", """'[1]' is not a JSON object: expected a JSON object such as {"key": 1}"""),
        (
            "limits",
            "{oops",
            "'{oops' is not a JSON object: invalid JSON (Expecting property name enclosed in double quotes "
            "at column 2)",
        ),
    ],
)
def test_option_of_the_wrong_type(site: Site, tmp_path: Path, key: str, raw: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        options(site, tmp_path, f"{key} = {raw}")

    assert str(caught.value) == f"{ini_path(tmp_path)}, section [plugin:opts], key {key!r}: {problem}"
    assert (caught.value.path, caught.value.section, caught.value.key) == (
        str(ini_path(tmp_path)),
        "plugin:opts",
        key,
    )


@pytest.mark.parametrize(
    ("key", "raw", "problem"),
    [
        ("count", "-1", "'-1' is out of range: it must be 0 or more"),
        ("ratio", "-0.5", "'-0.5' is out of range: it must be 0 or more"),
        ("ratio", "nan", "'nan' is not a number: write a number such as 2.5"),
    ],
)
def test_a_number_option_says_its_rule(site: Site, tmp_path: Path, key: str, raw: str, problem: str) -> None:
    # Not "'-1' is not an integer": it is one, below what the option allows.
    with pytest.raises(ConfigError) as caught:
        options(site, tmp_path, f"{key} = {raw}")

    assert str(caught.value) == f"{ini_path(tmp_path)}, section [plugin:opts], key {key!r}: {problem}"


BOUNDED = """
from plugins import hookimpl


@hookimpl
def host_config_declarations(declare):
    declare("latitude", type="float", minimum=-90, maximum=90, default=0.0)
    declare("offset", type="int", minimum=None, default=-3)
    declare("percent", type="int", maximum=100, default=50)
"""


@pytest.mark.parametrize(
    ("line", "value"),
    [("latitude = -33.9", -33.9), ("latitude = 90", 90.0), ("offset = -12", -12), ("percent = 0", 0)],
)
def test_a_number_option_may_declare_its_bounds(site: Site, tmp_path: Path, line: str, value: float) -> None:
    add_plugin(site, "geo", BOUNDED)

    pm = loaded(site, config(tmp_path, "host.plugins = geo", "[plugin:geo]", line))

    assert pm.options["geo"][line.split(" = ")[0]] == value


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("latitude = -90.5", "'-90.5' is out of range: it must be between -90 and 90"),
        ("percent = 101", "'101' is out of range: it must be between 0 and 100"),
        ("percent = -1", "'-1' is out of range: it must be between 0 and 100"),
    ],
)
def test_a_number_outside_its_declared_bounds(site: Site, tmp_path: Path, line: str, problem: str) -> None:
    add_plugin(site, "geo", BOUNDED)
    key = line.split(" = ")[0]

    with pytest.raises(ConfigError) as caught:
        loaded(site, config(tmp_path, "host.plugins = geo", "[plugin:geo]", line))

    assert str(caught.value) == f"{ini_path(tmp_path)}, section [plugin:geo], key {key!r}: {problem}"


def test_a_misspelled_section_of_an_enabled_plugin(site: Site, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        add_plugin(site, "opts", OPTIONS)
        loaded(site, config(tmp_path, "host.plugins = opts", "[plugin:otps]", "count = 4"))

    assert str(caught.value) == (
        f"{ini_path(tmp_path)}, section [plugin:otps]: this section configures no plugin, but looks meant "
        "for plugin 'opts', which host.plugins enables: its options are not read from here\n"
        "  -> did you mean [plugin:opts]?"
    )


@pytest.mark.parametrize("section", ["plugins:opts", "plugin: opts", "plugin_opts"])
def test_a_misnamed_section_of_an_enabled_plugin(site: Site, tmp_path: Path, section: str) -> None:
    add_plugin(site, "opts", OPTIONS)

    with pytest.raises(ConfigError, match=r"did you mean \[plugin:opts\]\?"):
        loaded(site, config(tmp_path, "host.plugins = opts", f"[{section}]", "count = 4"))


def test_the_section_of_an_installed_plugin_that_is_not_enabled_is_left_alone(
    site: Site, tmp_path: Path
) -> None:
    add_plugin(site, "opts", OPTIONS)
    add_plugin(site, "hello", HELLO)

    pm = loaded(site, config(tmp_path, "host.plugins = hello", "[plugin:opts]", "count = -4"))

    assert pm.errors == [] and "opts" not in pm.options


def test_unknown_option_in_the_section(site: Site, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        options(site, tmp_path, "greting = Hi")

    assert str(caught.value) == (
        f"{ini_path(tmp_path)}, section [plugin:opts], key 'greting': "
        "unknown option of plugin opts (opts-plugin==1.0)\n  -> did you mean greeting?"
    )
    assert (caught.value.section, caught.value.key) == ("plugin:opts", "greting")


def test_section_of_a_plugin_that_declares_no_options(site: Site, tmp_path: Path) -> None:
    add_plugin(site, "hello", HELLO)

    with pytest.raises(ConfigError) as caught:
        loaded(site, config(tmp_path, "host.plugins = hello", "[plugin:hello]", "greeting = Hi"))

    assert str(caught.value) == (
        f"{ini_path(tmp_path)}, section [plugin:hello], key 'greeting': "
        "unknown option of plugin hello (hello-plugin==1.0)\n"
        "  -> the plugin declares no options: remove the section [plugin:hello]"
    )


@pytest.mark.parametrize(
    ("section", "environ", "where"),
    [
        (["mode = turbo"], {}, "{ini}, section [plugin:opts], key 'mode'"),
        ([], {"HOST_PLUGIN_OPTS_MODE": "turbo"}, "environment, key 'HOST_PLUGIN_OPTS_MODE'"),
    ],
)
def test_option_not_among_its_choices(
    site: Site, tmp_path: Path, section: list[str], environ: dict[str, str], where: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        options(site, tmp_path, *section, environ=environ)

    assert str(caught.value) == where.format(ini=ini_path(tmp_path)) + ": 'turbo' is not one of fast, safe"


REQUIRED = """
from plugins import hookimpl


@hookimpl
def host_config_declarations(declare):
    declare("token", required=True, help="The API token.")
"""


def test_required_option_missing(site: Site, tmp_path: Path) -> None:
    add_plugin(site, "secretive", REQUIRED)

    with pytest.raises(ConfigError) as caught:
        loaded(site, config(tmp_path, "host.plugins = secretive"))

    assert str(caught.value) == (
        f"{ini_path(tmp_path)}, section [plugin:secretive], key 'token': "
        "plugin secretive (secretive-plugin==1.0) needs this option\n"
        "  -> set it in [plugin:secretive] or as HOST_PLUGIN_SECRETIVE_TOKEN (The API token.)"
    )


def test_required_option_from_the_environment(site: Site, tmp_path: Path) -> None:
    add_plugin(site, "secretive", REQUIRED)

    pm = loaded(
        site, config(tmp_path, "host.plugins = secretive", environ={"HOST_PLUGIN_SECRETIVE_TOKEN": "s3cret"})
    )

    assert pm.options == {"secretive": {"token": "s3cret"}}
    assert pm.option_sources == {"secretive": {"token": "env HOST_PLUGIN_SECRETIVE_TOKEN"}}


def test_required_option_may_not_be_empty(site: Site, tmp_path: Path) -> None:
    add_plugin(site, "secretive", REQUIRED)

    with pytest.raises(ConfigError) as caught:
        loaded(site, config(tmp_path, "host.plugins = secretive", "[plugin:secretive]", "token ="))

    assert str(caught.value) == (
        f"{ini_path(tmp_path)}, section [plugin:secretive], key 'token': "
        "this option is required and may not be empty"
    )


NUMBERED = """
from plugins import hookimpl


@hookimpl
def host_config_declarations(declare):
    declare("level", type="int", choices=(1, 2, 3), default=1)
"""


def test_choices_of_a_typed_option_are_compared_after_conversion(site: Site, tmp_path: Path) -> None:
    add_plugin(site, "levels", NUMBERED)
    ini = ("host.plugins = levels", "[plugin:levels]")

    assert loaded(site, config(tmp_path, *ini, "level = 2")).options == {"levels": {"level": 2}}
    with pytest.raises(ConfigError) as caught:
        loaded(site, config(tmp_path, *ini, "level = 7"))
    assert str(caught.value).endswith("key 'level': 7 is not one of 1, 2, 3")


@pytest.mark.parametrize("declaration", ['choices="abc"', 'type="list", choices=(["a"],)'])
def test_choices_must_be_a_list_of_scalars(site: Site, tmp_path: Path, declaration: str) -> None:
    add_plugin(site, "odd", one_hook("host_config_declarations(declare)", f'declare("mode", {declaration})'))

    pm = loaded(site, config(tmp_path, "host.plugins = odd"))

    assert str(only_error(pm)).startswith(f"{prefix('odd')}: declares the option 'mode' with choices ")


def test_environment_variable_overrides_the_file(site: Site, tmp_path: Path) -> None:
    environ = {"HOST_PLUGIN_OPTS_COUNT": "9", "HOST_PLUGIN_OPTS_DEBUG": "true", "HOST_PLUGIN_OPTS_TAGS": ""}

    pm = options(site, tmp_path, "count = 4", "greeting = Hi", "tags = x", environ=environ)

    assert pm.options["opts"] == {**DEFAULTS, "count": 9, "debug": True, "greeting": "Hi", "tags": ["x"]}
    # An empty variable is unset: the file's tags stay.
    assert pm.option_sources["opts"] == {
        "count": "env HOST_PLUGIN_OPTS_COUNT",
        "debug": "env HOST_PLUGIN_OPTS_DEBUG",
        "greeting": "file",
        "tags": "file",
    }


def test_environment_variable_of_the_wrong_type(site: Site, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        options(site, tmp_path, environ={"HOST_PLUGIN_OPTS_COUNT": "nine"})

    assert str(caught.value) == (
        "environment, key 'HOST_PLUGIN_OPTS_COUNT': 'nine' is not an integer: write a whole number such as 4"
    )


def test_environment_variable_names() -> None:
    assert env_var("opts", "count") == "HOST_PLUGIN_OPTS_COUNT"
    assert env_var("my-plugin", "retry.max") == "HOST_PLUGIN_MY_PLUGIN_RETRY_MAX"


def test_unknown_environment_variable_of_an_enabled_plugin(site: Site, tmp_path: Path) -> None:
    environ = {"HOST_PLUGIN_OPTS_GRETING": "Hi", "HOST_PLUGIN_ELSEWHERE_KEY": "not ours"}

    with pytest.raises(ConfigError) as caught:
        options(site, tmp_path, environ=environ)

    assert str(caught.value) == (
        "environment, key 'HOST_PLUGIN_OPTS_GRETING': unknown option of plugin opts (opts-plugin==1.0) "
        "in the environment\n  -> did you mean HOST_PLUGIN_OPTS_GREETING?"
    )
    assert (caught.value.path, caught.value.section, caught.value.key) == (
        "environment",
        None,
        "HOST_PLUGIN_OPTS_GRETING",
    )


def test_environment_variable_of_a_plugin_that_is_not_enabled_is_ignored(site: Site, tmp_path: Path) -> None:
    pm = options(site, tmp_path, environ={"HOST_PLUGIN_ELSEWHERE_KEY": "not ours"})

    assert pm.options == {"opts": DEFAULTS}


@pytest.mark.parametrize(
    ("declarations", "problem"),
    [
        (
            'declare("count", type="uuid")',
            "declares the option 'count' with type 'uuid'; "
            "use one of string, int, float, bool, list, dict, any",
        ),
        (
            'declare("greeting")\n    declare("greeting", default="Hi")',
            "declares the option 'greeting' twice",
        ),
        (
            'declare("Greeting")',
            "declares the option 'Greeting': use lower-case letters, digits, '_' and '.'",
        ),
        (
            'declare("name", minimum=1)',
            "declares the option 'name' with a minimum: only int and float options have one",
        ),
        (
            'declare("count", type="int", minimum=5, maximum=1)',
            "declares the option 'count' with a minimum (5) above its maximum (1)",
        ),
        (
            'declare("count", type="int", minimum="1")',
            "declares the option 'count' with the minimum '1': give a number, or None",
        ),
        (
            'declare("count", type="int", default=-1)',
            "declares the option 'count' with the default -1, which is out of range: it must be 0 or more",
        ),
    ],
)
def test_bad_declaration(site: Site, tmp_path: Path, declarations: str, problem: str) -> None:
    add_plugin(
        site,
        "bad",
        one_hook("host_config_declarations(declare)", declarations),
    )
    add_plugin(site, "hello", HELLO)

    # The broken plugin's section is not read: its error is the one to fix.
    pm = loaded(site, config(tmp_path, "host.plugins = bad hello", "[plugin:bad]", "whatever = 1"))

    assert str(only_error(pm)) == (
        f"{prefix('bad')}: {problem}\n  -> see host_config_declarations in docs/plugins.md"
    )
    assert [p.name for p in pm.active] == ["hello"]
    assert pm.options == {"hello": {}}


# -- the set-up hooks -------------------------------------------------------------


def test_hook_host_task_imports(fresh_app: HostCelery, site: Site, tmp_path: Path) -> None:
    add_plugin(
        site,
        "tasky",
        one_hook("host_task_imports()", "return ['tasky_tasks']"),
        version="1.5",
        files={
            "tasky_tasks.py": """
                from core.celery_app import celery


                @celery.task(name="tasky.double")
                def double(x):
                    return 2 * x
                """
        },
    )
    broken = add_plugin(
        site,
        "broken",
        one_hook("host_task_imports()", "return ['broken_tasks']"),
        files={"broken_tasks.py": "from core.celery_app import celery\n\nRATIO = 1 / 0\n"},
    )
    cfg = config(tmp_path, "host.plugins = tasky broken")
    configured(fresh_app, site, cfg)

    # The installed extensions are left out; the plugins come from the app.
    found = discover(fresh_app, cfg, entry_points=[])

    assert found.task_rows() == [
        {"task": "tasky.double", "extension": "tasky-plugin", "version": "1.5", "module": "tasky_tasks"}
    ]
    tasky = found.extensions[0]
    assert (tasky.plugin, tasky.entry_point, tasky.modules) == (
        "tasky",
        "host.plugins:tasky = tasky_plugin",
        ["tasky_tasks"],
    )
    assert fresh_app.tasks["tasky.double"].apply(args=(4,)).get() == 8
    [error] = found.errors
    assert isinstance(error, ExtensionError)
    path = broken.parent / "broken_tasks.py"
    assert str(error) == (
        "extension broken-plugin==1.0 (entry point host.plugins:broken = broken_plugin): module broken_tasks "
        "(a module host_task_imports() returned) is broken: it raised ZeroDivisionError: division by zero "
        f"at {path}, line 3\n  -> fix the module, or remove 'broken' from host.plugins"
    )
    assert (error.module, error.not_installed) == ("broken_tasks", False)
    assert "broken_tasks" not in sys.modules


def test_hook_host_config_declarations(fresh_app: HostCelery, site: Site, tmp_path: Path) -> None:
    add_plugin(site, "opts", OPTIONS)
    cfg = config(tmp_path, "host.plugins = opts", "[plugin:opts]", "count = 7")

    pm = configured(fresh_app, site, cfg)

    assert pm.record("opts").hooks == ["host_config_declarations"]
    assert pm.options["opts"] == {**DEFAULTS, "count": 7}
    # What the plugin's own code reads, through the toolkit.
    assert plugin_config("opts") == {**DEFAULTS, "count": 7}
    with pytest.raises(KeyError) as caught:
        plugin_config("other")
    assert caught.value.args[0] == "plugin 'other' is not enabled in host.plugins (enabled: opts)"


CELERY_CONFIG = """
from plugins import hookimpl


@hookimpl
def host_celery_config(config, host_config):
    # It sees the ini's values.
    config["worker_prefetch_multiplier"] = config["worker_concurrency"] * 2
"""
FAULTY_CELERY_CONFIG = """
from plugins import hookimpl


@hookimpl
def host_celery_config(config, host_config):
    config["task_acks_late"] = True
    raise ValueError("half done")
"""


def test_hook_host_celery_config(fresh_app: HostCelery, site: Site, tmp_path: Path) -> None:
    add_plugin(site, "tuner", CELERY_CONFIG)
    path = add_plugin(site, "faulty", FAULTY_CELERY_CONFIG)
    cfg = config(tmp_path, "host.plugins = tuner faulty", "celery.worker_concurrency = 3")

    pm = configured(fresh_app, site, cfg)

    assert fresh_app.conf.worker_prefetch_multiplier == 6
    assert fresh_app.host_changed_by == {"worker_prefetch_multiplier": "plugin tuner"}
    # The plugin that raised changed nothing, and has the error.
    assert fresh_app.conf.task_acks_late is False
    assert str(only_error(pm)) == (
        f"{prefix('faulty')}: host_celery_config() raised ValueError: half done "
        f"at {path}, line {line_of(path, 'half done')}\n  -> " + FIX.format(name="faulty")
    )
    assert [p.name for p in pm.active] == ["tuner"]


def test_hook_host_celery_config_raising_stops_configure_by_default(
    fresh_app: HostCelery, site: Site, tmp_path: Path
) -> None:
    add_plugin(site, "faulty", FAULTY_CELERY_CONFIG)
    cfg = config(tmp_path, "host.plugins = faulty")

    with pytest.raises(PluginError) as caught:
        configure_app(fresh_app, cfg, loaded(site, cfg))

    assert str(caught.value).startswith(
        f"{prefix('faulty')}: host_celery_config() raised ValueError: half done"
    )
    assert (fresh_app.host_config, fresh_app.host_plugins) == (None, None)


ROUTER = """
from plugins import hookimpl


@hookimpl
def host_queues():
    return {"fast": ["router.quick", "router.bulk_*"], "idle": []}
"""


def route(app: HostCelery, task: str) -> str:
    """The queue Celery's own router sends ``task`` to."""
    return app.amqp.router.route({}, task)["queue"].name


def test_hook_host_queues(fresh_app: HostCelery, site: Site, tmp_path: Path) -> None:
    add_plugin(site, "router", ROUTER)

    pm = configured(fresh_app, site, config(tmp_path, "host.plugins = router"))

    assert pm.errors == []
    assert pm.record("router").queues == {"fast": ["router.quick", "router.bulk_*"], "idle": []}
    assert fresh_app.conf.task_queues == {
        "celery": {"routing_key": "celery"},
        "fast": {"routing_key": "fast"},
        "idle": {"routing_key": "idle"},
    }
    assert fresh_app.conf.task_routes == [
        {"router.quick": {"queue": "fast"}, "router.bulk_*": {"queue": "fast"}}
    ]
    assert fresh_app.host_changed_by == {
        "task_queues": "plugins (host_queues)",
        "task_routes": "plugins (host_queues)",
    }
    assert [route(fresh_app, t) for t in ("router.quick", "router.bulk_load", "other.task")] == [
        "fast",
        "fast",
        "celery",
    ]
    assert sorted(fresh_app.amqp.queues) == ["celery", "fast", "idle"]


def test_hook_host_queues_with_a_site_id(fresh_app: HostCelery, site: Site, tmp_path: Path) -> None:
    add_plugin(site, "router", ROUTER)

    configured(fresh_app, site, config(tmp_path, "host.plugins = router", "host.site_id = shop"))

    assert fresh_app.conf.task_queues == {
        "host:shop:celery": {"routing_key": "host:shop:celery"},
        "host:shop:fast": {"routing_key": "host:shop:fast"},
        "host:shop:idle": {"routing_key": "host:shop:idle"},
    }
    assert [route(fresh_app, t) for t in ("router.quick", "other.task")] == [
        "host:shop:fast",
        "host:shop:celery",
    ]
    assert (
        fresh_app.conf.task_default_queue,
        fresh_app.conf.control_exchange,
        fresh_app.conf.event_exchange,
    ) == (
        "host:shop:celery",
        "host:shop:celery",
        "host:shop:celeryev",
    )


def test_hook_host_queues_the_ini_routes_win(fresh_app: HostCelery, site: Site, tmp_path: Path) -> None:
    add_plugin(site, "router", ROUTER)

    cfg = config(
        tmp_path, "host.plugins = router", 'celery.task_routes = {"router.quick": {"queue": "manual"}}'
    )
    configured(fresh_app, site, cfg)

    assert [route(fresh_app, t) for t in ("router.quick", "router.bulk_load")] == ["manual", "fast"]


def test_hook_host_queues_two_plugins_routing_one_name(
    fresh_app: HostCelery, site: Site, tmp_path: Path
) -> None:
    add_plugin(
        site,
        "first",
        one_hook("host_queues()", 'return {"a": ["shared.task"]}'),
    )
    add_plugin(
        site,
        "second",
        one_hook("host_queues()", 'return {"b": ["second.own", "shared.task"]}'),
    )

    pm = configured(fresh_app, site, config(tmp_path, "host.plugins = first second"))

    assert str(only_error(pm)) == (
        f"{prefix('second')}: routes 'shared.task' to a queue, but plugin 'first' already routes it to 'a'\n"
        "  -> route each task name from one plugin only"
    )
    assert fresh_app.conf.task_routes == [{"shared.task": {"queue": "a"}}]
    assert sorted(fresh_app.conf.task_queues) == ["a", "celery"]
    assert route(fresh_app, "shared.task") == "a"


@pytest.mark.parametrize(
    "returned",
    [{"fast": "router.quick"}, ["fast"], {"two words": ["x"]}, {"fast": ["ok", 3]}],
    ids=["patterns-a-string", "a-list", "bad-queue-name", "pattern-not-a-string"],
)
def test_hook_host_queues_returns_garbage(
    fresh_app: HostCelery, site: Site, tmp_path: Path, returned: object
) -> None:
    add_plugin(
        site,
        "garbage",
        one_hook("host_queues()", f"return {returned!r}"),
    )

    pm = configured(fresh_app, site, config(tmp_path, "host.plugins = garbage"))

    assert str(only_error(pm)) == (
        f"{prefix('garbage')}: host_queues() returned {returned!r}, "
        "not a mapping of queue names to lists of task names\n  -> " + FIX.format(name="garbage")
    )
    assert fresh_app.conf.task_routes is None


TICKER = """
from celery.schedules import crontab

from plugins import hookimpl


@hookimpl
def host_beat_schedule():
    return {
        "ticker.tick": {"task": "ticker.tick", "schedule": 30.0, "args": [1]},
        "ticker.nightly": {"task": "ticker.report", "schedule": crontab(hour=3, minute=0)},
        "shared.entry": {"task": "ticker.plugin_version", "schedule": 5},
    }
"""


def test_hook_host_beat_schedule(fresh_app: HostCelery, site: Site, tmp_path: Path) -> None:
    from celery.schedules import crontab

    add_plugin(site, "ticker", TICKER)
    add_plugin(
        site,
        "garbage",
        one_hook("host_beat_schedule()", "return ['x']"),
    )
    ini_entry = '{"shared.entry": {"task": "ini.task", "schedule": 60}}'
    cfg = config(tmp_path, "host.plugins = ticker garbage", f"celery.beat_schedule = {ini_entry}")

    pm = configured(fresh_app, site, cfg)

    assert fresh_app.conf.beat_schedule == {
        # The ini's entry wins over the plugin's of the same name.
        "shared.entry": {"task": "ini.task", "schedule": 60},
        "ticker.tick": {"task": "ticker.tick", "schedule": 30.0, "args": [1]},
        "ticker.nightly": {"task": "ticker.report", "schedule": crontab(hour=3, minute=0)},
    }
    assert pm.record("ticker").beat == ["ticker.tick", "ticker.nightly", "shared.entry"]
    assert fresh_app.host_changed_by == {"beat_schedule": "plugins (host_beat_schedule)"}
    assert str(only_error(pm)) == (
        f"{prefix('garbage')}: host_beat_schedule() returned ['x'], "
        'not a mapping of entry names to {"task": ..., "schedule": ...}\n  -> ' + FIX.format(name="garbage")
    )


def test_hook_host_beat_schedule_entry_without_a_schedule(
    fresh_app: HostCelery, site: Site, tmp_path: Path
) -> None:
    entries = {"late.entry": {"task": "late.task"}}
    add_plugin(
        site,
        "late",
        one_hook("host_beat_schedule()", f"return {entries!r}"),
    )

    pm = configured(fresh_app, site, config(tmp_path, "host.plugins = late"))

    assert str(only_error(pm)).splitlines()[0] == (
        f"{prefix('late')}: host_beat_schedule() returned {entries!r}, "
        'not a mapping of entry names to {"task": ..., "schedule": ...}'
    )
    assert fresh_app.conf.beat_schedule == {}


# -- host.site_id ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-Q", "fast"], ["-Q", "host:shop:fast"]),
        (["-Q", "fast, slow"], ["-Q", "host:shop:fast,host:shop:slow"]),
        (["--queues", "fast,slow"], ["--queues", "host:shop:fast,host:shop:slow"]),
        (["--queues=fast,slow"], ["--queues=host:shop:fast,host:shop:slow"]),
        (["-Qfast,slow"], ["-Qhost:shop:fast,host:shop:slow"]),
        (["-X", "slow"], ["-X", "host:shop:slow"]),
        (["--exclude-queues", "slow"], ["--exclude-queues", "host:shop:slow"]),
        (["--exclude-queues=slow"], ["--exclude-queues=host:shop:slow"]),
        (["-Xslow"], ["-Xhost:shop:slow"]),
        (["-Q", "host:shop:fast"], ["-Q", "host:shop:fast"]),
        (["-n", "w1@%h", "-Q", "fast", "-c", "2"], ["-n", "w1@%h", "-Q", "host:shop:fast", "-c", "2"]),
        (["-c", "2", "--loglevel", "INFO", "-Ofair"], ["-c", "2", "--loglevel", "INFO", "-Ofair"]),
    ],
)
def test_site_queues_prefixes_the_queues_given_to_the_worker(
    tmp_path: Path, args: list[str], expected: list[str]
) -> None:
    shop = config(tmp_path, "host.site_id = shop")
    assert site_queues(args, lambda name: queue_name(shop, name)) == expected
    # Without a site id, nothing changes.
    plain = config(tmp_path)
    assert site_queues(tuple(args), lambda name: queue_name(plain, name)) == args


@pytest.mark.parametrize(
    "routes",
    [
        '{"report.*": {"queue": "reports"}}',
        '{"report.*": "reports"}',
        '[{"report.*": {"queue": "reports"}}]',
        '[[["report.*", "reports"]]]',
        '[[["report.*", {"queue": "reports"}]], {"other.*": "others"}, "celery.app.routes.MapRoute"]',
    ],
    ids=["mapping", "queue-name", "list-of-routers", "router-of-pairs", "mixed-routers"],
)
def test_site_id_prefixes_the_queues_the_ini_routes_to(
    fresh_app: HostCelery, tmp_path: Path, routes: str
) -> None:
    # Each form of celery.task_routes that Celery accepts: an unprefixed queue
    # would be consumed by the workers of every site sharing the broker.
    cfg = config(tmp_path, "host.site_id = shop", f"celery.task_routes = {routes}")

    configure_app(fresh_app, cfg, make_plugin_manager([], entry_points=[]))

    assert route(fresh_app, "report.daily") == "host:shop:reports"


def test_ini_routes_in_pairs_compose_with_a_plugins_queues(
    fresh_app: HostCelery, site: Site, tmp_path: Path
) -> None:
    add_plugin(site, "router", ROUTER)
    cfg = config(
        tmp_path,
        "host.plugins = router",
        "host.site_id = shop",
        'celery.task_routes = [[["report.*", "reports"]]]',
    )

    pm = configured(fresh_app, site, cfg)

    assert pm.errors == []
    assert route(fresh_app, "report.daily") == "host:shop:reports"
    assert route(fresh_app, "router.quick") == "host:shop:fast"


def test_site_id_prefixes_the_exchange_and_key_a_queue_binds_to(
    fresh_app: HostCelery, tmp_path: Path
) -> None:
    # Two sites binding their own queues to one shared exchange and key
    # would each receive the other's messages.
    queues = '{"reports": {"exchange": "reports", "routing_key": "reports.daily"}}'
    cfg = config(tmp_path, "host.site_id = shop", f"celery.task_queues = {queues}")

    configure_app(fresh_app, cfg, make_plugin_manager([], entry_points=[]))

    [queue] = [q for q in fresh_app.amqp.queues.values() if q.name == "host:shop:reports"]
    assert (queue.exchange.name, queue.routing_key) == ("host:shop:reports", "host:shop:reports.daily")
    assert fresh_app.host_changed_by["task_queues"] == "host.site_id"


def test_config_show_names_the_settings_the_site_id_changed(tmp_path: Path) -> None:
    ini = write_ini(ini_path(tmp_path), "[app:main]\ncelery.broker_url = memory://\nhost.site_id = shop\n")

    shown = host("config", "show", "--config", str(ini), env=host_env(), cwd=tmp_path)

    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "celery.task_default_queue = host:shop:celery    # host.site_id" in lines
    assert "celery.control_exchange = host:shop:celery    # host.site_id" in lines
    assert "celery.event_exchange = host:shop:celeryev    # host.site_id" in lines
    assert not any(line.startswith("celery.task_routes") for line in lines)


def test_toolkit_send_task_prefixes_a_queue_given_by_name(fresh_app: HostCelery, tmp_path: Path) -> None:
    """On kombu's in-memory transport: the message lands on the site's own queue."""
    import plugins

    ini = write_ini(ini_path(tmp_path), "[app:main]\ncelery.broker_url = memory://\nhost.site_id = shop\n")
    configure_app(fresh_app, load_config(ini, environ={}))

    sent = plugins.send_task("example.add", args=[1, 2], queue="reports")

    with fresh_app.connection_for_read() as connection:
        queue = connection.SimpleQueue("host:shop:reports")
        message = queue.get(timeout=10)
        message.ack()
        queue.close()
    assert message.headers["id"] == sent.id
    assert message.delivery_info["routing_key"] == "host:shop:reports"


def test_queue_name(tmp_path: Path) -> None:
    shop, plain = config(tmp_path, "host.site_id = shop"), config(tmp_path)

    assert (queue_prefix(shop), queue_prefix(plain)) == ("host:shop:", "")
    assert [queue_name(shop, n) for n in ("fast", "host:shop:fast", "celery")] == [
        "host:shop:fast",
        "host:shop:fast",
        "host:shop:celery",
    ]
    assert queue_name(plain, "fast") == "fast"


@pytest.mark.parametrize("value", ["shop 1", "shop:1", "shöp", "shop/1"])
def test_invalid_site_id(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config(tmp_path, f"host.site_id = {value}")
    assert str(caught.value) == (
        f"{ini_path(tmp_path)}, section [app:main], key 'host.site_id': "
        f"{value!r} is not valid here: use letters, digits, '_', '.' and '-' only"
    )

    with pytest.raises(ConfigError) as caught:
        config(tmp_path, environ={"HOST_SITE_ID": value})
    assert str(caught.value) == (
        f"environment, key 'HOST_SITE_ID': {value!r} is not valid here: "
        "use letters, digits, '_', '.' and '-' only"
    )


# -- two plugins composing ---------------------------------------------------------

COMPOSING = """
import calls

from plugins import hookimpl, plugin_config

NAME = "{name}"


@hookimpl
def host_config_declarations(declare):
    calls.CALLS.append((NAME, "host_config_declarations"))
    declare("every", type="float", default=60.0)


@hookimpl
def host_queues():
    calls.CALLS.append((NAME, "host_queues"))
    return {{NAME: [NAME + ".*"]}}


@hookimpl
def host_beat_schedule():
    calls.CALLS.append((NAME, "host_beat_schedule"))
    return {{NAME + ".tick": {{"task": NAME + ".tick", "schedule": plugin_config(NAME)["every"]}}}}


@hookimpl
def host_celery_config(config, host_config):
    calls.CALLS.append((NAME, "host_celery_config"))
"""


def test_two_plugins_compose_in_host_plugins_order(fresh_app: HostCelery, site: Site, tmp_path: Path) -> None:
    site.add("calls", "1.0", files={"calls.py": "CALLS = []\n"})
    for name in ("alpha", "beta"):
        add_plugin(site, name, COMPOSING.format(name=name))
    # beta first: the order is host.plugins', not the names'.
    cfg = config(
        tmp_path, "host.plugins = beta alpha", "[plugin:alpha]", "every = 5", "[plugin:beta]", "every = 7"
    )

    pm = configured(fresh_app, site, cfg)

    assert pm.errors == []
    assert pm.options == {"beta": {"every": 7.0}, "alpha": {"every": 5.0}}
    assert sorted(fresh_app.conf.task_queues) == ["alpha", "beta", "celery"]
    assert fresh_app.conf.task_routes == [{"beta.*": {"queue": "beta"}, "alpha.*": {"queue": "alpha"}}]
    assert [route(fresh_app, t) for t in ("alpha.x", "beta.x")] == ["alpha", "beta"]
    assert fresh_app.conf.beat_schedule == {
        "beta.tick": {"task": "beta.tick", "schedule": 7.0},
        "alpha.tick": {"task": "alpha.tick", "schedule": 5.0},
    }
    hooks = ["host_config_declarations", "host_queues", "host_beat_schedule", "host_celery_config"]
    calls = sys.modules["calls"].CALLS
    assert calls == [(name, hook) for hook in hooks for name in ("beta", "alpha")]


# -- host --help and plugin commands, as real processes -------------------------------

EMBEDDED = """
[app:main]
celery.broker_url = embedded+sqlite:///%(here)s/broker.sqlite
celery.result_backend = embedded+sqlite:///%(here)s/results.sqlite
"""
# A plugin using every set-up hook, as the CLI tests need it.
HELLO_CLI = """
import click

from plugins import hookimpl, plugin_config


@hookimpl
def host_config_declarations(declare):
    declare("greeting", default="Hello", help="What host hello says.")


@hookimpl
def host_task_imports():
    return ["hello_tasks"]


@hookimpl
def host_queues():
    return {"hello": ["hello.*"]}


@hookimpl
def host_beat_schedule():
    return {"hello.tick": {"task": "hello.ping", "schedule": 60.0}}


@hookimpl
def host_register_commands(cli):
    @cli.command()
    @click.option("--name", default="world")
    def hello(name):
        \"\"\"Greet NAME with the greeting of [plugin:hello].\"\"\"
        click.echo(f"{plugin_config('hello')['greeting']}, {name}!")
"""
HELLO_TASKS = """
from core.celery_app import celery


@celery.task(name="hello.ping")
def ping():
    return "pong"
"""
CLASH = """
import click

from plugins import hookimpl


@hookimpl
def host_register_commands(cli):
    @cli.command()
    def tasks():
        \"\"\"Would hide the built-in.\"\"\"
"""
BROKEN_ON_IMPORT = 'raise RuntimeError("cannot start")\n'


def cli_site(site: Site) -> Path:
    """hello (every set-up hook), idle (never imported), broken and clash; returns broken's path."""
    add_plugin(site, "hello", HELLO_CLI, files={"hello_tasks.py": HELLO_TASKS})
    add_plugin(site, "idle", NOT_IMPORTED)
    add_plugin(site, "clash", CLASH)
    return add_plugin(site, "broken", BROKEN_ON_IMPORT, version="2.0")


def cli_ini(tmp_path: Path, plugins: str = "hello", *lines: str) -> Path:
    return write_ini(ini_path(tmp_path), EMBEDDED + f"host.plugins = {plugins}\n" + "\n".join(lines) + "\n")


def words(lines: list[str]) -> list[str]:
    """Each line with its runs of spaces made one."""
    return [" ".join(line.split()) for line in lines]


def commands_listed(help_text: str) -> list[str]:
    """The command names in the Commands: part of ``--help``."""
    listing = help_text.split("Commands:\n", 1)[1]
    return [line.split()[0] for line in listing.splitlines() if line.startswith("  ") and line.strip()]


def test_hook_host_register_commands(site: Site, tmp_path: Path) -> None:
    cli_site(site)
    ini = cli_ini(tmp_path, "hello", "[plugin:hello]", "greeting = Hi")
    env = host_env(pythonpath=[site.path])

    listed = host("--help", env={**env, "HOST_CONFIG": str(ini)}, cwd=tmp_path)
    ran = host("--config", str(ini), "hello", "--name", "Ada", env=env, cwd=tmp_path)

    assert (listed.returncode, listed.stderr) == (0, "")
    assert "hello" in commands_listed(listed.stdout)
    # (The column's width is the longest command name's.)
    assert "hello Greet NAME with the greeting of [plugin:hello]." in words(listed.stdout.splitlines())
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, "Hi, Ada!\n", "")


FEEDS_CLI = """
import click

from plugins import hookimpl, plugin_config


@hookimpl
def host_config_declarations(declare):
    declare("greeting", default="Hello")


@hookimpl
def host_register_commands(cli):
    @cli.group()
    def feeds():
        \"\"\"The feeds.\"\"\"

    @feeds.command(name="import")
    @click.option("--config", "feed_config")
    def import_(feed_config):
        \"\"\"Import the feeds FEED_CONFIG lists.\"\"\"
        click.echo(f"{plugin_config('feeds')['greeting']}: importing {feed_config}")

    @feeds.command(name="list")
    def list_():
        \"\"\"List the feeds.\"\"\"
        click.echo(f"{plugin_config('feeds')['greeting']}: no feeds")
"""


def test_a_plugin_commands_own_config_option_is_its_own(site: Site, tmp_path: Path) -> None:
    add_plugin(site, "feeds", FEEDS_CLI)
    ini = cli_ini(tmp_path, "feeds", "[plugin:feeds]", "greeting = Hi")
    env = host_env(pythonpath=[site.path])

    before = host("--config", str(ini), "feeds", "import", "--config", "feeds.yaml", env=env, cwd=tmp_path)
    default = host(
        "feeds", "import", "--config=feeds.yaml", env={**env, "HOST_CONFIG": str(ini)}, cwd=tmp_path
    )
    # A subcommand without its own --config takes the host's, after its name as before it.
    host_s = host("feeds", "list", "--config", str(ini), env=env, cwd=tmp_path)

    assert (before.returncode, before.stdout, before.stderr) == (0, "Hi: importing feeds.yaml\n", "")
    assert (default.returncode, default.stdout, default.stderr) == (0, "Hi: importing feeds.yaml\n", "")
    assert (host_s.returncode, host_s.stdout, host_s.stderr) == (0, "Hi: no feeds\n", "")


def test_help_lists_the_plugin_commands_of_the_file_given_with_config(site: Site, tmp_path: Path) -> None:
    cli_site(site)
    ini = cli_ini(tmp_path)

    listed = host("--config", str(ini), "--help", env=host_env(pythonpath=[site.path]), cwd=tmp_path)

    assert listed.returncode == 0
    assert "hello" in commands_listed(listed.stdout)


def test_plugin_command_clashing_with_a_builtin_is_an_error(site: Site, tmp_path: Path) -> None:
    cli_site(site)
    ini = cli_ini(tmp_path, "hello clash")
    env = host_env({"HOST_CONFIG": str(ini)}, pythonpath=[site.path])

    listed = host("--help", env=env, cwd=tmp_path)
    shown = host("plugins", env=env, cwd=tmp_path)

    error = f"{prefix('clash')}: adds the command 'tasks', which host already has"
    assert listed.returncode == 0
    # The other plugin's command is still there; the built-in is not replaced.
    assert "hello" in commands_listed(listed.stdout)
    assert any(
        line.startswith("tasks List every task the installed extensions provide")
        for line in words(listed.stdout.splitlines())
    )
    assert f"Commands from plugins could not be listed: {error} (see `host doctor`)" in " ".join(
        listed.stdout.split()
    )
    assert shown.returncode == 2
    assert f"    error:       {error}" in shown.stdout.splitlines()
    assert "                 -> give the plugin's command another name" in shown.stdout.splitlines()


def test_help_points_to_a_command_that_reports_the_clash(site: Site, tmp_path: Path) -> None:
    cli_site(site)
    ini = cli_ini(tmp_path, "hello clash")
    env = host_env({"HOST_CONFIG": str(ini)}, pythonpath=[site.path])
    listed = host("--help", env=env, cwd=tmp_path)
    pointer = re.search(r"\(see `host (\w+)`\)", " ".join(listed.stdout.split()))
    assert pointer is not None, listed.stdout

    followed = host(pointer[1], env=env, cwd=tmp_path)

    assert followed.returncode == 2, followed.stdout
    assert "adds the command 'tasks', which host already has" in followed.stdout


def test_installed_example_plugin_command(tmp_path: Path) -> None:
    ini = tmp_path / "development.ini"
    shutil.copy(ROOT / "development.ini", ini)

    ran = host("--config", str(ini), "example", "hello", env=host_env(), cwd=tmp_path)

    assert (ran.returncode, ran.stdout, ran.stderr) == (0, "Hello, world!\n", "")


# -- host plugins --------------------------------------------------------------------


def block(stdout: str, header: str) -> list[str]:
    """The lines of one plugin's entry in ``host plugins``: its header line and those under it."""
    lines = stdout.splitlines()
    start = lines.index(header)
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith("    ")), len(lines))
    return lines[start:end]


HELLO_BLOCK = [
    "  hello  hello-plugin==1.0  [enabled]",
    "    entry point: host.plugins:hello = hello_plugin",
    "    hooks:       host_beat_schedule, host_config_declarations, host_queues, host_register_commands, "
    "host_task_imports",
    "    tasks:       hello.ping",
    "    queue:       hello <- hello.*",
    "    beat:        hello.tick",
    "    commands:    host hello",
]


def test_host_plugins(site: Site, tmp_path: Path) -> None:
    cli_site(site)
    ini = cli_ini(tmp_path)

    done = host("plugins", "--config", str(ini), env=host_env(pythonpath=[site.path]), cwd=tmp_path)

    assert (done.returncode, done.stderr) == (0, "")
    lines = done.stdout.splitlines()
    assert lines[0] == "Plugins (entry point group host.plugins; enable them with host.plugins in the ini):"
    assert block(done.stdout, HELLO_BLOCK[0]) == HELLO_BLOCK
    assert block(done.stdout, "  idle  idle-plugin==1.0  [not enabled]") == [
        "  idle  idle-plugin==1.0  [not enabled]",
        "    entry point: host.plugins:idle = idle_plugin",
    ]
    # Broken, but not enabled: not imported, so nothing is wrong with it.
    assert "  broken  broken-plugin==2.0  [not enabled]" in lines
    assert "Task extensions (entry point group host.celery_task):" in lines
    # Enabled first, then by name.
    names = [line.split()[0] for line in lines if line.startswith("  ") and not line.startswith("   ")]
    assert names[: names.index("example-ext==" + importlib_metadata.version("example-ext"))] == [
        "hello",
        "broken",
        "clash",
        "example",
        "idle",
    ]


def test_host_plugins_with_a_broken_plugin(site: Site, tmp_path: Path) -> None:
    broken = cli_site(site)
    ini = cli_ini(tmp_path, "hello broken")

    done = host("plugins", "--config", str(ini), env=host_env(pythonpath=[site.path]), cwd=tmp_path)

    assert (done.returncode, done.stderr) == (2, "")
    assert block(done.stdout, "  broken  broken-plugin==2.0  [enabled, BROKEN]") == [
        "  broken  broken-plugin==2.0  [enabled, BROKEN]",
        "    entry point: host.plugins:broken = broken_plugin",
        f"    error:       {prefix('broken', '2.0')}: module broken_plugin is broken: "
        f"it raised RuntimeError: cannot start at {broken}, line 1",
        "                 -> fix the plugin, or remove 'broken' from host.plugins",
    ]
    assert block(done.stdout, HELLO_BLOCK[0]) == HELLO_BLOCK


def test_host_plugins_json(site: Site, tmp_path: Path) -> None:
    broken = cli_site(site)
    ini = cli_ini(tmp_path, "hello broken")

    done = host("plugins", "--json", "--config", str(ini), env=host_env(pythonpath=[site.path]), cwd=tmp_path)

    assert done.returncode == 2
    listing = json.loads(done.stdout)
    plugins = {p["name"]: p for p in listing["plugins"]}
    assert plugins["hello"] == {
        "name": "hello",
        "enabled": True,
        "distribution": "hello-plugin",
        "version": "1.0",
        "entry_point": "host.plugins:hello = hello_plugin",
        "hooks": [
            "host_beat_schedule",
            "host_config_declarations",
            "host_queues",
            "host_register_commands",
            "host_task_imports",
        ],
        "tasks": ["hello.ping"],
        "queues": {"hello": ["hello.*"]},
        "beat": ["hello.tick"],
        "commands": ["hello"],
        "error": None,
    }
    assert plugins["broken"]["error"] == (
        f"{prefix('broken', '2.0')}: module broken_plugin is broken: it raised RuntimeError: cannot start "
        f"at {broken}, line 1\n  -> fix the plugin, or remove 'broken' from host.plugins"
    )
    assert {k: plugins["idle"][k] for k in ("enabled", "hooks", "error")} == {
        "enabled": False,
        "hooks": [],
        "error": None,
    }
    assert [e["distribution"] for e in listing["task_extensions"]] == ["example-ext"]


# -- host doctor ---------------------------------------------------------------------


def doctor(site: Site, ini: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return host("doctor", "--config", str(ini), env=host_env(env, pythonpath=[site.path]), cwd=ini.parent)


def failures(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("FAIL")]


def test_doctor_on_a_healthy_setup(site: Site, tmp_path: Path) -> None:
    cli_site(site)
    ini = cli_ini(tmp_path)

    done = doctor(site, ini)

    assert (done.returncode, done.stderr) == (0, ""), done.stdout
    lines = done.stdout.splitlines()
    assert all(line.startswith("ok   ") for line in lines), done.stdout
    assert [line[5:].split(":")[0] for line in lines] == [
        "config",
        "plugins",
        "extensions",
        "task names",
        "beat schedule",
        "broker",
        "result store",
        "embedded broker",
        "embedded result store",
        "lock store",
    ]
    assert lines[:2] == [f"ok   config: {ini} is valid", "ok   plugins: hello (hello-plugin==1.0)"]
    assert lines[4] == "ok   beat schedule: 1 entry, every task exists"


def test_doctor_on_a_bad_key(site: Site, tmp_path: Path) -> None:
    ini = write_ini(ini_path(tmp_path), EMBEDDED + "host.plugin = hello\n")

    done = doctor(site, ini)

    assert (done.returncode, done.stderr) == (2, "")
    assert done.stdout.splitlines() == [
        f"FAIL config: {ini}, section [app:main], key 'host.plugin': unknown host setting "
        "-> did you mean host.plugins?"
    ]


def test_doctor_on_a_broken_plugin(site: Site, tmp_path: Path) -> None:
    broken = cli_site(site)
    ini = cli_ini(tmp_path, "hello broken")

    done = doctor(site, ini)

    assert (done.returncode, done.stderr) == (2, "")
    assert failures(done.stdout) == [
        f"FAIL plugin broken: {prefix('broken', '2.0')}: module broken_plugin is broken: "
        f"it raised RuntimeError: cannot start at {broken}, line 1 "
        "-> fix the plugin, or remove 'broken' from host.plugins"
    ]


def closed_port() -> int:
    """A port nothing listens on: the one the system just gave a socket that is now closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_doctor_on_a_stopped_broker(site: Site, tmp_path: Path) -> None:
    cli_site(site)
    port = closed_port()
    broker = f"amqp://guest:s3cret@127.0.0.1:{port}//"
    # example_ext's exclusive task needs a lock store, which a RabbitMQ site names itself.
    locks = "host.locks.url = embedded+sqlite:///%(here)s/locks.sqlite\n"
    ini = write_ini(
        ini_path(tmp_path), EMBEDDED.replace("embedded+sqlite:///%(here)s/broker.sqlite", broker) + locks
    )

    done = doctor(site, ini)

    assert (done.returncode, done.stderr) == (1, ""), done.stdout
    [failed] = failures(done.stdout)
    assert failed.startswith(f"FAIL broker: amqp://guest:**@127.0.0.1:{port}// does not answer (")
    assert "Connection refused" in failed
    assert failed.endswith(f") -> start the broker, or correct celery.broker_url in {ini}")
    assert "s3cret" not in done.stdout
