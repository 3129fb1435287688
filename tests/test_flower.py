"""``host flower``: Flower on the configured app, checked in a real headless browser.

On each broker -- the embedded one (``development.ini`` as ``make run`` uses
it, in a folder of the module's own) and RabbitMQ with Redis for results
(under a ``host.site_id`` of the module's own, its queues deleted afterwards)
-- the module starts one worker and one ``host flower`` on a spare
127.0.0.1 port, with basic auth from ``HOST_FLOWER_BASIC_AUTH``. The worker
runs without ``-E``: Flower turns its task events on itself, as it would for
``make run``'s worker. Then, in Debian's Chromium driven by Playwright
(``executable_path``, no browser download): the Workers page lists the
worker by its node name, the Tasks page shows the example tasks that ran,
and a page without credentials gets 401. A screenshot of each page is kept
per broker: in the test's tmp_path and in ``test-artifacts/`` at the root of
the repository (the test prints both paths).

With ``CI=true`` a missing Chromium or Playwright fails the browser tests;
without it, they are skipped with the reason. Every wait has a deadline;
nothing asserts how long anything took.
"""

from __future__ import annotations

import base64
import getpass
import os
import re
import secrets
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from click.testing import CliRunner

from conftest import IN_CI, RABBITMQ_URL, ROOT, _require, write_ini
from core.celery_app import HostCelery
from core.cli import cli
from core.config import load_config
from core.errors import ConfigError, UsageError
from core.flower import BASIC_AUTH_ENV, flower_run
from core.startup import configure_app, load_plugins
from services import spare_port
from supervisord import running_supervisord
from worker import (
    HOST,
    Worker,
    development_ini,
    host,
    host_env,
    on_rabbitmq,
    running_worker,
    started,
    wait_until,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
NODE = re.compile(r"(\S+@\S+) ready\.")
#: For anything that must happen eventually; a loaded CI machine is slow, never this slow.
DEADLINE = 120.0
#: Playwright's waits take milliseconds.
PAGE_DEADLINE_MS = DEADLINE * 1000
USER = "monitor"


# -- flower.* and Flower's command line ---------------------------------------------------


def test_flower_keys_default_to_this_machine_only(tmp_path: Path) -> None:
    config = load_config(write_ini(tmp_path / "a.ini", "[app:main]\n"), environ={})
    assert config.flower == {"address": "127.0.0.1", "port": 5555, "url_prefix": "", "basic_auth": ""}
    run = flower_run(config, [], environ={})
    assert run.argv == ["flower", "--address=127.0.0.1", "--port=5555"]
    assert (run.env, run.url) == ({}, "http://127.0.0.1:5555/")


def test_spaces_around_the_commas_of_basic_auth_are_dropped_for_flower(tmp_path: Path) -> None:
    """Flower compares "user:password" whole: " bob:pw2" would lock bob out."""
    config = load_config(
        write_ini(tmp_path / "a.ini", "[app:main]\n"),
        environ={"HOST_FLOWER_BASIC_AUTH": "alice:pw, bob:pw2 "},
    )
    assert flower_run(config, [], environ={}).env == {BASIC_AUTH_ENV: "alice:pw,bob:pw2"}


def test_authentication_given_to_flower_directly_counts_as_authentication(tmp_path: Path) -> None:
    config = load_config(write_ini(tmp_path / "a.ini", "[app:main]\n"), environ={})
    assert flower_run(config, [], environ={"FLOWER_BASIC_AUTH": "alice:pw"}).authenticated
    assert not flower_run(config, [], environ={}).authenticated


def test_basic_auth_reaches_flower_through_its_environment_never_its_arguments(tmp_path: Path) -> None:
    ini = write_ini(
        tmp_path / "a.ini",
        """
        [app:main]
        flower.basic_auth = alice:from-the-file
        flower.url_prefix = flower
        flower.port = 5600
        """,
    )
    from_file = flower_run(load_config(ini, environ={}), ["--port=5601"], environ={})
    assert from_file.env == {BASIC_AUTH_ENV: "alice:from-the-file"}
    assert from_file.argv == ["flower", "--address=127.0.0.1", "--url_prefix=flower", "--port=5601"]
    assert "from-the-file" not in repr(from_file)

    environ = {"HOST_FLOWER_BASIC_AUTH": "bob:from-the-env,carol:too"}
    config = load_config(ini, environ=environ)
    assert config.sources["flower.basic_auth"] == "env HOST_FLOWER_BASIC_AUTH"
    run = flower_run(config, [], environ={})
    assert run.env == {BASIC_AUTH_ENV: "bob:from-the-env,carol:too"}
    assert not [arg for arg in run.argv if "from-the" in arg]


def test_config_show_masks_the_credentials(tmp_path: Path) -> None:
    ini = write_ini(tmp_path / "a.ini", "[app:main]\nflower.basic_auth = alice:s3cret-in-file\n")
    done = host("config", "show", "--config", str(ini), env=host_env())
    assert done.returncode == 0, done.stderr
    assert "flower.basic_auth = ********    # file" in done.stdout
    assert "flower.port = 5555    # default" in done.stdout
    assert "s3cret" not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("value", "entry"), [("alice", 1), ("alice:ok,bob", 2), (":nouser", 1), ("alice:", 1)]
)
def test_malformed_credentials_are_an_error_that_does_not_quote_them(
    tmp_path: Path, value: str, entry: int
) -> None:
    ini = write_ini(tmp_path / "a.ini", f"[app:main]\nflower.basic_auth = {value}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(ini, environ={})
    assert str(caught.value) == (
        f"{ini}, section [app:main], key 'flower.basic_auth': entry {entry} of the value is not "
        "user:password (the value is not shown: it holds passwords)\n"
        "  -> write user:password, several separated by commas: alice:s3cret,bob:0ther "
        "(a password cannot hold a comma: Flower splits the value at each one)"
    )


def test_an_unknown_flower_key_gets_a_suggestion(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown flower setting\n  -> did you mean flower.basic_auth\?"):
        load_config(write_ini(tmp_path / "a.ini", "[app:main]\nflower.basic_aut = a:b\n"), environ={})
    with pytest.raises(ConfigError, match=r"did you mean HOST_FLOWER_PORT\?"):
        load_config(write_ini(tmp_path / "b.ini", "[app:main]\n"), environ={"HOST_FLOWER_PORTT": "1"})
    with pytest.raises(ConfigError, match=r"70000 is not a port"):
        load_config(write_ini(tmp_path / "c.ini", "[app:main]\nflower.port = 70000\n"), environ={})


@pytest.mark.parametrize("address", ["0.0.0.0", "", "192.0.2.7", "flower.example.org"])
def test_listening_beyond_this_machine_needs_authentication(tmp_path: Path, address: str) -> None:
    config = load_config(write_ini(tmp_path / "a.ini", "[app:main]\n"), environ={})
    with pytest.raises(UsageError, match="refusing to run Flower on .* without authentication"):
        flower_run(config, [f"--address={address}"], environ={})
    # With credentials, from the ini or as Flower's own option or variable, it may.
    on_the_command_line = flower_run(config, [f"--address={address}", "--basic-auth=a:b"], environ={})
    assert on_the_command_line.warnings == (
        "--basic_auth on the command line is visible to every user of this machine (ps): "
        "set flower.basic_auth or HOST_FLOWER_BASIC_AUTH instead",
    )
    flower_run(config, [f"--address={address}"], environ={"FLOWER_BASIC_AUTH": "a:b"})
    authenticated = load_config(tmp_path / "a.ini", environ={"HOST_FLOWER_BASIC_AUTH": "a:b"})
    from_the_ini = flower_run(authenticated, [f"--address={address}"], environ={})
    assert (from_the_ini.address, from_the_ini.warnings) == (address, ())


@pytest.mark.parametrize("port", ["--port=abc", "--port", "--port=0"])
def test_a_port_that_is_none_is_a_usage_error(tmp_path: Path, port: str) -> None:
    config = load_config(write_ini(tmp_path / "a.ini", "[app:main]\n"), environ={})
    with pytest.raises(UsageError, match=r"is not a port for Flower\n  -> write --port=5566"):
        flower_run(config, [port], environ={})


def test_host_flower_refuses_an_open_address_before_starting(tmp_path: Path) -> None:
    ini = write_ini(tmp_path / "dev.ini", development_ini())
    done = host("flower", "--config", str(ini), "--", "--address=0.0.0.0", env=host_env(), cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Error: refusing to run Flower on 0.0.0.0 without authentication" in done.stderr


def test_without_flower_installed_the_error_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules is how Python marks a module that cannot be imported.
    monkeypatch.setitem(sys.modules, "flower", None)
    result = CliRunner().invoke(cli, ["flower", "--config", str(tmp_path / "any.ini")])
    assert result.exit_code == 2, result.output
    assert "install the flower extra: pip install 'host-framework[flower]'" in result.output


def http_status(url: str, credentials: str | None = None) -> int | None:
    """The status of GET ``url`` (with basic auth ``user:password``), or None while nothing listens."""
    request = urllib.request.Request(url)
    if credentials:
        request.add_header("Authorization", "Basic " + base64.b64encode(credentials.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, ConnectionError):
        return None


def test_the_supervisor_program_runs_flower_and_stops_it_cleanly(tmp_path: Path) -> None:
    """``host supervisor --flower`` adds a Flower program; under a real supervisord it serves,
    asks for the credentials its ``environment =`` line gives, and stops with exit status 0."""
    port = spare_port()
    ini = write_ini(tmp_path / "dev.ini", development_ini({"flower.port": str(port)}))
    logs = tmp_path / "logs"
    logs.mkdir()
    args = ["--config", str(ini), "--user", "nobody", "--log-dir", str(logs), "--flower"]
    rendered = host("supervisor", *args, env=host_env())
    assert rendered.returncode == 0, rendered.stderr
    assert "programs = host-celeryd,host-celerybeat,host-flower\n" in rendered.stdout
    program = rendered.stdout[rendered.stdout.index("[program:host-flower]") :]
    assert f"command = {HOST} flower --config {ini}\n" in program
    password = secrets.token_urlsafe(12)
    # As the deployment guide says: the credentials in the program's environment, the user not root.
    program = program.replace("user = nobody", f"user = {getpass.getuser()}").replace(
        "numprocs = 1\n", f'numprocs = 1\nenvironment = HOST_FLOWER_BASIC_AUTH="{USER}:{password}"\n'
    )
    url = f"http://127.0.0.1:{port}/workers"
    with running_supervisord(tmp_path, program) as sup:
        sup.wait_for_state("host-flower", "RUNNING")
        wait_until(lambda: http_status(url), DEADLINE, "Flower to listen", sup.details, interval=0.2)
        assert http_status(url) == 401
        assert http_status(url, f"{USER}:{password}") == 200
        stopped = sup.ctl("stop", "host-flower")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        info = sup.wait_for_state("host-flower", "STOPPED")
        assert info["exitstatus"] == 0, sup.details()
        assert password not in sup.log("host-flower")


# -- one worker and one Flower per broker --------------------------------------------------


@dataclass
class Monitored:
    """A broker with the module's worker, a ``host flower`` on it, and the example tasks they saw."""

    kind: str
    worker: Worker
    flower: Worker
    node: str
    url: str
    password: str
    task_ids: dict[str, str]

    @property
    def credentials(self) -> dict[str, str]:
        return {"username": USER, "password": self.password}


def settings(kind: str, site: str) -> dict[str, str]:
    """development.ini's keys for ``kind``: as it is, or on RabbitMQ and Redis under the site ``site``."""
    return {} if kind == "embedded" else on_rabbitmq(site)


def delete_site(site: str) -> None:
    """The site's queues and exchanges on RabbitMQ, gone (Flower's and the replies' go by themselves)."""
    from kombu import Connection

    prefix = f"host:{site}:"
    with Connection(RABBITMQ_URL, connect_timeout=10) as connection:
        channel = connection.default_channel
        for queue in ("celery", "example"):
            channel.queue_delete(prefix + queue)
            channel.exchange_delete(prefix + queue)  # Celery names a queue's exchange after it
        for exchange in (f"{prefix}celery.pidbox", f"{prefix}celeryev", f"reply.{prefix}celery.pidbox"):
            channel.exchange_delete(exchange)


def run_examples(worker: Worker) -> dict[str, str]:
    """example.add and example.echo, sent from this process and waited for; their ids by name."""
    config = load_config(worker.ini, environ={})
    app = configure_app(HostCelery("flower-test", set_as_current=False), config, load_plugins(config))
    try:
        results = {
            "example.add": app.send_task("example.add", args=[2, 3]),
            "example.echo": app.send_task("example.echo", args=["seen by flower"]),
        }
        assert results["example.add"].get(timeout=DEADLINE) == 5
        assert results["example.echo"].get(timeout=DEADLINE) == "seen by flower"
        return {name: result.id for name, result in results.items()}
    finally:
        app.close()


BROKERS = [
    pytest.param("embedded"),
    pytest.param("rabbitmq", marks=[pytest.mark.rabbitmq, pytest.mark.redis]),
]


@pytest.fixture(scope="module", params=BROKERS)
def monitored(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Monitored]:
    kind = request.param
    if kind == "rabbitmq":  # before the worker starts: a module fixture is set up before the markers' check
        _require("RabbitMQ", 5672)
        _require("Redis", 6379)
    site = f"flower{uuid.uuid4().hex[:10]}"
    directory = tmp_path_factory.mktemp(f"flower-{kind}")
    password = secrets.token_urlsafe(16)
    port = spare_port()
    try:
        # No -E: Flower turns the worker's task events on, as it would for `make run`'s worker.
        with running_worker(directory, development_ini(settings(kind, site))) as worker:
            env = {**worker.env, "HOST_FLOWER_BASIC_AUTH": f"{USER}:{password}"}
            command = [HOST, "flower", "--config", str(worker.ini), "--", f"--port={port}"]
            with started(command, worker.ini, env, directory, "flower") as flower:
                flower.wait_for_log(rf"Visit me at http://127\.0\.0\.1:{port}")
                worker.wait_for_log(re.escape("Events of group {task} enabled by remote."))
                task_ids = run_examples(worker)
                node = worker.wait_for_log(NODE).group(1)
                yield Monitored(kind, worker, flower, node, f"http://127.0.0.1:{port}/", password, task_ids)
                assert password not in flower.log, "Flower's log shows the password"
                assert flower.terminate() == 0, flower.failure_details()
            assert worker.terminate() == 0, worker.failure_details()[-5000:]
    finally:
        if kind == "rabbitmq":
            delete_site(site)


def test_the_password_is_on_no_command_line(monitored: Monitored) -> None:
    """``ps`` shows every process's arguments to every user: the password is in none of them.

    (That Flower got it, through its environment, the 401 and 200 below show.)
    """
    listing = subprocess.run(["ps", "-eww", "-o", "pid=,args="], capture_output=True, text=True, check=True)
    assert f"{monitored.flower.pid} " in listing.stdout, "ps does not list the Flower process"
    assert monitored.password not in listing.stdout


# -- in the browser -------------------------------------------------------------------------


def _missing(reason: str) -> None:
    if IN_CI:
        pytest.fail(
            f"{reason}; with CI=true the browser tests must run (.ci/run installs chromium; "
            "pip install -e '.[test]' installs playwright)",
            pytrace=False,
        )
    pytest.skip(f"{reason} (install it, or run with CI=true to make this a failure)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, driven by Playwright: no browser is downloaded."""
    if not os.access(CHROMIUM, os.X_OK):
        _missing(f"{CHROMIUM} is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ModuleNotFoundError:
        _missing("playwright is not installed (pip install playwright; never `playwright install`)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def keep_screenshot(page: Any, tmp_path: Path, name: str) -> None:
    """A full-page screenshot in ``tmp_path`` and in ``test-artifacts/`` (git-ignored); both printed."""
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / name)
    print(f"screenshot: {shot} (copied to {ARTIFACTS / name})")


def test_the_workers_page_lists_the_worker(monitored: Monitored, browser: Browser, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with browser.new_context(http_credentials=monitored.credentials) as context:
        page = context.new_page()
        response = page.goto(monitored.url + "workers")
        assert response is not None and response.status == 200
        expect(page.locator("#workers-table")).to_contain_text(monitored.node, timeout=PAGE_DEADLINE_MS)
        keep_screenshot(page, tmp_path, f"flower-{monitored.kind}-workers.png")


def test_the_tasks_page_shows_the_example_tasks(
    monitored: Monitored, browser: Browser, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    with browser.new_context(http_credentials=monitored.credentials) as context:
        page = context.new_page()
        response = page.goto(monitored.url + "tasks")
        assert response is not None and response.status == 200
        table = page.locator("#tasks-table")
        for name, task_id in monitored.task_ids.items():
            row = table.locator("tr", has_text=task_id)
            expect(row).to_contain_text(name, timeout=PAGE_DEADLINE_MS)
            expect(row).to_contain_text("SUCCESS", timeout=PAGE_DEADLINE_MS)
        keep_screenshot(page, tmp_path, f"flower-{monitored.kind}-tasks.png")


def status_of(page: Page, url: str) -> int:
    """The HTTP status Chromium got for ``url``, also when it is 401.

    Chromium ends a navigation answered 401 with ``net::ERR_INVALID_AUTH_CREDENTIALS``
    (nobody is there to type a password), so the status is read from the response event.
    """
    from playwright.sync_api import Error

    with page.expect_response(url, timeout=PAGE_DEADLINE_MS) as answer:
        try:
            page.goto(url)
        except Error as e:
            if "ERR_INVALID_AUTH_CREDENTIALS" not in str(e):
                raise
    return answer.value.status


def test_a_page_without_credentials_gets_401_and_with_them_200(
    monitored: Monitored, browser: Browser
) -> None:
    url = monitored.url + "workers"
    with browser.new_context() as context:
        assert status_of(context.new_page(), url) == 401
    wrong = {"username": USER, "password": "not-" + monitored.password, "send": "always"}
    with browser.new_context(http_credentials=wrong) as context:  # type: ignore[arg-type]
        assert status_of(context.new_page(), url) == 401
    right = {**wrong, "password": monitored.password}
    with browser.new_context(http_credentials=right) as context:  # type: ignore[arg-type]
        assert status_of(context.new_page(), url) == 200
