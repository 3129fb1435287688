"""core.config: which file, reading, conversion, validation, environment, masking.

Every error test asserts the exact text a user sees (``str(exc)``). Every test
passes its own ``environ``; none reads the real environment except the lazy
``$HOST_CONFIG`` tests, which set it with ``monkeypatch``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT, write_ini
from core.celery_app import HostCelery
from core.config import (
    CELERY_DEFAULTS,
    HOST_OPTIONS,
    HostConfig,
    configure_logging,
    load_config,
    resolve_config_path,
)
from core.errors import ConfigError, HostError
from core.masking import mask, mask_text, mask_url
from core.startup import configure_app

CELERY_DOCS = "(see https://docs.celeryq.dev/en/stable/userguide/configuration.html)"


def load(tmp_path: Path, settings_lines: str = "", environ: dict[str, str] | None = None) -> HostConfig:
    """Load ``[app:main]`` holding ``settings_lines`` from tmp_path/test.ini."""
    ini = tmp_path / "test.ini"
    ini.write_text("[app:main]\n" + settings_lines, encoding="utf-8")
    return load_config(ini, environ={} if environ is None else environ)


def error_text(tmp_path: Path, settings_lines: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, settings_lines, environ)
    return str(info.value)


def where(tmp_path: Path, key: str) -> str:
    """The start of an error about ``key`` in tmp_path/test.ini."""
    return f"{tmp_path / 'test.ini'}, section [app:main], key {key!r}: "


# -- conversions --------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "name", "expected"),
    [
        ("celery.worker_prefetch_multiplier = 4", "worker_prefetch_multiplier", 4),
        ("celery.broker_connection_max_retries = 7", "broker_connection_max_retries", 7),
        # Celery's table names this type by the class (type=int), not "int".
        ("celery.beat_cron_starting_deadline = 30", "beat_cron_starting_deadline", 30),
        ("celery.broker_connection_timeout = 2.5", "broker_connection_timeout", 2.5),
        ("celery.task_time_limit = 300", "task_time_limit", 300.0),
        ("celery.timezone = Europe/Berlin", "timezone", "Europe/Berlin"),
        ("celery.task_default_queue = 123", "task_default_queue", "123"),
        ("celery.result_compression = gzip", "result_compression", "gzip"),
        ("celery.security_key_password = s3cret", "security_key_password", b"s3cret"),
        (
            'celery.broker_transport_options = {"confirm_publish": true, "max_retries": 3}',
            "broker_transport_options",
            {"confirm_publish": True, "max_retries": 3},
        ),
        ("celery.broker_transport_options = {}", "broker_transport_options", {}),
    ],
)
def test_scalar_and_dict_values_get_celerys_type(tmp_path: Path, line: str, name: str, expected: Any) -> None:
    value = load(tmp_path, line + "\n").celery[name]
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("false", False),
        ("yes", True),
        ("no", False),
        ("on", True),
        ("off", False),
        ("1", True),
        ("0", False),
        ("TRUE", True),
        ("No", False),
        ("  On  ", True),
    ],
)
def test_bool_spellings(tmp_path: Path, text: str, expected: bool) -> None:
    assert load(tmp_path, f"celery.task_acks_late = {text}\n").celery["task_acks_late"] is expected


@pytest.mark.parametrize(
    "text",
    [
        "json msgpack",
        "json,msgpack",
        "json, msgpack",
        " json ,, msgpack , ",
        "json\n    msgpack",  # a continuation line, as ini files wrap long values
        '["json", "msgpack"]',
    ],
)
def test_list_spellings(tmp_path: Path, text: str) -> None:
    config = load(tmp_path, f"celery.accept_content = {text}\n")
    assert config.celery["accept_content"] == ["json", "msgpack"]


def test_tuple_typed_settings_are_lists(tmp_path: Path) -> None:
    config = load(tmp_path, "celery.imports = a.tasks, b.tasks\ncelery.include = c.tasks\n")
    assert config.celery["imports"] == ["a.tasks", "b.tasks"]
    assert config.celery["include"] == ["c.tasks"]


@pytest.mark.parametrize(
    ("line", "name", "expected"),
    [
        ("celery.worker_concurrency = 4", "worker_concurrency", 4),
        (
            'celery.task_routes = {"example.*": {"queue": "example"}}',
            "task_routes",
            {"example.*": {"queue": "example"}},
        ),
        ('celery.task_routes = ["a.router", "b.router"]', "task_routes", ["a.router", "b.router"]),
        ("celery.task_annotations = myapp.annotations.Rate", "task_annotations", "myapp.annotations.Rate"),
        # Not valid JSON: stays the text as written.
        ("celery.task_routes = {queue: x}", "task_routes", "{queue: x}"),
    ],
)
def test_any_typed_settings_are_json_else_string(tmp_path: Path, line: str, name: str, expected: Any) -> None:
    assert load(tmp_path, line + "\n").celery[name] == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("worker_prefetch_multiplier", None),  # int
        ("broker_connection_timeout", None),  # float
        ("task_acks_late", None),  # bool
        ("broker_transport_options", None),  # dict
        ("worker_concurrency", None),  # int (Celery says any)
        ("task_routes", None),  # any
        ("imports", []),  # tuple
        ("timezone", ""),  # string
    ],
)
def test_empty_values(tmp_path: Path, name: str, expected: Any) -> None:
    """An empty value means "Celery's default" (None), an empty list, or an empty string."""
    assert load(tmp_path, f"celery.{name} =\n").celery[name] == expected


def test_empty_accept_content_is_an_empty_list(tmp_path: Path) -> None:
    # With nothing accepted the JSON serializer is refused (see the serializer tests);
    # result_accept_content shows the conversion alone.
    config = load(tmp_path, "celery.result_accept_content =\ncelery.result_serializer =\n")
    assert config.celery["result_accept_content"] == []


def test_host_keys_are_converted(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        "host.celery_task.disabled = example-ext, other-ext\nhost.extensions.on_error = warn\n"
        "host.plugins = example other\nhost.site_id = shop-2\nhost.allow_root = yes\n"
        "host.max_message_bytes = 4096\n",
    )
    assert config.host == {
        "celery_task.disabled": ["example-ext", "other-ext"],
        "extensions.on_error": "warn",
        "plugins": ["example", "other"],
        "site_id": "shop-2",
        "allow_root": True,
        "max_message_bytes": 4096,
        "locks.url": "",
        "locks.expires": 60.0,
        "admin_emails": [],
        "admin_emails_interval": 300.0,
        "task_mode": "worker",
        "fallback": "error",
        "broker_check.timeout": 1.0,
        "broker_check.cache_seconds": 5.0,
        "task_log.max_bytes": 65536,
    }
    assert config.host["extensions.on_error"] == "warn"


def test_host_list_empty_value(tmp_path: Path) -> None:
    assert load(tmp_path, "host.celery_task.disabled =\n").host["celery_task.disabled"] == []


def test_keys_outside_app_main_and_in_default_are_not_settings(tmp_path: Path) -> None:
    ini = write_ini(
        tmp_path / "test.ini",
        """
        [DEFAULT]
        debug = false

        [app:main]
        celery.task_acks_late = true

        [plugin:example]
        greeting = hello
        """,
    )
    config = load_config(ini, environ={})
    assert config.celery["task_acks_late"] is True
    assert "debug" not in config.sources
    assert config.parser is not None and config.parser.get("plugin:example", "greeting") == "hello"


# -- wrong types --------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "key", "message"),
    [
        (
            "celery.worker_prefetch_multiplier = many",
            "celery.worker_prefetch_multiplier",
            "'many' is not an integer: write a whole number such as 4",
        ),
        (
            "celery.worker_prefetch_multiplier = 1.5",
            "celery.worker_prefetch_multiplier",
            "'1.5' is not an integer: write a whole number such as 4",
        ),
        (
            "celery.worker_concurrency = two",
            "celery.worker_concurrency",
            "'two' is not an integer: write a whole number such as 4",
        ),
        (
            "celery.broker_connection_timeout = soon",
            "celery.broker_connection_timeout",
            "'soon' is not a number: write a number such as 2.5",
        ),
        (
            "celery.task_acks_late = maybe",
            "celery.task_acks_late",
            "'maybe' is not a boolean: use true/false, yes/no, on/off or 1/0",
        ),
        (
            'celery.accept_content = ["json"',
            "celery.accept_content",
            "'[\"json\"' is not a list (space or comma separated, or JSON): "
            "invalid JSON (Expecting ',' delimiter at column 8)",
        ),
        (
            "celery.accept_content = [1]",
            "celery.accept_content",
            "'[1]' is not a list (space or comma separated, or JSON): expected a JSON list of strings",
        ),
        (
            'celery.include = ["a.tasks", ["b.tasks"]]',
            "celery.include",
            '\'["a.tasks", ["b.tasks"]]\' is not a list (space or comma separated, or JSON): '
            "expected a JSON list of strings",
        ),
        (
            "celery.broker_transport_options = confirm_publish",
            "celery.broker_transport_options",
            "'confirm_publish' is not a JSON object: invalid JSON (Expecting value at column 1)",
        ),
        (
            "celery.broker_transport_options = [1]",
            "celery.broker_transport_options",
            "'[1]' is not a JSON object: expected a JSON object such as {\"key\": 1}",
        ),
        (
            "host.celery_task.disabled = [1]",
            "host.celery_task.disabled",
            "'[1]' is not a list (space or comma separated, or JSON): expected a JSON list of strings",
        ),
    ],
)
def test_wrong_type_names_file_key_value_and_expected_type(
    tmp_path: Path, line: str, key: str, message: str
) -> None:
    assert error_text(tmp_path, line + "\n") == where(tmp_path, key) + message


def test_wrong_type_error_keeps_its_attributes_and_cause(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "celery.worker_prefetch_multiplier = many\n")
    error = info.value
    assert (error.path, error.section, error.key) == (
        str(tmp_path / "test.ini"),
        "app:main",
        "celery.worker_prefetch_multiplier",
    )
    assert isinstance(error.__cause__, ValueError)
    assert isinstance(error, HostError) and error.exit_code == 2


# -- unknown keys ---------------------------------------------------------------


def test_unknown_celery_key_suggests_the_closest(tmp_path: Path) -> None:
    assert error_text(tmp_path, "celery.broker_ur = amqp://\n") == (
        where(tmp_path, "celery.broker_ur")
        + "unknown Celery setting\n  -> did you mean celery.broker_url? "
        + CELERY_DOCS
    )


def test_unknown_celery_key_with_an_old_style_name(tmp_path: Path) -> None:
    assert error_text(tmp_path, "celery.task_acks_lat = true\n") == (
        where(tmp_path, "celery.task_acks_lat")
        + "unknown Celery setting\n  -> did you mean celery.task_acks_late? "
        + CELERY_DOCS
    )


def test_unknown_celery_key_with_nothing_close(tmp_path: Path) -> None:
    assert error_text(tmp_path, "celery.zzqqxx = 1\n") == (
        where(tmp_path, "celery.zzqqxx")
        + "unknown Celery setting\n  -> the known keys are listed in docs/configuration.md "
        + CELERY_DOCS
    )


def test_unknown_host_key_suggests_the_closest(tmp_path: Path) -> None:
    assert error_text(tmp_path, "host.extensions.on_eror = warn\n") == (
        where(tmp_path, "host.extensions.on_eror")
        + "unknown host setting\n  -> did you mean host.extensions.on_error?"
    )


def test_unknown_host_key_with_nothing_close(tmp_path: Path) -> None:
    assert error_text(tmp_path, "host.zzqqxx = 1\n") == (
        where(tmp_path, "host.zzqqxx")
        + "unknown host setting\n  -> the known keys are listed in docs/configuration.md"
    )


def test_key_in_neither_namespace(tmp_path: Path) -> None:
    assert error_text(tmp_path, "broker_url = amqp://\n") == (
        where(tmp_path, "broker_url")
        + "unknown key: settings in this section start with 'celery.', 'host.', 'smtp.' or 'flower.'\n"
        + "  -> write celery.broker_url for a Celery setting, or remove it"
    )


def test_host_choice_not_allowed(tmp_path: Path) -> None:
    assert error_text(tmp_path, "host.extensions.on_error = ignore\n") == (
        where(tmp_path, "host.extensions.on_error") + "'ignore' is not one of fail, warn"
    )


# -- the file itself ------------------------------------------------------------


def test_missing_app_main_section(tmp_path: Path) -> None:
    ini = write_ini(tmp_path / "test.ini", "[app:other]\ncelery.broker_url = amqp://\n")
    with pytest.raises(ConfigError) as info:
        load_config(ini, environ={})
    assert str(info.value) == (
        f"{ini}: has no [app:main] section\n"
        "  -> put the host.* and celery.* settings under a [app:main] header"
    )


INI_HINT = "  -> fix the line named above; see docs/configuration.md for the format"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (
            "celery.broker_url = amqp://\n",
            "File contains no section headers. file: '{ini}', line: 1 'celery.broker_url = amqp://\\n'",
        ),
        (
            "[app:main]\ncelery.broker_url = amqp://\nthis line has no equals sign\n",
            "Source contains parsing errors: '{ini}' [line 3]: 'this line has no equals sign\\n'",
        ),
        (
            "[app:main]\ncelery.broker_url = a\ncelery.broker_url = b\n",
            "While reading from '{ini}' [line 3]: option 'celery.broker_url' in section 'app:main' "
            "already exists",
        ),
        (
            "[app:main]\n[app:main]\n",
            "While reading from '{ini}' [line 2]: section 'app:main' already exists",
        ),
    ],
)
def test_invalid_ini_syntax(tmp_path: Path, body: str, problem: str) -> None:
    ini = tmp_path / "test.ini"
    ini.write_text(body, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(ini, environ={})
    assert str(info.value) == f"{ini}: not a valid ini file: {problem.format(ini=ini)}\n{INI_HINT}"


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    ini = tmp_path / "test.ini"
    ini.write_bytes(b"\xff\xfe[app:main]\n")
    with pytest.raises(ConfigError) as info:
        load_config(ini, environ={})
    assert str(info.value) == (
        f"{ini}: cannot be read: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte\n"
        "  -> the file must be readable and saved as UTF-8"
    )


INTERPOLATION_HINT = "  -> use %(here)s for the ini's folder and write a literal % as %%"


def test_bad_interpolation_lone_percent(tmp_path: Path) -> None:
    # configparser's own message would quote the value, password and all.
    assert error_text(tmp_path, "celery.broker_url = amqp://u:se%cret@h//\n") == (
        where(tmp_path, "celery.broker_url")
        + "cannot interpolate the value: a % must be followed by (name)s or by another %\n"
        + INTERPOLATION_HINT
    )


def test_bad_interpolation_unknown_name(tmp_path: Path) -> None:
    assert error_text(tmp_path, "celery.broker_url = amqp://u:secret@%(nope)s/x\n") == (
        where(tmp_path, "celery.broker_url")
        + "cannot interpolate the value: %(nope)s is not defined (the variables are here and __file__)\n"
        + INTERPOLATION_HINT
    )


def test_a_percent_in_the_folder_name_does_not_break_here(tmp_path: Path) -> None:
    folder = tmp_path / "100%(x)s done"
    folder.mkdir()
    ini = write_ini(
        folder / "site.ini", "[app:main]\ncelery.broker_url = embedded+sqlite:///%(here)s/b.sqlite\n"
    )
    config = load_config(ini, environ={})
    assert config.celery["broker_url"] == f"embedded+sqlite:///{folder}/b.sqlite"


def test_here_is_the_ini_folder_and_file_is_the_ini(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    ini = write_ini(
        folder / "site.ini",
        """
        [app:main]
        celery.broker_url = embedded+sqlite:///%(here)s/data/broker.sqlite
        celery.task_default_queue = %(__file__)s
        celery.timezone = 100%%
        """,
    )
    config = load_config(ini, environ={})
    assert config.celery["broker_url"] == f"embedded+sqlite:///{folder}/data/broker.sqlite"
    assert config.celery["task_default_queue"] == str(ini)
    assert config.celery["timezone"] == "100%"
    assert config.path.parent == folder


def test_here_is_absolute_for_a_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf").mkdir()
    write_ini(tmp_path / "conf" / "site.ini", "[app:main]\ncelery.broker_url = file://%(here)s\n")
    monkeypatch.chdir(tmp_path)
    config = load_config("conf/site.ini", environ={})
    assert config.path == tmp_path.resolve() / "conf" / "site.ini"
    assert config.celery["broker_url"] == f"file://{tmp_path.resolve() / 'conf'}"


# -- which file ---------------------------------------------------------------------


@pytest.fixture
def empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The current folder: an empty one, with no development.ini."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd.resolve()


def test_config_option_is_used_first(tmp_path: Path, empty_cwd: Path) -> None:
    given = write_ini(tmp_path / "given.ini", "[app:main]\n")
    named = write_ini(tmp_path / "named.ini", "[app:main]\n")
    write_ini(empty_cwd / "development.ini", "[app:main]\n")
    assert resolve_config_path(str(given), {"HOST_CONFIG": str(named)}) == given.resolve()
    assert load_config(given, environ={"HOST_CONFIG": str(named)}).path == given.resolve()


def test_host_config_is_used_without_config_option(tmp_path: Path, empty_cwd: Path) -> None:
    named = write_ini(tmp_path / "named.ini", "[app:main]\ncelery.timezone = UTC\n")
    write_ini(empty_cwd / "development.ini", "[app:main]\n")
    assert resolve_config_path(None, {"HOST_CONFIG": str(named)}) == named.resolve()
    config = load_config(None, environ={"HOST_CONFIG": str(named)})
    assert config.path == named.resolve()
    assert config.celery["timezone"] == "UTC"


def test_development_ini_in_the_current_folder_is_the_last_resort(empty_cwd: Path) -> None:
    write_ini(empty_cwd / "development.ini", "[app:main]\ncelery.timezone = UTC\n")
    assert resolve_config_path(None, {}) == empty_cwd / "development.ini"
    # An empty $HOST_CONFIG counts as not set.
    assert resolve_config_path(None, {"HOST_CONFIG": ""}) == empty_cwd / "development.ini"
    config = load_config(None, environ={})
    assert config.path == empty_cwd / "development.ini"
    assert config.path.is_absolute()


def test_an_empty_config_option_is_an_error_not_the_default(empty_cwd: Path) -> None:
    write_ini(empty_cwd / "development.ini", "[app:main]\n")
    with pytest.raises(ConfigError) as info:
        resolve_config_path("", {})
    assert str(info.value) == "--config was given an empty file name\n  -> pass --config FILE"


def test_a_folder_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config_path(str(tmp_path), {})
    assert str(info.value) == (
        f"configuration file {tmp_path} (given with --config) is a folder\n"
        f"  -> name the ini file inside it, such as {tmp_path / 'development.ini'}"
    )


def test_no_file_anywhere_names_all_three_ways(empty_cwd: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={})
    assert str(info.value) == (
        "no configuration file: --config was not given, $HOST_CONFIG is not set, "
        f"and there is no development.ini in {empty_cwd}\n"
        "  -> pass --config FILE, set HOST_CONFIG=FILE, or run from the folder holding development.ini"
    )


def test_config_option_naming_a_missing_file(tmp_path: Path, empty_cwd: Path) -> None:
    write_ini(empty_cwd / "development.ini", "[app:main]\n")  # never a silent fallback
    missing = tmp_path / "nope.ini"
    with pytest.raises(ConfigError) as info:
        load_config(missing, environ={})
    assert str(info.value) == (
        f"configuration file {missing} (given with --config) does not exist\n"
        "  -> check the path; relative paths are taken from the current folder"
    )


def test_host_config_naming_a_missing_file(empty_cwd: Path) -> None:
    write_ini(empty_cwd / "development.ini", "[app:main]\n")
    with pytest.raises(ConfigError) as info:
        resolve_config_path(None, {"HOST_CONFIG": "missing.ini"})
    assert str(info.value) == (
        "configuration file missing.ini (named by $HOST_CONFIG) does not exist\n"
        "  -> check the path; relative paths are taken from the current folder"
    )


# -- defaults ---------------------------------------------------------------------


def test_json_only_defaults(tmp_path: Path) -> None:
    config = load(tmp_path)
    assert config.celery == CELERY_DEFAULTS
    assert config.celery["accept_content"] == ["json"]
    assert config.celery["result_accept_content"] == ["json"]
    assert config.celery["task_serializer"] == "json"
    assert config.celery["result_serializer"] == "json"
    assert config.host == {name: option.default for name, option in HOST_OPTIONS.items()}
    assert config.host == {
        "extensions.on_error": "fail",
        "celery_task.disabled": [],
        "allow_root": False,
        "max_message_bytes": 10 * 1024 * 1024,
        "locks.url": "",
        "locks.expires": 60.0,
        "plugins": [],
        "site_id": "",
        "admin_emails": [],
        "admin_emails_interval": 300.0,
        "task_mode": "worker",
        "fallback": "error",
        "broker_check.timeout": 1.0,
        "broker_check.cache_seconds": 5.0,
        "task_log.max_bytes": 65536,
    }
    assert config.smtp == {
        "server": "",
        "port": 25,
        "starttls": False,
        "user": "",
        "password": "",
        "mail_from": "",
    }
    assert set(config.sources.values()) == {"default"}
    assert config.has_logging is False
    assert "worker_hijack_root_logger" not in config.celery


def test_changing_a_loaded_default_does_not_change_the_next_load(tmp_path: Path) -> None:
    first = load(tmp_path)
    first.celery["accept_content"].append("pickle")
    first.host["celery_task.disabled"].append("example-ext")
    second = load(tmp_path)
    assert second.celery["accept_content"] == ["json"]
    assert second.host["celery_task.disabled"] == []


def test_loggers_section_means_logging_from_the_file(tmp_path: Path) -> None:
    config = load(tmp_path, "[loggers]\nkeys = root\n")
    assert config.has_logging is True
    assert config.celery["worker_hijack_root_logger"] is False
    assert config.sources["celery.worker_hijack_root_logger"] == "default"


def test_explicit_hijack_setting_wins_over_loggers_section(tmp_path: Path) -> None:
    config = load(tmp_path, "celery.worker_hijack_root_logger = true\n[loggers]\nkeys = root\n")
    assert config.has_logging is True
    assert config.celery["worker_hijack_root_logger"] is True
    assert config.sources["celery.worker_hijack_root_logger"] == "file"


@pytest.mark.parametrize("name", ["development.ini", "production.ini"])
def test_shipped_ini_files_load(name: str) -> None:
    config = load_config(ROOT / name, environ={})
    assert config.has_logging is True
    assert config.celery["accept_content"] == ["json"]
    assert config.celery["broker_url"]


# -- serializers --------------------------------------------------------------------


def test_pickle_without_accepting_it_is_refused(tmp_path: Path) -> None:
    assert error_text(tmp_path, "celery.task_serializer = pickle\n") == (
        f"{tmp_path / 'test.ini'}, section [app:main]: celery.task_serializer = pickle is not in "
        "celery.accept_content (json); workers would reject every such message\n"
        "  -> accepting pickle must be explicit: add it to celery.accept_content"
    )


def test_pickle_accepted_explicitly_works(tmp_path: Path) -> None:
    config = load(tmp_path, "celery.accept_content = json, pickle\ncelery.task_serializer = pickle\n")
    assert config.celery["task_serializer"] == "pickle"
    assert config.celery["accept_content"] == ["json", "pickle"]


def test_accepting_by_content_type_works(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        "celery.accept_content = application/json application/x-python-serialize\n"
        "celery.task_serializer = pickle\n",
    )
    assert config.celery["task_serializer"] == "pickle"


def test_result_serializer_is_checked_against_result_accept_content(tmp_path: Path) -> None:
    # Result readers use result_accept_content, which defaults to JSON only.
    assert error_text(
        tmp_path,
        "celery.accept_content = json, pickle\ncelery.result_serializer = pickle\n",
    ) == (
        f"{tmp_path / 'test.ini'}, section [app:main]: celery.result_serializer = pickle is not in "
        "celery.result_accept_content (json); every result would be refused when read\n"
        "  -> accepting pickle must be explicit: add it to celery.result_accept_content"
    )
    config = load(
        tmp_path,
        "celery.result_accept_content = json, pickle\ncelery.result_serializer = pickle\n",
    )
    assert config.celery["result_serializer"] == "pickle"


def test_nothing_accepted(tmp_path: Path) -> None:
    assert error_text(tmp_path, "celery.accept_content =\n") == (
        f"{tmp_path / 'test.ini'}, section [app:main]: celery.task_serializer = json is not in "
        "celery.accept_content (empty); workers would reject every such message\n"
        "  -> accepting json must be explicit: add it to celery.accept_content"
    )


def test_pickle_from_the_environment_is_refused_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="celery.task_serializer = pickle is not in celery.accept_content"):
        load(tmp_path, environ={"HOST_CELERY_TASK_SERIALIZER": "pickle"})


# -- environment ----------------------------------------------------------------------

FILE_URLS = "celery.broker_url = amqp://file//\ncelery.result_backend = redis://file/0\n"


def test_celery_broker_url_and_result_backend_override_the_file(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        FILE_URLS,
        {"CELERY_BROKER_URL": "amqp://env//", "CELERY_RESULT_BACKEND": "redis://env/1", "PATH": "/bin"},
    )
    assert config.celery["broker_url"] == "amqp://env//"
    assert config.celery["result_backend"] == "redis://env/1"
    assert config.sources["celery.broker_url"] == "env CELERY_BROKER_URL"
    assert config.sources["celery.result_backend"] == "env CELERY_RESULT_BACKEND"


def test_celery_read_and_write_urls(tmp_path: Path) -> None:
    config = load(
        tmp_path, environ={"CELERY_BROKER_READ_URL": "amqp://r//", "CELERY_BROKER_WRITE_URL": "amqp://w//"}
    )
    assert config.celery["broker_read_url"] == "amqp://r//"
    assert config.celery["broker_write_url"] == "amqp://w//"
    assert config.sources["celery.broker_read_url"] == "env CELERY_BROKER_READ_URL"


def test_other_celery_variables_are_not_read(tmp_path: Path) -> None:
    # Only Celery's own documented names; CELERY_<anything> is not a namespace here.
    config = load(tmp_path, FILE_URLS, {"CELERY_TASK_ACKS_LATE": "true", "CELERY_TIMEZONE": "UTC"})
    assert "task_acks_late" not in config.celery
    assert "timezone" not in config.celery


@pytest.mark.parametrize(
    ("var", "value", "name", "expected"),
    [
        ("HOST_CELERY_WORKER_PREFETCH_MULTIPLIER", "4", "worker_prefetch_multiplier", 4),
        ("HOST_CELERY_TASK_ACKS_LATE", "yes", "task_acks_late", True),
        ("HOST_CELERY_BROKER_CONNECTION_TIMEOUT", "2.5", "broker_connection_timeout", 2.5),
        ("HOST_CELERY_ACCEPT_CONTENT", "json,msgpack", "accept_content", ["json", "msgpack"]),
        (
            "HOST_CELERY_BROKER_TRANSPORT_OPTIONS",
            '{"confirm_publish": true}',
            "broker_transport_options",
            {"confirm_publish": True},
        ),
        ("HOST_CELERY_TIMEZONE", "Europe/Berlin", "timezone", "Europe/Berlin"),
    ],
)
def test_host_celery_variables_are_typed(
    tmp_path: Path, var: str, value: str, name: str, expected: Any
) -> None:
    config = load(tmp_path, environ={var: value})
    assert config.celery[name] == expected
    assert config.sources[f"celery.{name}"] == f"env {var}"


def test_host_celery_variable_with_the_wrong_type(tmp_path: Path) -> None:
    assert error_text(tmp_path, "", {"HOST_CELERY_TASK_ACKS_LATE": "maybe"}) == (
        "environment, key 'HOST_CELERY_TASK_ACKS_LATE': "
        "'maybe' is not a boolean: use true/false, yes/no, on/off or 1/0"
    )


def test_unknown_host_celery_variable_suggests_the_closest(tmp_path: Path) -> None:
    assert error_text(tmp_path, "", {"HOST_CELERY_BROKER_UR": "amqp://"}) == (
        "environment, key 'HOST_CELERY_BROKER_UR': unknown Celery setting in the environment\n"
        "  -> did you mean HOST_CELERY_BROKER_URL?"
    )


def test_unknown_host_celery_variable_with_nothing_close(tmp_path: Path) -> None:
    assert error_text(tmp_path, "", {"HOST_CELERY_ZZQQXX": "1"}) == (
        "environment, key 'HOST_CELERY_ZZQQXX': unknown Celery setting in the environment\n"
        "  -> the known keys are listed in docs/configuration.md"
    )


def test_precedence_host_celery_over_celery_over_file(tmp_path: Path) -> None:
    both = {"CELERY_BROKER_URL": "amqp://celery-env//", "HOST_CELERY_BROKER_URL": "amqp://host-env//"}
    config = load(tmp_path, FILE_URLS, both)
    assert config.celery["broker_url"] == "amqp://host-env//"
    assert config.sources["celery.broker_url"] == "env HOST_CELERY_BROKER_URL"

    config = load(tmp_path, FILE_URLS, {"CELERY_BROKER_URL": "amqp://celery-env//"})
    assert config.celery["broker_url"] == "amqp://celery-env//"

    config = load(tmp_path, FILE_URLS, {})
    assert config.celery["broker_url"] == "amqp://file//"
    assert config.sources["celery.broker_url"] == "file"


def test_environment_overrides_a_default(tmp_path: Path) -> None:
    config = load(tmp_path, environ={"HOST_CELERY_ACCEPT_CONTENT": "json msgpack"})
    assert config.celery["accept_content"] == ["json", "msgpack"]
    assert config.sources["celery.accept_content"] == "env HOST_CELERY_ACCEPT_CONTENT"


def test_host_extensions_on_error_variable(tmp_path: Path) -> None:
    config = load(tmp_path, "host.extensions.on_error = fail\n", {"HOST_EXTENSIONS_ON_ERROR": "warn"})
    assert config.host["extensions.on_error"] == "warn"
    assert config.sources["host.extensions.on_error"] == "env HOST_EXTENSIONS_ON_ERROR"


def test_host_extensions_on_error_variable_not_allowed(tmp_path: Path) -> None:
    assert error_text(tmp_path, "", {"HOST_EXTENSIONS_ON_ERROR": "ignore"}) == (
        "environment, key 'HOST_EXTENSIONS_ON_ERROR': 'ignore' is not one of fail, warn"
    )


def test_host_celery_task_disabled_variable_is_the_host_key(tmp_path: Path) -> None:
    # Its name starts with HOST_CELERY_ but it is host.celery_task.disabled, not a Celery setting.
    config = load(tmp_path, environ={"HOST_CELERY_TASK_DISABLED": "example-ext, other-ext"})
    assert config.host["celery_task.disabled"] == ["example-ext", "other-ext"]
    assert config.sources["host.celery_task.disabled"] == "env HOST_CELERY_TASK_DISABLED"


def test_sources_record_where_each_value_came_from(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        "celery.broker_url = amqp://file//\ncelery.task_acks_late = true\nhost.extensions.on_error = warn\n",
        {"CELERY_RESULT_BACKEND": "redis://env/0", "HOST_CELERY_WORKER_PREFETCH_MULTIPLIER": "1"},
    )
    assert config.sources == {
        "celery.broker_url": "file",
        "celery.task_acks_late": "file",
        "host.extensions.on_error": "file",
        "celery.result_backend": "env CELERY_RESULT_BACKEND",
        "celery.worker_prefetch_multiplier": "env HOST_CELERY_WORKER_PREFETCH_MULTIPLIER",
        "celery.accept_content": "default",
        "celery.result_accept_content": "default",
        "celery.task_serializer": "default",
        "celery.result_serializer": "default",
        "celery.broker_connection_retry_on_startup": "default",
        "celery.broker_connection_max_retries": "default",
        "celery.result_backend_always_retry": "default",
        "celery.result_backend_max_retries": "default",
        "host.celery_task.disabled": "default",
        "host.allow_root": "default",
        "host.max_message_bytes": "default",
        "host.locks.url": "default",
        "host.locks.expires": "default",
        "host.plugins": "default",
        "host.site_id": "default",
        "host.admin_emails": "default",
        "host.admin_emails_interval": "default",
        "host.task_mode": "default",
        "host.task_log.max_bytes": "default",
        "celery.task_track_started": "default",
        "celery.result_extended": "default",
        "host.fallback": "default",
        "host.broker_check.timeout": "default",
        "host.broker_check.cache_seconds": "default",
        **{f"smtp.{k}": "default" for k in ("server", "port", "starttls", "user", "password", "mail_from")},
        **{f"flower.{k}": "default" for k in ("address", "port", "url_prefix", "basic_auth")},
    }
    assert set(config.sources) == (
        {f"celery.{k}" for k in config.celery}
        | {f"host.{k}" for k in config.host}
        | {f"smtp.{k}" for k in config.smtp}
        | {f"flower.{k}" for k in config.flower}
    )


# -- masking --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("amqp://user:secret@host//", "amqp://user:**@host//"),
        ("amqp://user:secret@host:5672/vhost", "amqp://user:**@host:5672/vhost"),
        ("redis://:secret@127.0.0.1:6379/0", "redis://:**@127.0.0.1:6379/0"),
        ("sqla+postgresql://user:secret@db/results", "sqla+postgresql://user:**@db/results"),
        ("amqp://u:secret@a//;amqp://u:secret@b//", "amqp://u:**@a//;amqp://u:**@b//"),
        ("amqp://u:secret@[::1]:5672//", "amqp://u:**@[::1]:5672//"),
        # Unescaped characters that end a URL's host part.
        ("amqp://u:sec@ret@host//", "amqp://u:**@host//"),
        ("amqp://u:sec/ret@host//", "amqp://u:**@host//"),
        ("amqp://u:sec?ret@host//", "amqp://u:**@host//"),
        ("amqp://u:sec#ret@host//", "amqp://u:**@host//"),
        (
            "redis+socket:///tmp/redis.sock?password=secret&db=1",
            "redis+socket:///tmp/redis.sock?password=**&db=1",
        ),
        (
            "rediss://u:secret@h:6380/0?ssl_cert_reqs=required",
            "rediss://u:**@h:6380/0?ssl_cert_reqs=required",
        ),
        # Nothing to hide: unchanged.
        ("amqp://guest@host:5672//", "amqp://guest@host:5672//"),
        ("amqp://host:5672//", "amqp://host:5672//"),
        ("embedded+sqlite:////srv/data/broker.sqlite", "embedded+sqlite:////srv/data/broker.sqlite"),
        ("memory://", "memory://"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert mask(url) == masked
    assert "secret" not in masked


def test_mask_walks_dicts_and_lists() -> None:
    value = {
        "broker_url": ["amqp://u:secret@a//", "amqp://u:secret@b//"],
        "broker_transport_options": {
            "confirm_publish": True,
            "Password": "secret",
            "sentinel_kwargs": {"password": "secret", "socket_timeout": 1},
            "api_key": "secret",
            "auth_token": "secret",
        },
        "security_key_password": b"secret",
        "redis_password": None,
        "timezone": "UTC",
    }
    assert mask(value) == {
        "broker_url": ["amqp://u:**@a//", "amqp://u:**@b//"],
        "broker_transport_options": {
            "confirm_publish": True,
            "Password": "********",
            "sentinel_kwargs": {"password": "********", "socket_timeout": 1},
            "api_key": "********",
            "auth_token": "********",
        },
        "security_key_password": "********",
        "redis_password": None,
        "timezone": "UTC",
    }
    assert "secret" not in repr(mask(value))


def test_mask_uses_the_key_it_is_given() -> None:
    assert mask("s3cret", "celery.security_key_password") == "********"
    assert mask(("a", "b"), "passwords") == ("********", "********")
    assert mask("", "password") == ""
    assert mask(4, "worker_concurrency") == 4


def test_mask_a_loaded_config_hides_every_password(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        'celery.broker_transport_options = {"password": "secret"}\n',
        {
            "CELERY_BROKER_URL": "amqp://u:secret@h//;amqp://u:secret@g//",
            "CELERY_RESULT_BACKEND": "redis://:secret@h/0",
        },
    )
    shown = {key: mask(value, key) for key, value in config.celery.items()}
    assert "secret" not in repr(shown)
    assert shown["broker_url"] == "amqp://u:**@h//;amqp://u:**@g//"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (
            "azureblockblob://DefaultEndpointsProtocol=https;AccountName=a;AccountKey=secret==;x=1",
            "azureblockblob://DefaultEndpointsProtocol=https;AccountName=a;AccountKey=**;x=1",
        ),
        ("Error: 'amqp://u:secret@h//' is down", "Error: 'amqp://u:**@h//' is down"),
        ("see token=secret; and x=1", "see token=**; and x=1"),
        ("two: amqp://u:secret@a// amqp://v:secret@b//", "two: amqp://u:**@a// amqp://v:**@b//"),
        ("nothing here", "nothing here"),
    ],
)
def test_mask_text_hides_urls_and_key_value_secrets_anywhere(text: str, masked: str) -> None:
    assert mask_text(text) == masked


def test_a_wrong_value_that_may_hold_a_secret_is_not_quoted(tmp_path: Path) -> None:
    text = error_text(tmp_path, 'celery.broker_transport_options = {"password": "secret",\n')
    assert "secret" not in text
    assert text.startswith(
        where(tmp_path, "celery.broker_transport_options") + "the value is not a JSON object"
    )
    text = error_text(tmp_path, "celery.broker_pool_limit = amqp://u:secret@h//\n")
    assert "secret" not in text


def test_an_ini_syntax_error_does_not_quote_a_password(tmp_path: Path) -> None:
    text = error_text(tmp_path, "celery.broker_url = amqp://u:p@h//\n  continued\namqp://u:secret@h//\n")
    assert "secret" not in text, text


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("celery.worker_concurrency = -2", "'-2' is out of range: it must be 0 or more"),
        ("celery.task_time_limit = -1.5", "'-1.5' is out of range: it must be 0 or more"),
        ("celery.task_time_limit = nan", "'nan' is not a number: write a number such as 2.5"),
        ("celery.task_soft_time_limit = inf", "'inf' is not a number: write a number such as 2.5"),
    ],
)
def test_negative_and_non_finite_numbers_are_refused(tmp_path: Path, line: str, problem: str) -> None:
    key = line.split(" = ")[0]
    assert error_text(tmp_path, line + "\n").startswith(where(tmp_path, key) + problem)


def test_an_empty_environment_variable_counts_as_unset(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        "celery.broker_url = memory://file\n",
        {"CELERY_BROKER_URL": "", "HOST_CELERY_TASK_ACKS_LATE": "", "HOST_EXTENSIONS_ON_ERROR": ""},
    )
    assert config.celery["broker_url"] == "memory://file"
    assert config.sources["celery.broker_url"] == "file"
    assert "task_acks_late" not in config.celery
    assert config.host["extensions.on_error"] == "fail"


# -- logging from the ini ------------------------------------------------------------------

LOGGING = """
[app:main]

[loggers]
keys = root

[handlers]
keys = console

[formatters]
keys = plain

[logger_root]
level = INFO
handlers = console

[handler_console]
class = FileHandler
args = ('%(here)s/host.log', 'a')
formatter = plain

[formatter_plain]
format = %(levelname)s %(message)s
"""


def test_logging_sections_configure_logging(tmp_path: Path) -> None:
    import logging

    folder = tmp_path / "50% done"
    folder.mkdir()
    config = load_config(write_ini(folder / "log.ini", LOGGING), environ={})
    root = logging.getLogger()
    before = root.handlers[:], root.level
    try:
        configure_logging(config)
        logging.getLogger("host.test").info("written through the ini's handler")
        for handler in root.handlers:
            handler.flush()
        assert (folder / "host.log").read_text() == "INFO written through the ini's handler\n"
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], _ = before
        root.setLevel(before[1])


def test_incomplete_logging_sections_say_what_is_missing(tmp_path: Path) -> None:
    ini = write_ini(tmp_path / "log.ini", LOGGING.split("[handler_console]")[0])
    with pytest.raises(ConfigError) as info:
        configure_logging(load_config(ini, environ={}))
    assert str(info.value) == (
        f"{ini}: the logging sections are incomplete: nothing defines 'formatter_plain'\n"
        "  -> [loggers], [handlers] and [formatters] each need a keys = line, and every name listed "
        "there its own [logger_NAME], [handler_NAME] or [formatter_NAME] section"
    )


# -- the Celery app -----------------------------------------------------------------------


def fresh_app() -> HostCelery:
    # Not the current app: the shared `celery` app stays what every other test sees.
    return HostCelery("test", set_as_current=False)


def test_configure_app_applies_the_config(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        "celery.broker_url = memory://\ncelery.task_acks_late = yes\ncelery.worker_prefetch_multiplier = 1\n"
        'celery.broker_transport_options = {"confirm_publish": true}\n',
    )
    app = fresh_app()
    assert configure_app(app, config) is app
    assert app.host_config is config
    assert app.conf.broker_url == "memory://"
    assert app.conf.task_acks_late is True
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.broker_transport_options == {"confirm_publish": True}
    assert app.conf.accept_content == ["json"]
    assert app.conf.task_serializer == "json"


def test_configure_app_after_the_conf_was_read(tmp_path: Path) -> None:
    app = fresh_app()
    app.host_config = load(tmp_path, "celery.broker_url = memory://first\n")
    assert app.conf.broker_url is None  # host_config was set by hand, without configure_app
    configure_app(app, load(tmp_path, "celery.broker_url = memory://second\n"))
    assert app.conf.broker_url == "memory://second"


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The lazy path reads os.environ: remove whatever could override the file."""
    for var in list(os.environ):
        if var.startswith(("HOST_", "CELERY_")):
            monkeypatch.delenv(var)
    return monkeypatch


def test_unconfigured_app_reads_host_config_on_first_use(
    tmp_path: Path, clean_environ: pytest.MonkeyPatch
) -> None:
    ini = write_ini(tmp_path / "lazy.ini", "[app:main]\ncelery.broker_url = memory://lazy\n")
    app = fresh_app()
    clean_environ.setenv("HOST_CONFIG", str(ini))
    assert app.host_config is None  # nothing read at creation
    assert app.conf.broker_url == "memory://lazy"
    assert app.host_config is not None and app.host_config.path == ini.resolve()
    assert app.conf.accept_content == ["json"]


def test_unconfigured_app_with_nothing_to_read_raises(
    empty_cwd: Path, clean_environ: pytest.MonkeyPatch
) -> None:
    app = fresh_app()
    with pytest.raises(ConfigError) as info:
        _ = app.conf.broker_url
    assert str(info.value).startswith(
        "no configuration file: --config was not given, $HOST_CONFIG is not set"
    )


# -- broker and result-store URLs -----------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message", "hint"),
    [
        (
            "celery.broker_url = amqq://u:secret@h//",
            "amqq://u:**@h//: unknown broker transport 'amqq'",
            "did you mean amqp://?",
        ),
        (
            "celery.broker_url = amqp://a//;redsi://b//",
            "redsi://b//: unknown broker transport 'redsi'",
            "did you mean redis://?",
        ),
        (
            "celery.broker_read_url = nosuch://h//",
            "nosuch://h//: unknown broker transport 'nosuch'",
            "known schemes: ",
        ),
        (
            "celery.broker_url = embedded+sqlite://",
            "embedded+sqlite://: the embedded broker needs a URL like "
            "embedded+sqlite:///%(here)s/data/broker.sqlite, got 'sqlite://'",
            None,
        ),
        (
            "celery.result_backend = reddis://:secret@h/0",
            "reddis://:**@h/0: unknown result backend 'reddis'",
            "did you mean redis://?",
        ),
        (
            "celery.result_backend = mongodb://h/results",
            "mongodb://h/results: it needs the Python package pymongo, which is not installed",
            "pip install pymongo",
        ),
        (
            "celery.result_backend = no.such.module:Backend",
            "no.such.module:Backend: unknown result backend 'no.such.module:Backend'",
            "known schemes: ",
        ),
    ],
)
def test_unknown_or_uninstalled_urls_are_config_errors(
    tmp_path: Path, line: str, message: str, hint: str | None
) -> None:
    key = line.split(" = ")[0]
    with pytest.raises(ConfigError) as info:
        configure_app(fresh_app(), load(tmp_path, line + "\n"))
    text = str(info.value)
    assert text.startswith(where(tmp_path, key) + message), text
    if hint:
        assert text.split("\n  -> ")[1].startswith(hint), text
    assert "secret" not in text


def test_a_url_from_the_environment_is_reported_as_such(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        configure_app(fresh_app(), load(tmp_path, "", {"CELERY_RESULT_BACKEND": "foo://x"}))
    assert str(info.value).startswith(
        "environment, key 'CELERY_RESULT_BACKEND': foo://x: unknown result backend"
    )


@pytest.mark.parametrize(
    "url",
    [
        "amqp://guest:guest@127.0.0.1:5672//",
        "pyamqp://h//;amqp://g//",
        "redis://127.0.0.1:6379/0",
        "memory://",
        "embedded+sqlite:////tmp/x/broker.sqlite",
    ],
)
def test_installed_transports_pass(tmp_path: Path, url: str) -> None:
    configure_app(fresh_app(), load(tmp_path, f"celery.broker_url = {url}\ncelery.result_backend = rpc://\n"))


@pytest.mark.parametrize(
    "url", ["redis://h/0", "db+sqlite:///r.sqlite", "embedded+sqlite:///r.sqlite", "rpc://", "disabled://"]
)
def test_installed_result_backends_pass(tmp_path: Path, url: str) -> None:
    configure_app(fresh_app(), load(tmp_path, f"celery.result_backend = {url}\n"))


# -- any text at all -------------------------------------------------------------------------

_KEYS = st.sampled_from(
    [
        "celery.broker_url",
        "celery.accept_content",
        "celery.task_serializer",
        "celery.result_serializer",
        "celery.task_acks_late",
        "celery.worker_prefetch_multiplier",
        "celery.broker_transport_options",
        "celery.task_routes",
        "celery.imports",
        "celery.broker_ur",
        "host.extensions.on_error",
        "host.celery_task.disabled",
        "host.allow_root",
        "host.max_message_bytes",
        "host.plugins",
        "host.site_id",
        "host.nope",
        "debug",
        "celery.",
        "host.",
    ]
)
_VALUES = st.sampled_from(
    [
        "",
        "json",
        "pickle",
        "json, pickle",
        "[1]",
        '["json"]',
        "[",
        "{",
        "{}",
        '{"a": 1}',
        "true",
        "maybe",
        "4",
        "-1",
        "1e999",
        "NaN",
        "%(here)s",
        "%(__file__)s",
        "%(nope)s",
        "%",
        "%%",
        "amqp://u:p@h//",
        "warn",
        "fail",
        "\\",
        "\x00",
    ]
)
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
_LINE = st.one_of(
    st.sampled_from(
        [
            "[app:main]",
            "[DEFAULT]",
            "[loggers]",
            "[handlers]",
            "[plugin:example]",
            "[app:main",
            "[]",
            "   indented",
            "; comment",
        ]
    ),
    st.builds(lambda k, v: f"{k} = {v}", st.one_of(_KEYS, _TEXT), st.one_of(_VALUES, _TEXT)),
    st.builds(lambda k, v: f"{k}: {v}", _KEYS, _VALUES),
    _TEXT,
)
_ENVIRON = st.dictionaries(
    st.sampled_from(
        [
            "CELERY_BROKER_URL",
            "HOST_CELERY_TASK_ACKS_LATE",
            "HOST_CELERY_ACCEPT_CONTENT",
            "HOST_CELERY_NOPE",
            "HOST_EXTENSIONS_ON_ERROR",
            "HOST_CELERY_TASK_DISABLED",
            "HOST_ALLOW_ROOT",
            "HOST_MAX_MESSAGE_BYTES",
            "HOST_SITE_ID",
        ]
    ),
    st.one_of(_VALUES, _TEXT),
    max_size=3,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_LINE, max_size=12), environ=_ENVIRON)
def test_any_text_gives_a_config_or_a_config_error(
    tmp_path: Path, lines: list[str], environ: dict[str, str]
) -> None:
    ini = tmp_path / "fuzz.ini"
    ini.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        config = load_config(ini, environ=environ)
    except ConfigError as e:
        assert str(e).strip()
    else:
        assert isinstance(config, HostConfig)
        assert config.celery["accept_content"] is not None
        try:  # and the settings Celery is given are checked the same way
            configure_app(fresh_app(), config)
        except HostError as e:
            assert str(e).strip()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=200), prefix=st.sampled_from([b"", b"[app:main]\n", b"[app:main]\ncelery."]))
def test_any_bytes_give_a_config_or_a_config_error(tmp_path: Path, body: bytes, prefix: bytes) -> None:
    ini = tmp_path / "fuzz.ini"
    ini.write_bytes(prefix + body)
    try:
        config = load_config(ini, environ={})
    except ConfigError as e:
        assert str(e).strip()
        assert str(ini) in str(e)  # every error says which file
    else:
        assert isinstance(config, HostConfig)
