"""Bad input and unreachable services at the command line.

Each case runs the real ``host`` command and checks what its user sees: one
error saying what, where and what to do, the exit status (2 for
configuration and usage, 1 for a service that does not answer), no
traceback, and no password.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from core.cli.params import JSON_ARGUMENT, JSON_OBJECT, MAX_NESTING, nesting
from core.errors import UsageError
from core.results import Outcome
from tests.worker import host, host_env, write_ini

EMBEDDED_BROKER = "embedded+sqlite:///%(here)s/data/broker.sqlite"


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(tmp_path: Path, ini_text: str, *args: str) -> tuple[int, str, str]:
    ini = write_ini(tmp_path, ini_text)
    done = host(*args, "--config", str(ini), env=host_env(), cwd=tmp_path)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout, done.stderr


def test_an_unknown_broker_scheme_stops_every_command(tmp_path: Path) -> None:
    ini = "[app:main]\ncelery.broker_url = amqq://guest:s3cret@127.0.0.1//\n"
    for command in (["tasks"], ["send", "example.echo", '"x"'], ["celeryd"]):
        status, stdout, stderr = run(tmp_path, ini, *command)
        assert status == 2, (command, stdout, stderr)
        assert stderr == (
            f"Error: {tmp_path / 'test.ini'}, section [app:main], key 'celery.broker_url': "
            "amqq://guest:**@127.0.0.1//: unknown broker transport 'amqq'\n"
            "  -> did you mean amqp://?\n"
        )


def test_a_result_store_whose_library_is_missing(tmp_path: Path) -> None:
    ini = f"[app:main]\ncelery.broker_url = {EMBEDDED_BROKER}\ncelery.result_backend = mongodb://h/r\n"
    status, _, stderr = run(tmp_path, ini, "tasks")
    assert status == 2
    assert "mongodb://h/r: it needs the Python package pymongo, which is not installed" in stderr
    assert stderr.endswith("  -> pip install pymongo\n")


def test_a_broker_that_does_not_answer(tmp_path: Path) -> None:
    port = closed_port()
    ini = f"[app:main]\ncelery.broker_url = amqp://guest:s3cret@127.0.0.1:{port}//\n"
    status, stdout, stderr = run(tmp_path, ini, "send", "example.echo", '"x"')
    assert (status, stdout) == (1, "")
    assert stderr.startswith(
        f"Error: the task was not sent: the broker at amqp://guest:**@127.0.0.1:{port}// does not answer ("
    ), stderr
    assert stderr.endswith(
        "  -> start the broker, or check celery.broker_url ('host config show' prints it)\n"
    )
    assert "s3cret" not in stderr


def test_a_result_store_that_does_not_answer(tmp_path: Path) -> None:
    port = closed_port()
    ini = (
        f"[app:main]\ncelery.broker_url = {EMBEDDED_BROKER}\n"
        f"celery.result_backend = redis://:s3cret@127.0.0.1:{port}/0\n"
    )
    # Waiting needs the store: one clear error, and the task is not sent.
    status, stdout, stderr = run(tmp_path, ini, "send", "example.echo", '"x"', "--wait")
    assert (status, stdout) == (1, "")
    assert stderr.startswith(
        f"Error: the result store at redis://:**@127.0.0.1:{port}/0 does not answer ("
    ), stderr
    assert "s3cret" not in stderr
    status, stdout, stderr = run(tmp_path, ini, "result", "00000000-0000-0000-0000-000000000000")
    assert status == 1 and "the result store at redis://:**@" in stderr, stderr
    # Sending without waiting is not held up by the store: the task is sent, one warning
    # says its result cannot be awaited now, and the worker stores it when it can.
    status, stdout, stderr = run(tmp_path, ini, "send", "example.echo", '"x"')
    assert status == 0, stderr
    assert len(stdout.strip()) == 36  # the task id
    assert stderr == (
        f"the result store at redis://:**@127.0.0.1:{port}/0 does not answer (ConnectionError: Error 111 "
        f"connecting to 127.0.0.1:{port}. Connection refused.): tasks are still sent, but their results "
        "cannot be awaited until it answers; workers store them as soon as it does\n"
    )


def test_waiting_without_a_result_backend(tmp_path: Path) -> None:
    ini = f"[app:main]\ncelery.broker_url = {EMBEDDED_BROKER}\n"
    status, stdout, stderr = run(tmp_path, ini, "send", "example.echo", '"x"', "--wait")
    assert (status, stdout) == (2, "")
    assert stderr == (
        f"Error: {tmp_path / 'test.ini'}, key 'celery.result_backend': no result backend is configured, "
        "so results cannot be read\n"
        "  -> set celery.result_backend in the ini (development.ini uses embedded+sqlite://)\n"
    )


@pytest.mark.parametrize(
    ("option", "value"),
    [("--timeout", "-1"), ("--timeout", "nan"), ("--countdown", "inf"), ("--timeout", "x")],
)
def test_seconds_must_be_a_finite_number_not_below_zero(tmp_path: Path, option: str, value: str) -> None:
    ini = f"[app:main]\ncelery.broker_url = {EMBEDDED_BROKER}\n"
    status, _, stderr = run(tmp_path, ini, "send", "example.echo", "1", f"{option}={value}")
    assert status == 2
    assert f"Error: Invalid value for '{option}': '{value}' is not a number of seconds" in stderr


def test_deeply_nested_arguments_are_refused_before_sending(tmp_path: Path) -> None:
    ini = f"[app:main]\ncelery.broker_url = {EMBEDDED_BROKER}\n"
    deep = "[" * 5000 + "]" * 5000
    status, stdout, stderr = run(tmp_path, ini, "send", "example.echo", deep)
    assert (status, stdout) == (2, "")
    assert stderr == (
        f"Error: argument 1 ('{'[' * 60}...') nests lists or objects more than {MAX_NESTING} levels deep\n"
        "  -> pass flatter data, or a reference to it (a file name, a database id)\n"
    )
    assert not (tmp_path / "data" / "broker.sqlite").exists()  # nothing was sent


def test_worker_options_help_needs_no_configuration(tmp_path: Path) -> None:
    done = host("celeryd", "--", "--help", env=host_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(
        "host celeryd [--config FILE] -- [OPTIONS]: the options are those of `celery worker`"
    )
    for option in ("--concurrency", "--pool", "--queues", "--loglevel"):
        assert option in done.stdout


# -- the same rules, without a process --------------------------------------------


def test_nesting_is_measured_without_recursion() -> None:
    assert nesting(1) == 0
    assert nesting([]) == 1
    assert nesting({"a": [1, {"b": []}]}) == 4
    value: list = []
    for _ in range(10_000):
        value = [value]
    assert nesting(value) == MAX_NESTING + 1  # stops counting once it is too deep


def test_nesting_up_to_the_limit_is_accepted() -> None:
    text = "[" * MAX_NESTING + "]" * MAX_NESTING
    assert nesting(JSON_ARGUMENT.convert(text, None, None)) == MAX_NESTING
    with pytest.raises(UsageError, match="nests lists or objects more than"):
        JSON_OBJECT.convert('{"a": ' + "[" * MAX_NESTING + "]" * MAX_NESTING + "}", None, None)
    with pytest.raises(UsageError, match="nests lists or objects more than"):
        JSON_OBJECT.convert('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", None, None)


def test_a_result_with_a_lone_surrogate_prints_as_json() -> None:
    assert Outcome("id", "SUCCESS", "plain text").render() == "plain text"
    assert Outcome("id", "SUCCESS", "").render() == ""
    assert Outcome("id", "SUCCESS", "bad \udc80 half").render() == '"bad \\udc80 half"'
    assert Outcome("id", "SUCCESS", {"a": 1}).render() == '{"a": 1}'


def test_broken_logging_sections_stop_tasks_and_celeryd(tmp_path: Path) -> None:
    ini = (
        f"[app:main]\ncelery.broker_url = {EMBEDDED_BROKER}\n"
        "[loggers]\nkeys = root\n[handlers]\nkeys = console\n[formatters]\nkeys =\n"
        "[logger_root]\nlevel = INFO\nhandlers = console\n"
    )
    for command in ("tasks", "celeryd"):
        status, stdout, stderr = run(tmp_path, ini, command)
        assert (status, stdout) == (2, ""), (command, stderr)
        assert stderr.startswith(
            f"Error: {tmp_path / 'test.ini'}: the logging sections are incomplete: "
            "nothing defines 'handler_console'\n"
        )


def test_help_with_a_broken_ini_says_why_the_plugins_commands_are_missing(tmp_path: Path) -> None:
    ini = write_ini(tmp_path, "[app:main\n")
    done = host("--config", str(ini), "--help", env=host_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Commands from plugins could not be listed:" in done.stdout
    assert "File contains no section headers" in done.stdout
