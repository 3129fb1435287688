"""The usual mistakes of an extension's author, each made with a real distribution and the real ``host``.

Issue 16, "the right message for every mistake": each message names the
author's own file (or entry point, or distribution), says what to change, with
"did you mean" wherever a near name exists, and exits 2 for a configuration
problem; none shows a traceback. The distributions are real ``*.dist-info``
folders (the ``site`` fixture) reaching the ``host`` process through
``PYTHONPATH``, beside the installed example-ext. No worker is started: item 8
needs a broker, the embedded one, with no worker consuming.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from textwrap import dedent

import pytest

from core.celery_app import HostCelery
from core.config import load_config
from core.errors import UsageError
from core.startup import configure_app
from tests.conftest import Site
from tests.worker import host, host_env, write_ini

EMBEDDED = """
    [app:main]
    celery.broker_url = embedded+sqlite:///%(here)s/data/broker.sqlite
    celery.result_backend = embedded+sqlite:///%(here)s/data/results.sqlite
    """
TASKS = """
    from core.celery_app import celery

    @celery.task(name="weather.now")
    def now(city):
        return {"city": city, "temp": 20}

    @celery.task(name="weather.forecast", bind=True)
    def forecast(self, city, days=3):
        return {"city": city, "days": days}
    """
PLUGIN = """
    import click

    from plugins import hookimpl, plugin_config


    @hookimpl
    def host_config_declarations(declare):
        declare("retries", type="int", default=3)
        declare("latitude", type="float", minimum=-90, maximum=90, default=0.0)


    @hookimpl
    def host_register_commands(cli):
        @cli.group()
        def weather():
            \"\"\"The weather.\"\"\"

        @weather.command()
        def now():
            \"\"\"Print the plugin's options.\"\"\"
            options = plugin_config("weather")
            click.echo(f"retries {options['retries']}, latitude {options['latitude']}")

        @weather.command()
        def crash():
            \"\"\"Fail with a bug.\"\"\"
            {}["nope"]
    """
ENTRY_POINT = "hostext_weather.celery_import:task_imports"


def weather(
    site: Site,
    *,
    entry_point: str = ENTRY_POINT,
    group: str = "host.celery_task",
    returns: str = '["hostext_weather.tasks"]',
    plugin: str = PLUGIN,
    plugin_entry_point: str = "hostext_weather.plugin",
    plugin_name: str = "weather",
    tasks: str = TASKS,
) -> Path:
    """The distribution hostext-weather 0.1, as its author wrote it, mistakes included; its package folder."""
    site.add(
        "hostext-weather",
        "0.1",
        {group: {"tasks": entry_point}, "host.plugins": {plugin_name: plugin_entry_point}},
        {
            "hostext_weather/__init__.py": "",
            "hostext_weather/celery_import.py": f"def task_imports():\n    return {returns}\n",
            "hostext_weather/tasks.py": tasks,
            "hostext_weather/plugin.py": plugin,
        },
    )
    return site.path / "hostext_weather"


def ini(tmp_path: Path, *lines: str, plugins: str = "weather") -> Path:
    return write_ini(
        tmp_path, EMBEDDED + f"host.plugins = {plugins}\n" + "\n".join(lines) + "\n", "weather.ini"
    )


def run(site: Site, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    done = host(*args, env=host_env(env, pythonpath=[site.path]), cwd=tmp_path)
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    return done.returncode, done.stdout, done.stderr


def errors(stderr: str) -> list[str]:
    """Each ``Error:`` line of ``stderr`` with the hint lines under it, as one string."""
    return [
        block.rstrip("\n") for block in re.split(r"(?m)^(?=Error: )", stderr) if block.startswith("Error:")
    ]


def reinstall(name: str = "hostext-weather") -> str:
    return f"then reinstall {name}: entry points are read at install time"


# -- 1, 2: the entry points -----------------------------------------------------------


def test_an_entry_point_naming_a_module_the_package_lacks(site: Site, tmp_path: Path) -> None:
    package = weather(site, entry_point="hostext_weather.celery_imports:task_imports")

    status, _, stderr = run(site, tmp_path, "tasks", "--config", str(ini(tmp_path)))

    assert status == 2
    assert errors(stderr) == [
        "Error: extension hostext-weather==0.1 (entry point host.celery_task:tasks = "
        "hostext_weather.celery_imports:task_imports): module hostext_weather.celery_imports (its entry "
        f"point) does not exist: package hostext_weather ({package}) has no module celery_imports\n"
        "  -> did you mean hostext_weather.celery_import? Correct the entry point in hostext-weather's "
        f"setup.py or pyproject.toml, {reinstall()}"
    ]
    assert "not installed" not in stderr


def test_a_path_task_imports_returns_with_a_typo(site: Site, tmp_path: Path) -> None:
    package = weather(site, returns='["hostext_weather.task"]')

    status, _, stderr = run(site, tmp_path, "tasks", "--config", str(ini(tmp_path)))

    assert status == 2
    assert errors(stderr) == [
        f"Error: extension hostext-weather==0.1 (entry point host.celery_task:tasks = {ENTRY_POINT}): "
        "module hostext_weather.task (a module task_imports() returned) does not exist: package "
        f"hostext_weather ({package}) has no module task\n"
        "  -> did you mean hostext_weather.tasks? Fix the path task_imports() returns "
        f"({package / 'celery_import.py'}, line 1)"
    ]


def test_a_bare_module_name_task_imports_returns(site: Site, tmp_path: Path) -> None:
    package = weather(site, returns='["tasks"]')

    status, _, stderr = run(site, tmp_path, "tasks", "--config", str(ini(tmp_path)))

    assert status == 2
    assert errors(stderr) == [
        f"Error: extension hostext-weather==0.1 (entry point host.celery_task:tasks = {ENTRY_POINT}): "
        "module tasks (a module task_imports() returned) does not exist: no top-level module tasks is "
        "installed: a module path starts at its top-level package\n"
        "  -> did you mean hostext_weather.tasks? Fix the path task_imports() returns "
        f"({package / 'celery_import.py'}, line 1)"
    ]
    assert "not installed" not in stderr and "pip install" not in stderr


def test_an_editable_extension_is_reinstalled_from_its_folder(site: Site, tmp_path: Path) -> None:
    weather(site, returns='["rainfall.tasks"]')
    project = tmp_path / "hostext-weather"
    project.mkdir()
    direct_url = {"url": project.as_uri(), "dir_info": {"editable": True}}
    (site.path / "hostext_weather-0.1.dist-info" / "direct_url.json").write_text(json.dumps(direct_url))

    status, _, stderr = run(site, tmp_path, "tasks", "--config", str(ini(tmp_path)))

    assert status == 2
    assert errors(stderr) == [
        f"Error: extension hostext-weather==0.1 (entry point host.celery_task:tasks = {ENTRY_POINT}): "
        "module rainfall.tasks (a module task_imports() returned) is not installed\n"
        f"  -> reinstall hostext-weather (pip install -e {project}), or uninstall it"
    ]


def test_a_function_name_typo_in_the_entry_point(site: Site, tmp_path: Path) -> None:
    package = weather(site, entry_point="hostext_weather.celery_import:task_import")

    status, _, stderr = run(site, tmp_path, "tasks", "--config", str(ini(tmp_path)))

    assert status == 2
    assert errors(stderr) == [
        "Error: extension hostext-weather==0.1 (entry point host.celery_task:tasks = "
        "hostext_weather.celery_import:task_import): module hostext_weather.celery_import (its entry point) "
        f"has no task_import ({package / 'celery_import.py'})\n"
        "  -> did you mean task_imports? Correct the entry point in hostext-weather's setup.py or "
        f"pyproject.toml, {reinstall()}"
    ]


def test_a_plugin_entry_point_naming_an_object_the_module_lacks(site: Site, tmp_path: Path) -> None:
    source = dedent(PLUGIN) + "\n\nclass Weather:\n    pass\n"
    package = weather(site, plugin=source, plugin_entry_point="hostext_weather.plugin:Wether")

    status, _, stderr = run(site, tmp_path, "tasks", "--config", str(ini(tmp_path)))

    assert status == 2
    assert errors(stderr) == [
        "Error: plugin 'weather' (hostext-weather==0.1, entry point host.plugins:weather = "
        "hostext_weather.plugin:Wether): module hostext_weather.plugin has no Wether "
        f"({package / 'plugin.py'})\n"
        "  -> did you mean Weather? Correct the entry point in hostext-weather's setup.py or "
        f"pyproject.toml, {reinstall()}"
    ]


def test_an_entry_point_group_typo_is_not_silently_ignored(site: Site, tmp_path: Path) -> None:
    weather(site, group="host.celery_tasks")

    status, stdout, stderr = run(site, tmp_path, "tasks", "--config", str(ini(tmp_path)))

    assert status == 2
    assert errors(stderr) == [
        "Error: extension hostext-weather==0.1 (entry point host.celery_tasks:tasks = "
        f"{ENTRY_POINT}): its entry point is in the group host.celery_tasks, which the host does not "
        "read: none of its tasks are loaded\n"
        "  -> did you mean host.celery_task? Correct the group in hostext-weather's setup.py or "
        f"pyproject.toml, {reinstall()}"
    ]
    assert "weather.now" not in stdout


def test_a_plugin_declared_in_a_misspelled_group(site: Site, tmp_path: Path) -> None:
    site.add(
        "hostext-weather",
        "0.1",
        {"host.plugin": {"weather": "hostext_weather.plugin"}},
        {"hostext_weather/__init__.py": "", "hostext_weather/plugin.py": PLUGIN},
    )

    status, _, stderr = run(site, tmp_path, "tasks", "--config", str(ini(tmp_path)))

    assert status == 2
    assert errors(stderr) == [
        "Error: plugin 'weather' is named in host.plugins, and hostext-weather==0.1 declares it in the "
        "group host.plugin (host.plugin:weather = hostext_weather.plugin), which the host does not read\n"
        "  -> did you mean host.plugins? Correct the group in hostext-weather's setup.py or "
        f"pyproject.toml, {reinstall()}"
    ]


# -- 3: hook implementations -------------------------------------------------------


def test_a_hookimpl_with_an_argument_the_hook_does_not_have(site: Site, tmp_path: Path) -> None:
    package = weather(site, plugin=dedent(PLUGIN) + "\n\n@hookimpl\ndef host_queues(app):\n    return {}\n")
    # A decorated function starts at its first decorator, @hookimpl: the line above its def.
    line = (package / "plugin.py").read_text().splitlines().index("def host_queues(app):")

    status, _, stderr = run(site, tmp_path, "tasks", "--config", str(ini(tmp_path)))

    assert status == 2
    assert errors(stderr) == [
        "Error: plugin 'weather' (hostext-weather==0.1, entry point host.plugins:weather = "
        f"hostext_weather.plugin): host_queues(app) at {package / 'plugin.py'}, line {line} takes 'app', "
        "which the hook host_queues does not pass: it passes no arguments\n"
        "  -> host_queues takes no arguments: def host_queues():"
    ]
    assert "hookspec" not in stderr  # not pluggy's own words


def test_a_plugin_entry_point_at_a_module_with_no_hooks(site: Site, tmp_path: Path) -> None:
    weather(site, plugin_entry_point="hostext_weather.celery_import")
    hint = (
        "  -> did you point the entry point at the wrong module? (hostext_weather.plugin has 2) Correct "
        f"the entry point in hostext-weather's setup.py or pyproject.toml, {reinstall()}"
    )

    for path in (ini(tmp_path), ini(tmp_path, "[plugin:weather]", "retries = 5")):
        status, _, stderr = run(site, tmp_path, "tasks", "--config", str(path))

        assert status == 2
        assert errors(stderr) == [
            "Error: plugin 'weather' (hostext-weather==0.1, entry point host.plugins:weather = "
            "hostext_weather.celery_import): hostext_weather.celery_import has no hook implementations "
            f"(@hookimpl functions): the plugin would do nothing\n{hint}"
        ]


# -- 4: plugin options -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("retries = -1", "'-1' is out of range: it must be 0 or more"),
        ("latitude = -91", "'-91' is out of range: it must be between -90 and 90"),
        ("retries = two", "'two' is not an integer: write a whole number such as 4"),
    ],
)
def test_a_plugin_number_option_says_its_rule(site: Site, tmp_path: Path, line: str, problem: str) -> None:
    weather(site)
    path = ini(tmp_path, "[plugin:weather]", line)

    status, _, stderr = run(site, tmp_path, "weather", "now", "--config", str(path))

    assert status == 2
    key = line.split(" = ")[0]
    assert stderr == f"Error: {path}, section [plugin:weather], key {key!r}: {problem}\n"


@pytest.mark.parametrize(
    ("declaration", "problem", "fix"),
    [
        (
            'declare("count", type="int", default="many")',
            "declares the int option 'count' with the default 'many', which is not an int",
            "give a default of the option's type, a whole number such as default=3, or None",
        ),
        (
            'declare("flag", type="bool", default="no")',
            "declares the bool option 'flag' with the default 'no', which is not a bool",
            "give a default of the option's type, True or False, or None",
        ),
        (
            'declare("mode", choices=["a", "b"], default="c")',
            "declares the option 'mode' with the default 'c', which is not one of its choices: 'a', 'b'",
            "make the default one of the choices, or add it to them",
        ),
        (
            'declare("greeting", defualt="Hi")',
            "declares the option 'greeting' with defualt=, which declare() does not take; it takes name, "
            "type, default, help, choices, required, minimum, maximum",
            "did you mean default=?",
        ),
        (
            'declare("greeting", type="str")',
            "declares the option 'greeting' with type 'str'; use one of string, int, float, bool, list, "
            "dict, any",
            'did you mean type="string"?',
        ),
        (
            'declare("count", type="integer")',
            "declares the option 'count' with type 'integer'; use one of string, int, float, bool, list, "
            "dict, any",
            'did you mean type="int"?',
        ),
    ],
)
def test_a_bad_option_declaration(
    site: Site, tmp_path: Path, declaration: str, problem: str, fix: str
) -> None:
    weather(site, plugin=dedent(PLUGIN).replace('declare("retries", type="int", default=3)', declaration))

    status, _, stderr = run(site, tmp_path, "tasks", "--config", str(ini(tmp_path)))

    assert status == 2
    assert errors(stderr) == [
        "Error: plugin 'weather' (hostext-weather==0.1, entry point host.plugins:weather = "
        f"hostext_weather.plugin): {problem}\n  -> {fix}"
    ]
    assert "unexpected keyword argument" not in stderr


def test_a_latitude_can_be_a_float_option(site: Site, tmp_path: Path) -> None:
    weather(site)

    status, stdout, _ = run(
        site,
        tmp_path,
        "weather",
        "now",
        "--config",
        str(ini(tmp_path, "[plugin:weather]", "latitude = -33.9")),
    )

    assert (status, stdout) == (0, "retries 3, latitude -33.9\n")


def test_a_misspelled_plugin_section(site: Site, tmp_path: Path) -> None:
    weather(site)
    path = ini(tmp_path, "[plugin:wether]", "retries = 5")

    status, _, stderr = run(site, tmp_path, "tasks", "--config", str(path))

    assert status == 2
    assert stderr == (
        f"Error: {path}, section [plugin:wether]: this section configures no plugin, but looks meant for "
        "plugin 'weather', which host.plugins enables: its options are not read from here\n"
        "  -> did you mean [plugin:weather]?\n"
    )


def test_a_plugin_section_named_after_part_of_the_plugin(site: Site, tmp_path: Path) -> None:
    weather(site, plugin_name="hostext_weather")
    path = ini(tmp_path, "[plugin:weather]", "retries = 5", plugins="hostext_weather")

    status, _, stderr = run(site, tmp_path, "tasks", "--config", str(path))

    assert status == 2
    assert stderr == (
        f"Error: {path}, section [plugin:weather]: this section configures no plugin, but looks meant for "
        "plugin 'hostext_weather', which host.plugins enables: its options are not read from here\n"
        "  -> did you mean [plugin:hostext_weather]?\n"
    )


def test_a_typo_in_the_plugin_part_of_a_variable(site: Site, tmp_path: Path) -> None:
    weather(site)

    status, _, stderr = run(
        site, tmp_path, "tasks", "--config", str(ini(tmp_path)), env={"HOST_PLUGIN_WEATHR_RETRIES": "5"}
    )

    assert status == 2
    assert stderr == (
        "Error: environment, key 'HOST_PLUGIN_WEATHR_RETRIES': this variable sets no plugin's option, but "
        "looks meant for plugin weather (hostext-weather==0.1): it is not read\n"
        "  -> did you mean HOST_PLUGIN_WEATHER_RETRIES?\n"
    )


def test_a_misspelled_option_key_and_plugin_name(site: Site, tmp_path: Path) -> None:
    weather(site)
    key = ini(tmp_path, "[plugin:weather]", "retrys = 5")
    status, _, stderr = run(site, tmp_path, "tasks", "--config", str(key))
    assert status == 2
    assert stderr.endswith(
        "key 'retrys': unknown option of plugin weather (hostext-weather==0.1)\n  -> did you mean retries?\n"
    )

    name = write_ini(tmp_path, EMBEDDED + "host.plugins = wether\n", "name.ini")
    status, _, stderr = run(site, tmp_path, "tasks", "--config", str(name))
    assert status == 2
    assert "plugin 'wether' is named in host.plugins but no installed distribution provides it" in stderr
    assert "  -> did you mean 'weather'?" in stderr


def test_a_typo_in_the_plugin_entry_point_name(site: Site, tmp_path: Path) -> None:
    weather(site, plugin_name="hostext_weathr")

    status, _, stderr = run(
        site, tmp_path, "tasks", "--config", str(ini(tmp_path, plugins="hostext_weather"))
    )

    assert status == 2
    assert errors(stderr) == [
        "Error: plugin 'hostext_weather' is named in host.plugins but no installed distribution provides "
        "it; hostext-weather==0.1 provides the near name 'hostext_weathr' (host.plugins:hostext_weathr = "
        "hostext_weather.plugin)\n"
        "  -> did you mean 'hostext_weathr'? Either host.plugins or hostext-weather's entry point is "
        "misspelled: correct host.plugins, or correct the entry point's name in hostext-weather's setup.py "
        f"or pyproject.toml, {reinstall()}"
    ]


# -- 5, 10: plugin commands ------------------------------------------------------------


def test_config_after_a_plugin_command(site: Site, tmp_path: Path) -> None:
    weather(site)
    path = ini(tmp_path, "[plugin:weather]", "retries = 5")

    after = run(site, tmp_path, "weather", "now", "--config", str(path))
    equals = run(site, tmp_path, "weather", f"--config={path}", "now")
    before = run(site, tmp_path, "--config", str(path), "weather", "now")

    assert after == equals == before == (0, "retries 5, latitude 0.0\n", "")


def test_a_misspelled_plugin_command_gets_did_you_mean(site: Site, tmp_path: Path) -> None:
    weather(site)

    status, _, stderr = run(site, tmp_path, "wether", "now", "--config", str(ini(tmp_path)))

    assert status == 2
    assert stderr.endswith("Error: No such command 'wether'. Did you mean 'weather'?\n")


def test_a_plugin_command_that_raises(site: Site, tmp_path: Path) -> None:
    package = weather(site)
    path = ini(tmp_path)
    line = (package / "plugin.py").read_text().splitlines().index('        {}["nope"]') + 1

    status, stdout, stderr = run(site, tmp_path, "weather", "crash", "--config", str(path))

    assert (status, stdout) == (1, "")
    assert stderr == (
        "Error: plugin 'weather' (hostext-weather==0.1, entry point host.plugins:weather = "
        "hostext_weather.plugin): the command `host weather crash` raised KeyError: 'nope' at "
        f"{package / 'plugin.py'}, line {line}\n"
        "  -> a bug of the plugin: fix it, or report it to the authors of hostext-weather; run it again "
        "with --traceback (or HOST_DEBUG=1) to see the traceback\n"
    )


@pytest.mark.parametrize(("args", "env"), [(["--traceback"], {}), ([], {"HOST_DEBUG": "1"})])
def test_a_plugin_command_that_raises_with_its_traceback(
    site: Site, tmp_path: Path, args: list[str], env: dict[str, str]
) -> None:
    weather(site)

    done = host(
        "weather", "crash", *args, "--config", str(ini(tmp_path)), env=host_env(env, pythonpath=[site.path])
    )

    assert done.returncode == 1
    assert done.stderr.startswith("Traceback (most recent call last):\n")
    assert "KeyError: 'nope'\nError: plugin 'weather'" in done.stderr
    assert "run it again with --traceback" not in done.stderr


# -- 6: URLs, and host doctor's one verdict per file ------------------------------------------


def test_a_broker_scheme_typo_in_host_doctor(site: Site, tmp_path: Path) -> None:
    weather(site)
    path = write_ini(
        tmp_path, EMBEDDED.replace("broker_url = embedded+", "broker_url = embeded+"), "weather.ini"
    )

    status, stdout, _ = run(site, tmp_path, "doctor", "--config", str(path))

    assert status == 2
    assert stdout == (
        f"FAIL config: {path}, section [app:main], key 'celery.broker_url': "
        f"embeded+sqlite:///{tmp_path}/data/broker.sqlite: unknown broker transport 'embeded' "
        "-> did you mean embedded+sqlite://?\n"
    )


def test_a_result_store_sub_scheme_typo_everywhere(site: Site, tmp_path: Path) -> None:
    weather(site)
    path = write_ini(
        tmp_path, EMBEDDED.replace("backend = embedded+sqlite", "backend = embedded+sqlit"), "w.ini"
    )
    url = f"{tmp_path}/data/results.sqlite"
    problem = (
        f"{path}, section [app:main], key 'celery.result_backend': embedded+sqlit:///{url}: the embedded "
        f"result store needs a URL like embedded+sqlite:///%(here)s/data/results.sqlite, got 'sqlit:///{url}'"
    )

    doctor = run(site, tmp_path, "doctor", "--config", str(path))
    send = run(site, tmp_path, "send", "weather.now", '"Paris"', "--wait", "--config", str(path))
    celeryd = run(site, tmp_path, "celeryd", "--config", str(path))

    assert doctor == (2, f"FAIL config: {problem} -> did you mean embedded+sqlite://?\n", "")
    assert send == celeryd == (2, "", f"Error: {problem}\n  -> did you mean embedded+sqlite://?\n")
    assert not (tmp_path / "data" / "broker.sqlite").exists()  # nothing was sent


@pytest.mark.parametrize(
    ("url", "fixed"),
    [
        ("amqp:/127.0.0.1:5672//", "amqp://127.0.0.1:5672//"),
        ("amqp:/guest:s3cret@127.0.0.1:5672//", "amqp://guest:**@127.0.0.1:5672//"),
        ("embedded+sqlite:/srv/broker.sqlite", "embedded+sqlite:////srv/broker.sqlite"),
    ],
)
def test_a_broker_url_with_one_slash_is_malformed(site: Site, tmp_path: Path, url: str, fixed: str) -> None:
    weather(site)
    body = EMBEDDED.replace("embedded+sqlite:///%(here)s/data/broker.sqlite", url)
    path = write_ini(tmp_path, body, "weather.ini")
    scheme = url.partition(":")[0]

    status, stdout, stderr = run(site, tmp_path, "tasks", "--config", str(path))

    assert (status, stdout) == (2, "")
    assert stderr == (
        f"Error: {path}, section [app:main], key 'celery.broker_url': {url.replace('s3cret', '**')}: "
        f"malformed URL: the form is {scheme}://host:port/... (two slashes after '{scheme}:')\n"
        f"  -> did you mean {fixed}?\n"
    )
    assert "cannot be imported" not in stderr


# -- 7: two extensions, one task name ---------------------------------------------------------

OTHER_TASKS = """
    from core.celery_app import celery

    @celery.task(name="other.own")
    def own():
        return "other"

    @celery.task(name="weather.now")
    def now(city):
        return "the other extension's"
    """


def clash(site: Site) -> Path:
    """hostext-other (sorted first) takes weather.now; hostext-weather is left out."""
    site.add(
        "hostext-other",
        "0.2",
        {"host.celery_task": {"tasks": "hostext_other.celery_import:task_imports"}},
        {
            "hostext_other/__init__.py": "",
            "hostext_other/celery_import.py": "def task_imports():\n    return ['hostext_other.tasks']\n",
            "hostext_other/tasks.py": OTHER_TASKS,
        },
    )
    return weather(
        site,
        tasks="""
        from core.celery_app import celery

        @celery.task(name="weather.first")
        def first():
            return "registered before the clash"

        @celery.task(name="weather.now")
        def now(city):
            return {"city": city}
        """,
    )


def test_doctor_fails_extensions_and_the_beat_entry_of_a_contested_task(site: Site, tmp_path: Path) -> None:
    clash(site)
    path = ini(tmp_path, "[celerybeat:hourly]", "task = weather.now", "schedule = 1h", 'args = ["Paris"]')

    status, stdout, _ = run(site, tmp_path, "doctor", "--config", str(path))

    assert status == 2
    lines = stdout.splitlines()
    assert not [line for line in lines if line.startswith(("ok   extensions", "ok   beat schedule"))], stdout
    [extension] = [line for line in lines if line.startswith("FAIL extension hostext-weather: ")]
    assert "task name 'weather.now' in module hostext_weather.tasks" in extension
    assert "is already registered by hostext-other==0.2 (module hostext_other.tasks)" in extension
    assert extension.endswith("host.celery_task.disabled = hostext-weather")
    assert (
        "FAIL task names: 'weather.now' is defined by hostext-other==0.2 and by hostext-weather==0.1; "
        "hostext-weather==0.1 was left out"
    ) in stdout
    assert (
        "FAIL beat entry hourly: its task weather.now is defined by hostext-other==0.2 and by "
        f"hostext-weather==0.1, which was left out: the entry ({path} [celerybeat:hourly]) would run "
        "hostext-other==0.2's"
    ) in stdout


def test_send_refuses_a_task_of_the_extension_left_out(site: Site, tmp_path: Path) -> None:
    package = clash(site)
    path = ini(tmp_path)

    contested = run(site, tmp_path, "send", "weather.now", '"Paris"', "--config", str(path))
    lost = run(site, tmp_path, "send", "weather.first", "--config", str(path))
    # The surviving extension's own task: no worker can start on this configuration to run it either.
    intact = run(site, tmp_path, "send", "other.own", "--config", str(path))
    worker = run(site, tmp_path, "celeryd", "--config", str(path), env={"HOST_ALLOW_ROOT": "true"})

    assert contested == (
        2,
        "",
        "Error: task 'weather.now' is defined by two extensions, hostext-other==0.2 (module "
        "hostext_other.tasks) and hostext-weather==0.1 (module hostext_weather.tasks), and hostext-weather "
        "was left out: no worker can start on this configuration\n"
        "  -> rename one of the tasks, or disable one of the extensions: "
        "host.celery_task.disabled = hostext-weather\n",
    )
    assert lost[:2] == (2, "")
    assert lost[2].startswith(
        "Error: task 'weather.first' belongs to hostext-weather==0.1, which is broken, so no worker runs it: "
    )
    assert intact == worker  # what `host celeryd` stops on
    assert intact == (
        2,
        "",
        "Error: extension hostext-weather==0.1 (entry point host.celery_task:tasks = "
        "hostext_weather.celery_import:task_imports): task name 'weather.now' in module "
        f"hostext_weather.tasks ({package / 'tasks.py'}, line 8) is already registered by "
        "hostext-other==0.2 (module hostext_other.tasks): none of hostext-weather's tasks are loaded\n"
        "  -> task names must be unique across extensions: rename one of the tasks, or disable one of "
        "the extensions: host.celery_task.disabled = hostext-weather\n",
    )
    assert not (tmp_path / "data" / "broker.sqlite").exists()  # nothing was sent


# -- 8: waiting with no worker -----------------------------------------------------------------


def test_waiting_for_a_task_no_worker_consumes(site: Site, tmp_path: Path) -> None:
    weather(site)
    path = ini(tmp_path)

    status, stdout, stderr = run(
        site, tmp_path, "send", "weather.now", '"Paris"', "--wait", "--timeout", "0.5", "--config", str(path)
    )

    assert (status, stdout) == (1, "")
    match = re.fullmatch(
        r"Error: task (\S+) is still PENDING after 0.5 s: no worker consumes the queue 'celery' "
        r"\(1 message\(s\) waiting in it\)\n"
        rf"  -> start one: host celeryd --config {re.escape(str(path))}; the task runs once one does "
        r"\(host result (\S+) shows it then\)\n",
        stderr,
    )
    assert match is not None, stderr
    assert match[1] == match[2]


# -- 9: arguments that do not fit the task ----------------------------------------------------


@pytest.mark.parametrize(
    ("args", "given"),
    [
        (["weather.now", '"Paris"', "3"], "was given 2 positional arguments: too many positional arguments"),
        (["weather.now"], "was given no arguments: missing a required argument: 'city'"),
        (
            ["weather.forecast", '"Paris"', "3", "4"],
            "was given 3 positional arguments: too many positional arguments",
        ),
    ],
)
def test_send_checks_the_arguments_against_the_signature(
    site: Site, tmp_path: Path, args: list[str], given: str
) -> None:
    package = weather(site)
    name = args[0]
    signature = "(city)" if name == "weather.now" else "(city, days=3)"  # bind=True: self is not shown
    line = 4 if name == "weather.now" else 8

    status, stdout, stderr = run(site, tmp_path, "send", *args, "--config", str(ini(tmp_path)))

    assert (status, stdout) == (2, "")
    assert stderr == (
        f"Error: task {name}{signature} {given}\n"
        f"  -> send the arguments it takes ({name} is defined at {package / 'tasks.py'}, line {line})\n"
    )
    assert not (tmp_path / "data" / "broker.sqlite").exists()  # nothing was sent


WRAPPED = """
    import functools

    from core.celery_app import celery


    def in_celsius(fun):
        @functools.wraps(fun)
        def wrapper(value):
            return fun("celsius", value)

        return wrapper


    @celery.task(name="weather.convert")
    @in_celsius
    def convert(unit, value):
        return {"unit": unit, "value": value}
    """


def test_send_checks_what_celery_checks_of_a_wrapped_task(site: Site, tmp_path: Path) -> None:
    # The wrapper's signature, as Celery's head_from_fun reads it, not the one functools.wraps points to.
    package = weather(site, tasks=WRAPPED)
    path = ini(tmp_path)

    sent = run(site, tmp_path, "send", "weather.convert", "21", "--config", str(path))
    refused = run(site, tmp_path, "send", "weather.convert", "21", "22", "--config", str(path))

    assert sent[0] == 0, sent[2]
    assert re.fullmatch(r"[0-9a-f-]{36}\n", sent[1])
    assert refused == (
        2,
        "",
        "Error: task weather.convert(value) was given 2 positional arguments: too many positional arguments\n"
        f"  -> send the arguments it takes (weather.convert is defined at {package / 'tasks.py'}, line 15)\n",
    )


def test_send_says_which_keyword_was_meant(site: Site, tmp_path: Path) -> None:
    weather(site)

    status, _, stderr = run(
        site,
        tmp_path,
        "send",
        "weather.forecast",
        '"Paris"',
        "--kwargs",
        '{"dayz": 2}',
        "--config",
        str(ini(tmp_path)),
    )

    assert status == 2
    assert stderr.startswith(
        "Error: task weather.forecast(city, days=3) was given 1 positional argument and the keyword "
        "argument dayz: got an unexpected keyword argument 'dayz'; 'dayz' is not one of its arguments\n"
        "  -> did you mean days? Send the arguments it takes"
    )


def test_a_syntax_error_names_the_authors_file_and_line(site: Site, tmp_path: Path) -> None:
    package = weather(site, tasks="from core.celery_app import celery\n\ndef now(city)\n    return city\n")

    status, _, stderr = run(site, tmp_path, "tasks", "--config", str(ini(tmp_path)))

    assert status == 2
    assert (
        "module hostext_weather.tasks (a module task_imports() returned) is broken: it raised SyntaxError: "
        f"expected ':' at {package / 'tasks.py'}, line 3\n"
    ) in stderr


def test_send_many_checks_each_line_before_the_first_is_sent(site: Site, tmp_path: Path) -> None:
    package = weather(site)
    items = tmp_path / "items.jsonl"
    items.write_text('["Paris"]\n\n{"args": ["Lyon"], "kwargs": {"country": "FR"}}\n', encoding="utf-8")

    status, stdout, stderr = run(
        site, tmp_path, "send", "weather.now", "--many", str(items), "--config", str(ini(tmp_path))
    )

    assert (status, stdout) == (2, "")
    assert stderr == (
        f"Error: {items}, line 3: task weather.now(city) was given 1 positional argument and the keyword "
        "argument country: got an unexpected keyword argument 'country'; "
        "'country' is not one of its arguments\n"
        f"  -> send the arguments it takes (weather.now is defined at {package / 'tasks.py'}, line 4)\n"
    )
    assert not (tmp_path / "data" / "broker.sqlite").exists()  # nothing was sent


def test_the_one_send_path_checks_a_task_registered_here(fresh_app: HostCelery, tmp_path: Path) -> None:
    # What plugins.send_task and send_many do in a web application that imported the task.
    from core import bulk, sending

    app = configure_app(
        fresh_app, load_config(write_ini(tmp_path, "[app:main]\ncelery.broker_url = memory://\n"), environ={})
    )

    @app.task(name="here.add", bind=True)
    def add(self, x, y):
        return x + y

    app.finalize()  # registered, as in a process that has used its tasks (send_task does not finalize)
    with pytest.raises(UsageError) as caught:
        sending.send(app, "here.add", [1], {}, wait=False)
    assert (
        caught.value.message
        == "task here.add(x, y) was given 1 positional argument: missing a required argument: 'y'"
    )
    with pytest.raises(UsageError, match=r"^item 1: task here.add\(x, y\) was given 3 positional arguments"):
        bulk.send_many(app, "here.add", [[1, 2], [1, 2, 3]])
    # A task this process does not have is sent unchecked: only its worker knows it.
    assert sending.send(app, "elsewhere.add", [1, 2, 3], {}, wait=False).id


def test_the_one_send_path_leaves_unchecked_what_celery_does_not_check(
    fresh_app: HostCelery, tmp_path: Path
) -> None:
    # Celery checks arguments only of a task built from a function (its __header__), with typing on.
    from core import sending

    app = configure_app(
        fresh_app, load_config(write_ini(tmp_path, "[app:main]\ncelery.broker_url = memory://\n"), environ={})
    )

    class Add(app.Task):  # type: ignore[name-defined,misc]  # app.Task is a Celery property
        name = "here.add"

        def run(self, x, y):
            return x + y

    app.register_task(Add())

    @app.task(name="here.untyped", typing=False)
    def untyped(x, y):
        return x + y

    app.finalize()
    for name in ("here.add", "here.untyped"):
        assert app.tasks[name].apply_async([1], countdown=60).id  # as Celery itself sends it
        assert sending.send(app, name, [1], {}, wait=False).id
