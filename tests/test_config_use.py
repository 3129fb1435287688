"""core.config: one base file, thin files per environment (``use = config:FILE``).

Real files in tmp_path, usually a base in one folder and the file passed in
another, so that ``%(here)s`` tells them apart. Every error test asserts the
exact text a user sees; an error about a key names the file where the key
was written, which for an inherited key is the base file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import write_ini
from core.celery_app import HostCelery
from core.config import APP_SECTION, HostConfig, configure_logging, load_config, plugin_names
from core.errors import ConfigError

BASE = """
[DEFAULT]
data = %(here)s/data

[app:main]
celery.broker_url = embedded+sqlite:///%(data)s/broker.sqlite
celery.result_backend = embedded+sqlite:///%(data)s/results.sqlite
celery.worker_concurrency = 8
host.plugins = example
"""

DEVELOPMENT = """
[app:main]
use = config:../base/base.ini
celery.worker_concurrency = 2
"""


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """``base/`` for the base file and ``env/`` for the files passed."""
    base, env = tmp_path / "base", tmp_path / "env"
    base.mkdir()
    env.mkdir()
    return base, env


def load(ini: Path, environ: dict[str, str] | None = None) -> HostConfig:
    return load_config(ini, environ={} if environ is None else environ)


def error_text(ini: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load(ini)
    return str(info.value)


# -- inheritance -----------------------------------------------------------------------


def test_the_base_keys_are_inherited_and_the_child_overrides(folders: tuple[Path, Path]) -> None:
    base = write_ini(folders[0] / "base.ini", BASE)
    dev = write_ini(folders[1] / "development.ini", DEVELOPMENT)
    config = load(dev)
    assert config.celery["broker_url"] == f"embedded+sqlite:///{folders[0]}/data/broker.sqlite"
    assert config.celery["worker_concurrency"] == 2
    assert config.host["plugins"] == ["example"]
    assert config.path == dev
    assert config.files == (dev, base)
    assert config.sources["celery.worker_concurrency"] == "file"
    assert config.sources["celery.broker_url"] == f"file {base}"
    assert config.sources["host.plugins"] == f"file {base}"
    assert config.origin(APP_SECTION, "celery.broker_url") == base
    assert config.origin(APP_SECTION, "celery.worker_concurrency") == dev
    # `use` is how the files are put together, not a setting.
    assert "use" not in config.sources and config.parser is not None
    assert not config.parser.has_option(APP_SECTION, "use")


def test_a_chain_of_three_files_the_nearest_value_wins(tmp_path: Path) -> None:
    write_ini(tmp_path / "base.ini", "[app:main]\ncelery.worker_concurrency = 8\ncelery.timezone = UTC\n")
    mid = write_ini(
        tmp_path / "mid.ini",
        "[app:main]\nuse = config:base.ini\ncelery.worker_concurrency = 4\ncelery.task_acks_late = true\n",
    )
    top = write_ini(tmp_path / "top.ini", "[app:main]\nuse = config:mid.ini\ncelery.task_acks_late = false\n")
    config = load(top)
    assert config.files == (top, mid, tmp_path / "base.ini")
    assert (config.celery["timezone"], config.celery["worker_concurrency"]) == ("UTC", 4)
    assert config.celery["task_acks_late"] is False
    assert config.sources["celery.worker_concurrency"] == f"file {mid}"


@pytest.mark.parametrize(
    "use", ["config:base.ini#main", "config: base.ini ", "CONFIG:base.ini", "config:%(here)s/base.ini"]
)
def test_spellings_of_use(tmp_path: Path, use: str) -> None:
    write_ini(tmp_path / "base.ini", "[app:main]\ncelery.timezone = UTC\n")
    child = write_ini(tmp_path / "child.ini", f"[app:main]\nuse = {use}\n")
    assert load(child).celery["timezone"] == "UTC"


def test_an_absolute_path_in_use(folders: tuple[Path, Path]) -> None:
    write_ini(folders[0] / "base.ini", "[app:main]\ncelery.timezone = UTC\n")
    child = write_ini(folders[1] / "child.ini", f"[app:main]\nuse = config:{folders[0] / 'base.ini'}\n")
    assert load(child).celery["timezone"] == "UTC"


def test_an_empty_use_means_no_base(tmp_path: Path) -> None:
    config = load(write_ini(tmp_path / "alone.ini", "[app:main]\nuse =\ncelery.timezone = UTC\n"))
    assert config.files == (tmp_path / "alone.ini",)
    assert config.celery["timezone"] == "UTC"


def test_a_file_without_use_reads_as_before(tmp_path: Path) -> None:
    ini = write_ini(tmp_path / "alone.ini", "[app:main]\ncelery.timezone = UTC\n")
    config = load(ini)
    assert (config.files, config.sources["celery.timezone"], config.logging_path) == ((ini,), "file", None)


# -- [DEFAULT] and %(here)s ------------------------------------------------------------


def test_here_is_the_folder_of_the_file_where_the_key_is_written(folders: tuple[Path, Path]) -> None:
    write_ini(
        folders[0] / "base.ini",
        """
        [app:main]
        celery.result_backend = embedded+sqlite:///%(here)s/results.sqlite
        celery.task_default_queue = %(__file__)s
        """,
    )
    dev = write_ini(
        folders[1] / "development.ini",
        "[app:main]\nuse = config:../base/base.ini\ncelery.broker_url = embedded+sqlite:///%(here)s/b.sqlite\n",
    )
    config = load(dev)
    assert config.celery["result_backend"] == f"embedded+sqlite:///{folders[0]}/results.sqlite"
    assert config.celery["task_default_queue"] == str(folders[0] / "base.ini")
    assert config.celery["broker_url"] == f"embedded+sqlite:///{folders[1]}/b.sqlite"


def test_default_names_of_the_base_are_usable_in_the_child(folders: tuple[Path, Path]) -> None:
    write_ini(folders[0] / "base.ini", BASE)
    dev = write_ini(
        folders[1] / "development.ini",
        "[app:main]\nuse = config:../base/base.ini\ncelery.result_backend = file://%(data)s/results\n",
    )
    # data is %(here)s/data written in the base: the base's folder, wherever it is used.
    assert load(dev).celery["result_backend"] == f"file://{folders[0]}/data/results"


def test_a_default_name_of_the_child_overrides_the_base_everywhere(folders: tuple[Path, Path]) -> None:
    write_ini(folders[0] / "base.ini", BASE)
    prod = write_ini(
        folders[1] / "production.ini",
        "[DEFAULT]\ndata = %(here)s/var\n\n[app:main]\nuse = config:../base/base.ini\n",
    )
    config = load(prod)
    # The base's keys follow the child's data, and %(here)s in it is the child's folder.
    assert config.celery["broker_url"] == f"embedded+sqlite:///{folders[1]}/var/broker.sqlite"
    assert config.celery["result_backend"] == f"embedded+sqlite:///{folders[1]}/var/results.sqlite"
    assert config.parser is not None and config.parser.defaults()["data"] == f"{folders[1]}/var"


def test_a_base_may_use_a_name_only_the_child_defines(tmp_path: Path) -> None:
    write_ini(tmp_path / "base.ini", "[app:main]\ncelery.broker_url = amqp://%(mq_host)s:5672//\n")
    child = write_ini(
        tmp_path / "child.ini", "[DEFAULT]\nmq_host = mq.internal\n\n[app:main]\nuse = config:base.ini\n"
    )
    assert load(child).celery["broker_url"] == "amqp://mq.internal:5672//"


def test_default_names_are_not_settings_in_any_file(tmp_path: Path) -> None:
    write_ini(tmp_path / "base.ini", "[DEFAULT]\ndebug = false\n\n[app:main]\ncelery.timezone = UTC\n")
    child = write_ini(tmp_path / "child.ini", "[DEFAULT]\nsite = a\n\n[app:main]\nuse = config:base.ini\n")
    config = load(child)
    assert "debug" not in config.sources and "site" not in config.sources
    assert config.celery["timezone"] == "UTC"


def test_a_percent_in_the_base_folder_name(tmp_path: Path) -> None:
    folder = tmp_path / "100%(x)s done"
    folder.mkdir()
    write_ini(
        folder / "base.ini", "[DEFAULT]\ndata = %(here)s/data\n\n[app:main]\ncelery.timezone = %(data)s\n"
    )
    child = write_ini(tmp_path / "child.ini", "[app:main]\nuse = config:100%%(x)s done/base.ini\n")
    assert load(child).celery["timezone"] == f"{folder}/data"


# -- [plugin:NAME] ------------------------------------------------------------------------


def test_plugin_sections_merge_key_by_key(folders: tuple[Path, Path]) -> None:
    base = write_ini(
        folders[0] / "base.ini",
        """
        [app:main]
        host.plugins = example

        [plugin:example]
        greeting = Hello from %(here)s
        heartbeat_seconds = 60

        [plugin:other]
        colour = blue
        """,
    )
    dev = write_ini(
        folders[1] / "development.ini",
        "[app:main]\nuse = config:../base/base.ini\n\n[plugin:example]\nheartbeat_seconds = 5\n",
    )
    config = load(dev)
    assert config.plugin_section("example") == {
        "greeting": f"Hello from {folders[0]}",
        "heartbeat_seconds": "5",
    }
    assert config.plugin_section("other") == {"colour": "blue"}
    assert config.origin("plugin:example", "greeting") == base
    assert config.origin("plugin:example", "heartbeat_seconds") == dev
    assert config.file_source("plugin:example", "greeting") == f"file {base}"
    assert config.file_source("plugin:example", "heartbeat_seconds") == "file"


def test_an_interpolation_error_in_an_inherited_plugin_key_names_the_base(tmp_path: Path) -> None:
    base = write_ini(tmp_path / "base.ini", "[app:main]\n\n[plugin:example]\ngreeting = 100%\n")
    config = load(write_ini(tmp_path / "child.ini", "[app:main]\nuse = config:base.ini\n"))
    with pytest.raises(ConfigError) as info:
        config.plugin_section("example")
    assert str(info.value) == (
        f"{base}, section [plugin:example], key 'greeting': cannot interpolate the value: "
        "a % must be followed by (name)s or by another %\n"
        "  -> use %(here)s for the ini's folder and write a literal % as %%"
    )


# -- plugin_names(), the fast path of host --help ------------------------------------------


def test_plugin_names_sees_host_plugins_in_a_base(folders: tuple[Path, Path]) -> None:
    write_ini(folders[0] / "base.ini", BASE)
    dev = write_ini(folders[1] / "development.ini", DEVELOPMENT)
    assert plugin_names(dev, environ={}) == ["example"]
    assert plugin_names(dev, environ={"HOST_PLUGINS": "other"}) == ["other"]


def test_plugin_names_error_names_the_base(tmp_path: Path) -> None:
    base = write_ini(tmp_path / "base.ini", "[app:main]\nhost.plugins = [1]\n")
    child = write_ini(tmp_path / "child.ini", "[app:main]\nuse = config:base.ini\n")
    with pytest.raises(ConfigError) as info:
        plugin_names(child, environ={})
    assert str(info.value) == (
        f"{base}, section [app:main], key 'host.plugins': "
        "'[1]' is not a list (space or comma separated, or JSON): expected a JSON list of strings"
    )


# -- errors in a base name the base ----------------------------------------------------------


def inherit(tmp_path: Path, base_lines: str) -> tuple[Path, Path]:
    """tmp_path/base.ini with ``base_lines`` in [app:main], and child.ini using it."""
    base = write_ini(tmp_path / "base.ini", "[app:main]\n" + base_lines)
    child = write_ini(tmp_path / "child.ini", "[app:main]\nuse = config:base.ini\ncelery.timezone = UTC\n")
    return base, child


def test_an_unknown_key_in_the_base_names_the_base(tmp_path: Path) -> None:
    base, child = inherit(tmp_path, "celery.brokr_url = memory://\n")
    assert error_text(child) == (
        f"{base}, section [app:main], key 'celery.brokr_url': unknown Celery setting\n"
        "  -> did you mean celery.broker_url? "
        "(see https://docs.celeryq.dev/en/stable/userguide/configuration.html)"
    )


def test_a_wrong_type_in_the_base_names_the_base(tmp_path: Path) -> None:
    base, child = inherit(tmp_path, "celery.worker_concurrency = two\n")
    assert error_text(child) == (
        f"{base}, section [app:main], key 'celery.worker_concurrency': "
        "'two' is not an integer: write a whole number such as 4"
    )


def test_a_key_in_neither_namespace_in_the_base_names_the_base(tmp_path: Path) -> None:
    base, child = inherit(tmp_path, "debug = true\n")
    assert error_text(child) == (
        f"{base}, section [app:main], key 'debug': unknown key: settings in this section start with "
        "'celery.', 'host.', 'smtp.' or 'flower.'\n  -> write celery.debug for a Celery setting, or remove it"
    )


def test_an_unknown_name_in_the_base_names_the_base_and_the_default_names(tmp_path: Path) -> None:
    write_ini(tmp_path / "base.ini", "[DEFAULT]\ndata = /srv\n\n[app:main]\ncelery.timezone = %(dta)s\n")
    child = write_ini(tmp_path / "child.ini", "[app:main]\nuse = config:base.ini\n")
    assert error_text(child) == (
        f"{tmp_path / 'base.ini'}, section [app:main], key 'celery.timezone': cannot interpolate the value: "
        "%(dta)s is not defined (the variables are here, __file__ and the names in [DEFAULT]: data)\n"
        "  -> use %(here)s for the ini's folder and write a literal % as %%"
    )


def test_a_serializer_refused_in_the_base_names_the_base(tmp_path: Path) -> None:
    base, child = inherit(tmp_path, "celery.task_serializer = pickle\n")
    assert error_text(child) == (
        f"{base}, section [app:main]: celery.task_serializer = pickle is not in "
        "celery.accept_content (json); workers would reject every such message\n"
        "  -> accepting pickle must be explicit: add it to celery.accept_content"
    )


def test_a_base_that_is_not_a_valid_ini_names_the_base(tmp_path: Path) -> None:
    base = tmp_path / "base.ini"
    base.write_text("[app:main\n", encoding="utf-8")
    child = write_ini(tmp_path / "child.ini", "[app:main]\nuse = config:base.ini\n")
    assert error_text(child).startswith(f"{base}: not a valid ini file: ")


# -- errors of use itself: the file that says use, key 'use' --------------------------------


def use_error(tmp_path: Path, use: str) -> tuple[Path, str]:
    child = write_ini(tmp_path / "child.ini", f"[app:main]\nuse = {use}\n")
    return child, error_text(child)


def test_a_missing_base(tmp_path: Path) -> None:
    child, text = use_error(tmp_path, "config:conf/../missing.ini")
    assert text == (
        f"{child}, section [app:main], key 'use': {tmp_path / 'missing.ini'} does not exist\n"
        f"  -> a relative path is taken from the folder of the file that says use ({tmp_path})"
    )


def test_a_base_that_is_a_folder(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    child, text = use_error(tmp_path, "config:conf")
    assert text == (
        f"{child}, section [app:main], key 'use': {tmp_path / 'conf'} is a folder\n"
        "  -> name the ini file inside it"
    )


def test_a_base_name_the_system_refuses(tmp_path: Path) -> None:
    name = "b" * 300
    child, text = use_error(tmp_path, f"config:{name}")
    assert text == (
        f"{child}, section [app:main], key 'use': {tmp_path / name} cannot be opened: File name too long\n"
        "  -> check the path"
    )


@pytest.mark.parametrize("use", ["egg:ckan", "call:pkg.mod:app", "base.ini"])
def test_use_that_is_not_config(tmp_path: Path, use: str) -> None:
    child, text = use_error(tmp_path, use)
    assert text == (
        f"{child}, section [app:main], key 'use': {use!r} is not a config: URI: "
        "only another ini file can be used\n"
        "  -> write use = config:base.ini, a path relative to the folder of this file "
        "(PasteDeploy's egg: and call: make no sense here)"
    )


def test_use_naming_another_app_section(tmp_path: Path) -> None:
    write_ini(tmp_path / "base.ini", "[app:main]\n\n[app:other]\n")
    child, text = use_error(tmp_path, "config:base.ini#other")
    assert text == (
        f"{child}, section [app:main], key 'use': #other names [app:other]: only [app:main] can be used\n"
        "  -> write use = config:base.ini, a path relative to the folder of this file"
    )


def test_use_naming_no_file(tmp_path: Path) -> None:
    child, text = use_error(tmp_path, "config:")
    assert text == (
        f"{child}, section [app:main], key 'use': config: names no file\n"
        "  -> write use = config:base.ini, a path relative to the folder of this file"
    )


def test_a_cycle(tmp_path: Path) -> None:
    a = write_ini(tmp_path / "a.ini", "[app:main]\nuse = config:b.ini\n")
    b = write_ini(tmp_path / "b.ini", "[app:main]\nuse = config:a.ini\n")
    assert error_text(a) == (
        f"{b}, section [app:main], key 'use': the files use each other in a cycle: {a} -> {b} -> {a}\n"
        "  -> a base file must not use, directly or through others, a file that uses it"
    )


def test_a_file_that_uses_itself(tmp_path: Path) -> None:
    a = write_ini(tmp_path / "a.ini", "[app:main]\nuse = config:./a.ini\n")
    assert error_text(a).startswith(
        f"{a}, section [app:main], key 'use': the files use each other in a cycle: {a} -> {a}\n"
    )


def test_a_base_without_app_main(tmp_path: Path) -> None:
    base = write_ini(tmp_path / "base.ini", "[plugin:example]\ngreeting = hi\n")
    child, text = use_error(tmp_path, "config:base.ini")
    assert text == (
        f"{child}, section [app:main], key 'use': {base} has no [app:main] section\n"
        "  -> a base file holds its settings under [app:main] too"
    )


def test_an_error_deep_in_a_chain_names_the_file_that_says_use(tmp_path: Path) -> None:
    write_ini(tmp_path / "top.ini", "[app:main]\nuse = config:mid.ini\n")
    mid = write_ini(tmp_path / "mid.ini", "[app:main]\nuse = config:gone.ini\n")
    assert error_text(tmp_path / "top.ini").startswith(
        f"{mid}, section [app:main], key 'use': {tmp_path / 'gone.ini'} does not exist\n"
    )


# -- logging --------------------------------------------------------------------------------

LOGGING = """
[loggers]
keys = root

[handlers]
keys = file

[formatters]
keys = plain

[logger_root]
level = INFO
handlers = file

[handler_file]
class = FileHandler
args = ('%(here)s/host.log', 'a')
formatter = plain

[formatter_plain]
format = {prefix} %(levelname)s %(message)s
"""


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, its handlers and level put back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield root
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def log_line(root: logging.Logger, config: HostConfig) -> None:
    configure_logging(config)
    logging.getLogger("host.test").info("through the ini")
    for handler in root.handlers:
        handler.flush()


def test_a_child_without_logging_sections_uses_the_bases(
    folders: tuple[Path, Path], root_logger: logging.Logger
) -> None:
    base = write_ini(folders[0] / "base.ini", "[app:main]\n" + LOGGING.format(prefix="base"))
    config = load(write_ini(folders[1] / "dev.ini", "[app:main]\nuse = config:../base/base.ini\n"))
    assert (config.has_logging, config.logging_path) == (True, base)
    assert config.celery["worker_hijack_root_logger"] is False
    log_line(root_logger, config)
    assert (folders[0] / "host.log").read_text() == "base INFO through the ini\n"


def test_a_child_with_logging_sections_uses_only_its_own(
    folders: tuple[Path, Path], root_logger: logging.Logger
) -> None:
    write_ini(
        folders[0] / "base.ini",
        "[app:main]\n" + LOGGING.format(prefix="base") + "\n[logger_extra]\nlevel = DEBUG\nqualname = x\n",
    )
    dev = write_ini(
        folders[1] / "dev.ini", "[app:main]\nuse = config:../base/base.ini\n" + LOGGING.format(prefix="dev")
    )
    config = load(dev)
    assert config.logging_path == dev
    assert config.parser is not None and not config.parser.has_section("logger_extra")
    log_line(root_logger, config)
    assert (folders[1] / "host.log").read_text() == "dev INFO through the ini\n"
    assert not (folders[0] / "host.log").exists()


def test_incomplete_logging_sections_in_the_base_name_the_base(tmp_path: Path) -> None:
    base = write_ini(tmp_path / "base.ini", "[app:main]\n" + LOGGING.split("[handler_file]")[0])
    config = load(write_ini(tmp_path / "child.ini", "[app:main]\nuse = config:base.ini\n"))
    with pytest.raises(ConfigError) as info:
        configure_logging(config)
    # Formatters are built first, and [formatter_plain] came after the cut too.
    assert str(info.value) == (
        f"{base}: the logging sections are incomplete: nothing defines 'formatter_plain'\n"
        "  -> [loggers], [handlers] and [formatters] each need a keys = line, and every name listed "
        "there its own [logger_NAME], [handler_NAME] or [formatter_NAME] section"
    )


# -- end to end: a child ini configures the app ---------------------------------------------


def test_core_configure_with_a_child_ini(folders: tuple[Path, Path], fresh_app: HostCelery) -> None:
    import core

    base = write_ini(
        folders[0] / "base.ini",
        BASE + "\n[plugin:example]\ngreeting = Hello\nheartbeat_seconds = 60\n",
    )
    dev = write_ini(
        folders[1] / "development.ini", DEVELOPMENT + "\n[plugin:example]\ngreeting = Hi from dev\n"
    )
    app = core.configure(dev, environ={})
    assert app is fresh_app
    assert app.conf.broker_url == f"embedded+sqlite:///{folders[0]}/data/broker.sqlite"
    assert app.conf.worker_concurrency == 2
    assert app.host_config is not None and app.host_config.path == dev
    assert app.host_config.files == (dev, base)
    assert app.host_plugins is not None
    assert app.host_plugins.options["example"] == {"greeting": "Hi from dev", "heartbeat_seconds": 60.0}


@pytest.mark.e2e
def test_a_worker_on_a_child_ini_runs_a_task_and_a_bad_base_key_names_the_base(tmp_path: Path) -> None:
    """The check of the structure issue: [DEFAULT] and ``use`` in a real worker, then a typo in the base."""
    from worker import host, host_env, running_worker

    base = write_ini(
        tmp_path / "base.ini",
        """
        [DEFAULT]
        data = %(here)s/data

        [app:main]
        celery.broker_url = embedded+sqlite:///%(data)s/broker.sqlite
        celery.result_backend = embedded+sqlite:///%(data)s/results.sqlite
        host.plugins = example

        [plugin:example]
        greeting = Hi
        """,
    )
    child = "[app:main]\nuse = config:base.ini\ncelery.worker_concurrency = 1\n"
    with running_worker(tmp_path, child, args=("-c", "1")) as worker:
        sent = host("send", "example.add", "2", "3", "--wait", "--config", str(worker.ini), env=worker.env)
        assert (sent.returncode, sent.stdout.strip()) == (0, "5"), sent.stderr
    assert (tmp_path / "data" / "broker.sqlite").is_file()  # %(data)s from the base's [DEFAULT]

    base.write_text(base.read_text().replace("celery.broker_url", "celery.brokr_url"), encoding="utf-8")
    broken = host("tasks", "--config", str(worker.ini), env=host_env())
    assert broken.returncode == 2
    assert broken.stderr.startswith(
        f"Error: {base}, section [app:main], key 'celery.brokr_url': unknown Celery setting"
    )
