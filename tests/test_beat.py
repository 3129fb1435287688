"""Periodic tasks: the schedule from the ini and the plugins, checked before anything starts, and
one scheduler firing however many beats run.

The end-to-end tests run real ``host celerybeat`` and ``host celeryd`` processes on the
embedded broker, with an ini like development.ini in the test's folder. Their task,
``beattest.record`` (tests/beat_tasks.py, from the plugin tests/beat_plugin.py), appends
each run to a file with the ``host_beat`` header beat sent it with: the entry, the
scheduler, the run number, and the times of this run and the previous one. Each run's
outcome is read back through the result store. Waits have generous deadlines; nothing
asserts how long anything took.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, Site
from worker import HOST, Worker, host, host_env, started, started_worker, wait_until, write_ini

TESTS = ROOT / "tests"

INI = """
[app:main]
celery.broker_url = embedded+sqlite:///%(here)s/data/broker.sqlite
celery.result_backend = embedded+sqlite:///%(here)s/data/results.sqlite
celery.worker_redirect_stdouts_level = INFO
host.plugins = beattest
host.locks.expires = {expires}
{extra}

[plugin:beattest]
runs = %(here)s/runs.jsonl
every = {every}
{sections}
"""

EVERY_SECOND = """
[celerybeat:every-second]
task = beattest.record
schedule = 1
args = ["every-second"]
"""


def ini_text(sections: str = "", every: float = 0, expires: float = 3, extra: str = "") -> str:
    return INI.format(sections=sections, every=every, expires=expires, extra=extra)


def install(site: Site) -> None:
    """beattest-plugin as pip would leave it: a dist-info folder naming tests/beat_plugin.py."""
    site.add("beattest-plugin", "1.0", entry_points={"host.plugins": {"beattest": "beat_plugin"}})


def env_for(site: Site) -> dict[str, str]:
    return host_env(pythonpath=[site.path, TESTS])


def runs(directory: Path) -> list[dict[str, Any]]:
    path = directory / "runs.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@contextmanager
def running_beat(ini: Path, env: dict[str, str], directory: Path) -> Iterator[Worker]:
    """``host celerybeat`` on ``ini``, in a session of its own; SIGTERM (then SIGKILL) at the end."""
    with started([HOST, "celerybeat", "--config", str(ini)], ini, env, directory, "beat") as beat:
        yield beat


ACTIVE = r"beat: beat@\S+ holds host\.beat"
STANDBY = r"beat: standing by: host\.beat\S* is held by"

# Reads each task's state and result from the result store, as a web application would.
RESULTS = """
import json, sys
from core import configure
from core.celery_app import celery

configure(sys.argv[1])
out = {}
for task_id in json.loads(sys.argv[2]):
    result = celery.AsyncResult(task_id)
    out[task_id] = {"state": result.state, "result": result.result if result.state == "SUCCESS" else None}
print(json.dumps(out))
"""


def results(ini: Path, env: dict[str, str], ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-c", RESULTS, str(ini), json.dumps(list(ids))],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def wait_for_results(ini: Path, env: dict[str, str], recorded: list[dict[str, Any]]) -> None:
    """Every recorded run is SUCCESS in the result store, its result what the task saw."""
    ids = [run["id"] for run in recorded]
    found: dict[str, dict[str, Any]] = {}

    def stored() -> bool:
        found.update(results(ini, env, ids))
        return all(found[i]["state"] == "SUCCESS" for i in ids)

    wait_until(
        stored, 120, "the results in the result store", lambda: json.dumps(found, indent=1), interval=0.5
    )
    for run in recorded:
        assert found[run["id"]]["result"] == {"label": run["label"], "beat": run["beat"]}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def assert_once_per_tick(recorded: list[dict[str, Any]], every: float) -> None:
    """One entry's runs: each run number once, in order, and never two within one interval.

    Two schedulers sending would repeat run numbers, or send runs closer than the
    interval (each sends at most once per interval, from its own clock).
    """
    ordered = sorted(recorded, key=lambda run: at(run["beat"]["this_run"]))
    numbers = [run["beat"]["run"] for run in ordered]
    assert len(numbers) == len(set(numbers)), numbers
    assert numbers == sorted(numbers), numbers
    for before, after in zip(ordered, ordered[1:], strict=False):
        gap = at(after["beat"]["this_run"]) - at(before["beat"]["this_run"])
        assert gap >= timedelta(seconds=every * 0.9), (before, after)
        assert after["beat"]["previous_run"] is not None


# -- the schedule: sources, forms, checks --------------------------------------------------


@pytest.mark.e2e
def test_ini_seconds_duration_crontab_and_plugin_entries_all_run(site: Site, tmp_path: Path) -> None:
    install(site)
    sections = """
[celerybeat:ini-seconds]
task = beattest.record
schedule = 1
args = ["ini-seconds"]

[celerybeat:ini-duration]
task = beattest.record
schedule = 2s
kwargs = {"label": "ini-duration"}
queue = beatq

[celerybeat:ini-crontab]
task = beattest.record
schedule = * * * * *
args = ["ini-crontab"]
"""
    ini = write_ini(tmp_path, ini_text(sections, every=1, extra="host.site_id = bt"))
    env = env_for(site)

    before = datetime.now(timezone.utc)
    listed = host("schedule", "--json", "--config", str(ini), env=env, cwd=tmp_path)
    after = datetime.now(timezone.utc)

    assert listed.returncode == 0, listed.stderr
    entries = {e["entry"]: e for e in json.loads(listed.stdout)["entries"]}
    assert sorted(entries) == ["ini-crontab", "ini-duration", "ini-seconds", "plugin.tick"]
    assert entries["ini-crontab"]["schedule"] == "* * * * *"
    assert entries["ini-crontab"]["from"] == {"file": str(ini), "section": "celerybeat:ini-crontab"}
    assert entries["plugin.tick"]["from"] == {"plugin": "beattest"}
    assert entries["ini-duration"]["schedule"] == "every 2 s"
    # A fresh beat sends a * * * * * entry at the start of the next minute.
    next_minute = {(t + timedelta(minutes=1)).replace(second=0, microsecond=0) for t in (before, after)}
    assert at(entries["ini-crontab"]["next_due"]) in next_minute

    labels = {"ini-seconds", "ini-duration", "ini-crontab", "plugin.tick"}
    with (
        started_worker(ini, env, tmp_path, ["-c", "2", "-Q", "celery,beatq"]) as worker,
        running_beat(ini, env, tmp_path) as beat,
    ):
        # The crontab entry runs at the start of the next minute: up to a minute away.
        wait_until(
            lambda: labels <= {run["label"] for run in runs(tmp_path)},
            180,
            "a run of every entry",
            lambda: "\n".join([json.dumps(runs(tmp_path)), beat.failure_details(), worker.failure_details()]),
            interval=0.5,
        )
    recorded = runs(tmp_path)
    wait_for_results(ini, env, recorded)
    by_label = {run["label"]: run for run in recorded}
    assert {label: by_label[label]["beat"]["entry"] for label in labels} == {
        "ini-seconds": "ini-seconds",
        "ini-duration": "ini-duration",
        "ini-crontab": "ini-crontab",
        "plugin.tick": "plugin.tick",
    }
    # queue = beatq, with the site prefix, as -Q names it
    assert by_label["ini-duration"]["queue"] == "host:bt:beatq"
    # the crontab entry ran at or after the minute host schedule said it was due
    first_crontab_run = min(at(r["beat"]["this_run"]) for r in recorded if r["label"] == "ini-crontab")
    assert first_crontab_run >= at(entries["ini-crontab"]["next_due"])
    # beat's state is under data/, beside the ini, not in the folder it was started from
    assert (tmp_path / "data" / "celerybeat-schedule.sqlite").is_file()
    assert not (tmp_path / "celerybeat-schedule").exists()


@pytest.mark.parametrize("command", ["celerybeat", "doctor", "plugins", "schedule"])
def test_a_malformed_crontab_exits_2_naming_its_section(site: Site, tmp_path: Path, command: str) -> None:
    install(site)
    sections = "\n[celerybeat:nightly]\ntask = beattest.record\nschedule = 0 3 * * 8\n"
    ini = write_ini(tmp_path, ini_text(sections))

    done = host(command, "--config", str(ini), env=env_for(site), cwd=tmp_path)

    assert done.returncode == 2, (done.stdout, done.stderr)
    expected = (
        f"{ini}, section [celerybeat:nightly], key 'schedule': crontab '0 3 * * 8', "
        "day of week field '8': 8 is outside 0-6"
    )
    assert expected in done.stdout + done.stderr
    assert not (tmp_path / "data" / "celerybeat-schedule.sqlite").exists()


@pytest.mark.parametrize("command", ["celerybeat", "doctor", "plugins", "schedule"])
def test_an_entry_naming_a_missing_task_exits_2_naming_its_section(
    site: Site, tmp_path: Path, command: str
) -> None:
    install(site)
    sections = "\n[celerybeat:nightly]\ntask = beattest.recrod\nschedule = @daily\n"
    ini = write_ini(tmp_path, ini_text(sections))

    done = host(command, "--config", str(ini), env=env_for(site), cwd=tmp_path)

    assert done.returncode == 2, (done.stdout, done.stderr)
    output = done.stdout + done.stderr
    assert (
        f"{ini}, section [celerybeat:nightly], key 'task': no installed extension provides the task "
        "'beattest.recrod'"
    ) in output
    assert "did you mean beattest.record?" in output


def test_a_plugin_entry_naming_a_missing_task_is_the_plugins_error(site: Site, tmp_path: Path) -> None:
    install(site)
    ini = write_ini(tmp_path, ini_text(every=60).replace("every = 60", "every = 60\ntask = beattest.gone"))
    env = env_for(site)
    error = (
        "plugin 'beattest' (beattest-plugin==1.0, entry point host.plugins:beattest = beat_plugin): "
        "beat entry 'plugin.tick' runs task 'beattest.gone', which no installed extension provides"
    )

    listed = host("plugins", "--json", "--config", str(ini), env=env, cwd=tmp_path)
    beat = host("celerybeat", "--config", str(ini), env=env, cwd=tmp_path)
    warned = host(
        "schedule", "--config", str(ini), env={**env, "HOST_EXTENSIONS_ON_ERROR": "warn"}, cwd=tmp_path
    )

    assert listed.returncode == 2
    [plugin] = [p for p in json.loads(listed.stdout)["plugins"] if p["name"] == "beattest"]
    assert plugin["error"].startswith(error)
    assert (beat.returncode, beat.stderr.splitlines()[0]) == (2, f"Error: {error}")
    # host schedule lists every problem, whatever on_error says; beat would skip the entry
    assert warned.returncode == 2
    assert f"Error: {error}" in warned.stderr


def test_beat_needs_a_lock_store_every_machine_shares(site: Site, tmp_path: Path) -> None:
    install(site)
    text = ini_text(EVERY_SECOND).replace(
        "embedded+sqlite:///%(here)s/data/broker.sqlite", "amqp://guest:guest@127.0.0.1:1//"
    )
    ini = write_ini(tmp_path, text)

    done = host("celerybeat", "--config", str(ini), env=env_for(site), cwd=tmp_path)

    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.startswith(
        f"Error: {ini}, section [app:main], key 'host.locks.url': host.locks.url is empty and the broker "
        "is not embedded"
    )


@pytest.mark.parametrize(
    ("lines", "key", "problem"),
    [
        ('schedule = 5m\nargs = ["unclosed"', "args", "is not a JSON list"),
        ('schedule = 5m\nkwargs = ["x"]', "kwargs", "is a JSON list, not a JSON object"),
        ("schedule = 5m\noptions = {bad}", "options", "is not a JSON object"),
        ("schedule = 5m\nshedule = 1", "shedule", "unknown key of a periodic entry"),
        ("schedule = every five minutes", "schedule", "'every five minutes' is not a schedule"),
    ],
)
def test_a_bad_section_exits_2_naming_its_file_section_and_key(
    site: Site, tmp_path: Path, lines: str, key: str, problem: str
) -> None:
    install(site)
    ini = write_ini(tmp_path, ini_text(f"\n[celerybeat:report]\ntask = beattest.record\n{lines}\n"))

    done = host("celerybeat", "--config", str(ini), env=env_for(site), cwd=tmp_path)

    assert done.returncode == 2, (done.stdout, done.stderr)
    assert f"Error: {ini}, section [celerybeat:report], key '{key}': {problem}" in done.stderr


# -- one scheduler fires ----------------------------------------------------------------------


@pytest.mark.e2e
def test_two_beats_run_each_entry_once_per_tick(site: Site, tmp_path: Path) -> None:
    install(site)
    ini = write_ini(tmp_path, ini_text(EVERY_SECOND))
    env = env_for(site)

    with (
        started_worker(ini, env, tmp_path, ["-c", "2"]) as worker,
        running_beat(ini, env, tmp_path) as first,
        running_beat(ini, env, tmp_path) as second,
    ):
        wait_until(
            lambda: len(runs(tmp_path)) >= 8,
            180,
            "eight runs",
            lambda: f"{first.failure_details()}\n{second.failure_details()}\n{worker.failure_details()}",
            interval=0.5,
        )
        for beat in (first, second):
            beat.wait_for_log(f"{ACTIVE}|{STANDBY}")
        # Read before any beat stops: a standby takes over from a beat that stops.
        recorded, logs = runs(tmp_path), [first.log, second.log]
    assert_once_per_tick(recorded, every=1)
    assert len({run["beat"]["scheduler"] for run in recorded}) == 1
    assert sorted("holds host.beat" in log for log in logs) == [False, True], logs
    standby = next(log for log in logs if "holds host.beat" not in log)
    assert "standing by" in standby and "Sending due task" not in standby
    wait_for_results(ini, env, recorded)
    # host schedule reads the last run from the shared state, and counts the next from it
    listed = host("schedule", "--json", "--config", str(ini), env=env, cwd=tmp_path)
    [entry] = json.loads(listed.stdout)["entries"]
    assert entry["runs"] >= max(run["beat"]["run"] for run in recorded)
    assert at(entry["last_run"]) >= max(at(run["beat"]["this_run"]) for run in recorded)


@pytest.mark.e2e
def test_killing_the_active_beat_hands_over_and_no_tick_is_doubled(site: Site, tmp_path: Path) -> None:
    install(site)
    ini = write_ini(tmp_path, ini_text(EVERY_SECOND, expires=3))
    env = env_for(site)

    with ExitStack() as stack:
        worker = stack.enter_context(started_worker(ini, env, tmp_path, ["-c", "2"]))
        first = stack.enter_context(running_beat(ini, env, tmp_path))
        first.wait_for_log(ACTIVE)
        second = stack.enter_context(running_beat(ini, env, tmp_path))
        second.wait_for_log(STANDBY)
        wait_until(lambda: len(runs(tmp_path)) >= 3, 120, "three runs", worker.failure_details)
        first.kill()  # SIGKILL: no release; the lock runs out after host.locks.expires
        killed_after = len(runs(tmp_path))
        second.wait_for_log(ACTIVE, timeout=120)
        wait_until(
            lambda: len(runs(tmp_path)) >= killed_after + 3,
            120,
            "three runs from the second beat",
            lambda: f"{second.failure_details()}\n{worker.failure_details()}",
        )
    recorded = runs(tmp_path)
    assert_once_per_tick(recorded, every=1)
    schedulers = [run["beat"]["scheduler"] for run in sorted(recorded, key=lambda r: r["beat"]["run"])]
    # One scheduler, then the other: never back and forth.
    handover = next(i for i, s in enumerate(schedulers) if s != schedulers[0])
    assert set(schedulers[handover:]) == {schedulers[handover]}
    ordered = sorted(recorded, key=lambda r: r["beat"]["run"])
    last_of_first, first_of_second = ordered[handover - 1]["beat"], ordered[handover]["beat"]
    # The entry was due several times while nobody held the lock; it fired once, counting on
    # from the first beat's last run, which the second read from the shared state.
    if first_of_second["run"] == last_of_first["run"] + 1:
        assert first_of_second["previous_run"] == last_of_first["this_run"]
    else:  # killed between recording a run and sending it: that one run is lost, never doubled
        assert first_of_second["run"] == last_of_first["run"] + 2
    wait_for_results(ini, env, recorded)


@pytest.mark.e2e
def test_three_workers_with_beat_give_one_scheduler(site: Site, tmp_path: Path) -> None:
    install(site)
    ini = write_ini(tmp_path, ini_text(EVERY_SECOND))
    env = env_for(site)

    with ExitStack() as stack:
        workers = [
            stack.enter_context(started_worker(ini, env, tmp_path, ["-B", "-c", "1"])) for _ in range(3)
        ]
        wait_until(
            lambda: len(runs(tmp_path)) >= 8,
            180,
            "eight runs",
            lambda: "\n".join(w.failure_details() for w in workers),
            interval=0.5,
        )
        for worker in workers:
            worker.wait_for_log(f"{ACTIVE}|{STANDBY}")
        # Read before any worker stops: a standby takes over from a worker that stops.
        recorded, logs = runs(tmp_path), [w.log for w in workers]
    assert_once_per_tick(recorded, every=1)
    assert len({run["beat"]["scheduler"] for run in recorded}) == 1
    assert sum("holds host.beat" in log for log in logs) == 1, logs
    assert sum("standing by" in log and "holds host.beat" not in log for log in logs) == 2, logs
    wait_for_results(ini, env, recorded)


@pytest.mark.redis
@pytest.mark.e2e
def test_through_redis_a_lock_store_outage_stops_sending_and_never_doubles(
    site: Site, tmp_path: Path
) -> None:
    """RedBeat #208: a connection error must not leave two active schedulers.

    Both beats elect through a Redis of the test's own, which is killed and started
    again. While it is down no run can be recorded, so none is sent; afterwards one
    scheduler sends, counting on from the shared state.
    """
    from services import redis_server

    install(site)
    env = env_for(site)
    with redis_server(tmp_path) as server:
        ini = write_ini(
            tmp_path,
            ini_text(EVERY_SECOND, expires=3, extra=f"host.locks.url = {server.url}\nhost.site_id = r"),
        )
        with ExitStack() as stack:
            worker = stack.enter_context(started_worker(ini, env, tmp_path, ["-c", "2"]))
            first = stack.enter_context(running_beat(ini, env, tmp_path))
            second = stack.enter_context(running_beat(ini, env, tmp_path))
            wait_until(lambda: len(runs(tmp_path)) >= 3, 120, "three runs", worker.failure_details)
            server.kill()
            down_at = datetime.now(timezone.utc)
            for beat in (first, second):
                beat.wait_for_log(r"not sending until the lock store and beat's state answer again")
            before_restart = len(runs(tmp_path))
            up_at = datetime.now(timezone.utc)
            server.start()
            wait_until(
                lambda: len(runs(tmp_path)) >= before_restart + 3,
                120,
                "three runs after Redis came back",
                lambda: f"{first.failure_details()}\n{second.failure_details()}\n{worker.failure_details()}",
            )
    recorded = runs(tmp_path)
    assert_once_per_tick(recorded, every=1)
    sent_while_down = [r for r in recorded if down_at < at(r["beat"]["this_run"]) < up_at]
    assert sent_while_down == []
    wait_for_results(ini, env, recorded)


# -- the schedule's forms, without processes ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30", 30.0),
        ("2.5", 2.5),
        ("90s", 90.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("2d", 172800.0),
        ("*/15 * * * *", ("*/15", "*", "*", "*", "*")),
        ("0 3 * * mon-fri", ("0", "3", "*", "*", "mon-fri")),
        ("@hourly", ("0", "*", "*", "*", "*")),
        ("@daily", ("0", "0", "*", "*", "*")),
        ("@midnight", ("0", "0", "*", "*", "*")),
        ("@weekly", ("0", "0", "*", "*", "0")),
        ("@monthly", ("0", "0", "1", "*", "*")),
        ("@yearly", ("0", "0", "1", "1", "*")),
    ],
)
def test_schedule_forms(text: str, expected: Any) -> None:
    from celery.schedules import crontab

    from core.beat_entries import parse_schedule

    parsed = parse_schedule(text)
    if isinstance(expected, float):
        assert parsed == expected
    else:
        minute, hour, day_of_month, month_of_year, day_of_week = expected
        assert parsed == crontab(
            minute=minute,
            hour=hour,
            day_of_month=day_of_month,
            month_of_year=month_of_year,
            day_of_week=day_of_week,
        )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "'0' is not a time after now"),
        ("", "is empty"),
        ("* * * *", "has 4 fields; a crontab has five"),
        ("* * * * * *", "has 6 fields; a crontab has five"),
        ("61 * * * *", "minute field '61': 61 is outside 0-59"),
        ("*/0 * * * *", "minute field '*/0': the step 0 does not fit in 0-59"),
        ("0 24 * * *", "hour field '24': 24 is outside 0-23"),
        ("0 0 0 * *", "day of month field '0': 0 is outside 1-31"),
        ("0 0 30 2 *", "never runs: no month of '2' has a day '30'"),
        ("x * * * *", "minute field 'x': not a number"),
        ("@reboot", "'@reboot' is not a schedule name"),
        ("every day", "'every day' is not a schedule"),
    ],
)
def test_bad_schedules(text: str, message: str) -> None:
    from core.beat_entries import BadSchedule, parse_schedule

    with pytest.raises(BadSchedule) as raised:
        parse_schedule(text)
    assert message in raised.value.message


def test_celery_beat_schedule_json_takes_the_same_forms(fresh_app: Any, tmp_path: Path) -> None:
    """The issue's first defect: a crontab string in celery.beat_schedule passed doctor, then crashed beat."""
    from celery.schedules import crontab

    from core.config import load_config
    from core.startup import configure_app

    entries = {
        "nightly": {"task": "t.nightly", "schedule": "0 3 * * *"},
        "often": {"task": "t.often", "schedule": "5m", "options": {"queue": "slow"}},
    }
    ini = write_ini(
        tmp_path,
        "[app:main]\n"
        "celery.broker_url = embedded+sqlite:///%(here)s/data/broker.sqlite\n"
        f"celery.beat_schedule = {json.dumps(entries)}\n"
        "host.site_id = s1\n",
    )

    configure_app(fresh_app, load_config(ini, environ={}))

    assert fresh_app.conf.beat_schedule == {
        "nightly": {"task": "t.nightly", "schedule": crontab(minute="0", hour="3")},
        "often": {"task": "t.often", "schedule": 300.0, "options": {"queue": "host:s1:slow"}},
    }
    assert fresh_app.conf.beat_scheduler == "core.beat:HostScheduler"
    assert fresh_app.conf.beat_schedule_filename == str(tmp_path / "data" / "celerybeat-schedule")


def test_a_crontab_string_in_celery_beat_schedule_is_checked(fresh_app: Any, tmp_path: Path) -> None:
    from core.config import load_config
    from core.errors import ConfigError
    from core.startup import configure_app

    ini = write_ini(
        tmp_path,
        """
        [app:main]
        celery.broker_url = embedded+sqlite:///%(here)s/data/broker.sqlite
        celery.beat_schedule = {"nightly": {"task": "t.nightly", "schedule": "0 3 * *"}}
        """,
    )

    with pytest.raises(ConfigError) as raised:
        configure_app(fresh_app, load_config(ini, environ={}))
    assert str(raised.value).splitlines()[0] == (
        f"{ini}, section [app:main], key 'celery.beat_schedule': entry 'nightly': schedule: '0 3 * *' has 4 "
        "fields; a crontab has five: minute hour day-of-month month day-of-week (no seconds, no year)"
    )


def test_a_section_and_celery_beat_schedule_may_not_define_one_name(fresh_app: Any, tmp_path: Path) -> None:
    from core.config import load_config
    from core.errors import ConfigError
    from core.startup import configure_app

    ini = write_ini(
        tmp_path,
        """
        [app:main]
        celery.broker_url = embedded+sqlite:///%(here)s/data/broker.sqlite
        celery.beat_schedule = {"nightly": {"task": "t.nightly", "schedule": 60}}

        [celerybeat:nightly]
        task = t.nightly
        schedule = @daily
        """,
    )

    with pytest.raises(
        ConfigError, match=r"the entry 'nightly' is also defined by the section \[celerybeat:nightly\]"
    ):
        configure_app(fresh_app, load_config(ini, environ={}))


@pytest.mark.parametrize("header", ["celerybeat", "celerybeats:report", "CeleryBeat:report", "celery-beat:x"])
def test_a_misspelt_entry_section_is_an_error(fresh_app: Any, tmp_path: Path, header: str) -> None:
    from core.config import load_config
    from core.errors import ConfigError
    from core.startup import configure_app

    ini = write_ini(
        tmp_path,
        "[app:main]\ncelery.broker_url = embedded+sqlite:///%(here)s/data/broker.sqlite\n\n"
        f"[{header}]\ntask = t.report\nschedule = @daily\n",
    )

    with pytest.raises(ConfigError) as raised:
        configure_app(fresh_app, load_config(ini, environ={}))
    assert str(raised.value).startswith(f"{ini}, section [{header}]: ")
    assert "write [celerybeat:NAME]" in str(raised.value)


def test_other_sections_are_left_alone(fresh_app: Any, tmp_path: Path) -> None:
    from core.config import load_config
    from core.startup import configure_app

    ini = write_ini(
        tmp_path,
        "[app:main]\ncelery.broker_url = embedded+sqlite:///%(here)s/data/broker.sqlite\n\n"
        "[server:main]\nuse = egg:waitress#main\n",
    )

    configure_app(fresh_app, load_config(ini, environ={}))

    assert fresh_app.conf.beat_schedule in (None, {})


def test_a_relative_state_file_is_taken_from_the_ini_folder(fresh_app: Any, tmp_path: Path) -> None:
    from core.config import load_config
    from core.startup import configure_app

    ini = write_ini(
        tmp_path,
        """
        [app:main]
        celery.broker_url = embedded+sqlite:///%(here)s/data/broker.sqlite
        celery.beat_schedule_filename = state/beat
        """,
    )

    configure_app(fresh_app, load_config(ini, environ={}))

    assert fresh_app.conf.beat_schedule_filename == str(tmp_path / "state" / "beat")


def test_a_section_in_a_base_file_is_inherited_and_overridden_key_by_key(
    fresh_app: Any, tmp_path: Path
) -> None:
    from celery.schedules import crontab

    from core.config import load_config
    from core.startup import configure_app

    write_ini(
        tmp_path,
        """
        [app:main]
        celery.broker_url = embedded+sqlite:///%(here)s/data/broker.sqlite

        [celerybeat:report]
        task = reports.nightly
        schedule = @daily
        args = ["pdf"]
        """,
        name="base.ini",
    )
    ini = write_ini(
        tmp_path,
        """
        [app:main]
        use = config:base.ini

        [celerybeat:report]
        schedule = 0 6 * * *
        """,
        name="dev.ini",
    )

    configure_app(fresh_app, load_config(ini, environ={}))

    assert fresh_app.conf.beat_schedule == {
        "report": {"task": "reports.nightly", "schedule": crontab(minute="0", hour="6"), "args": ["pdf"]}
    }
