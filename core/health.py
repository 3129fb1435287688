"""Health checks: everything that needs no running worker, one :class:`Check` per line.

:func:`core.startup.diagnose` runs them in this order (``host doctor``):

1. the configuration file validates (keys, types, URLs, logging);
2. every enabled plugin loads, and its options validate;
3. every task extension loads;
4. no task name is registered twice;
5. every periodic entry names a task that exists;
5a. ``host.admin_emails`` has an ``smtp.server`` to go through;
6. the broker (unless ``host.task_mode = eager`` uses none), and the result
   store where it is Redis or a database, answer within a short timeout;
7. (warnings, not failures) no setting would end the workers on a broker
   outage instead of waiting it out, and the embedded broker's and result
   store's files are readable by their owner only; the embedded broker's
   size and the messages waiting in each of its queues are reported.

Problems of kinds 1-5a are configuration problems (exit status 2); a service
that does not answer is exit status 1. Suitable as a health check for
supervisor or a container.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.config import APP_SECTION
from core.errors import HostError

if TYPE_CHECKING:
    from core.app import HostCelery
    from core.config import HostConfig
    from core.discovery import Discovery
    from core.plugin_manager import HostPluginManager


@dataclass
class Check:
    """One line of the report."""

    what: str
    ok: bool
    detail: str
    fix: str | None = None
    #: A service that does not answer (exit 1), not a configuration problem (exit 2).
    service: bool = False
    #: Valid, but likely not what was meant: shown with its fix, exit status unchanged.
    warning: bool = False

    def line(self) -> str:
        status = "warn" if self.warning else "ok  " if self.ok else "FAIL"
        text = f"{status} {self.what}: {self.detail}"
        return text if self.ok and not self.warning or not self.fix else f"{text} -> {self.fix}"


def from_error(what: str, error: HostError, service: bool = False) -> Check:
    """A failed check from an error: its message on one line, its hint as the fix."""
    return Check(what, False, " ".join(error.message.split()), error.hint, service=service)


def exit_status(checks: list[Check]) -> int:
    failed = [c for c in checks if not c.ok]
    if not failed:
        return 0
    return 1 if all(c.service for c in failed) else 2


def plugin_checks(pm: HostPluginManager, reserved: set[str]) -> Iterator[Check]:
    """Every enabled plugin loaded; the commands they add take none of the ``reserved`` names."""
    pm.commands(reserved)
    for plugin_error in pm.errors:
        yield from_error(f"plugin {plugin_error.plugin}", plugin_error)
    if not pm.errors:
        names = ", ".join(p.label for p in pm.active) or "none enabled"
        yield Check("plugins", True, names)


def extension_checks(found: Discovery) -> Iterator[Check]:
    """Every task extension loaded, and no task name is registered twice.

    An extension left out because one of its task names was taken is a broken
    extension too: none of its tasks would run, and no worker starts.
    """
    for error in found.errors:
        distribution = getattr(error, "distribution", None)
        yield from_error(f"extension {distribution}" if distribution else "extensions", error)
    if not found.errors:
        yield Check(
            "extensions", True, f"{_count(found.task_names, 'task')} from {_count(found.active, 'source')}"
        )
    contested = contested_tasks(found)
    for name, (owner, dropped) in contested.items():
        yield Check(
            "task names",
            False,
            f"{name!r} is defined by {owner} and by {dropped}; {dropped} was left out",
            f"rename one of the tasks, or disable one of the extensions: host.celery_task.disabled = "
            f"{dropped.partition('==')[0]}",
        )
    if not contested:
        yield Check("task names", True, "no name is registered twice")


def contested_tasks(found: Discovery) -> dict[str, tuple[str, str]]:
    """Task names two extensions define: name -> (the extension whose task runs, the one left out)."""
    owners = {row["task"]: f"{row['extension']}=={row['version']}" for row in found.task_rows()}
    contested = {}
    for ext in found.extensions:
        name = ext.error.duplicate_task if ext.error is not None else None
        if name:
            contested[name] = (owners.get(name, "another extension"), ext.label)
    return contested


def service_checks(app: HostCelery, config: HostConfig, timeout: float) -> Iterator[Check]:
    """The broker, and the result store where it is Redis or a database, answer.

    In eager mode (``host.task_mode = eager``) no broker is used: it is not checked.
    """
    if app.conf.task_always_eager:
        from core.masking import mask_url

        url = mask_url(str(app.conf.broker_url))
        yield Check("broker", True, f"{url} not used: host.task_mode = eager runs each task where it is sent")
    else:
        yield _broker_check(app, config, timeout)
    backend = _backend_check(app, config, timeout)
    if backend is not None:
        yield backend


def beat_checks(
    app: HostCelery,
    config: HostConfig,
    pm: HostPluginManager,
    tasks: set[str],
    check_election: Callable[[Any], None] | None = None,
    contested: Mapping[str, tuple[str, str]] | None = None,
) -> Iterator[Check]:
    """Every periodic entry names a task that exists (Celery's own tasks count).

    The entries' schedules and keys were checked when the app was configured;
    an unknown task is a configuration problem too (exit 2), naming the ini
    section or the plugin the entry came from. So is an entry whose task two
    extensions define (``contested``, from :func:`contested_tasks`): it would
    run the one that was not left out, whichever its author meant.

    :param check_election: raises when beat could not elect its sender here
        (:func:`core.beat.check_election`): a warning, since a site may send
        periodic tasks without running beat on this machine.
    """
    from core.beat_entries import entry_sources, unknown_task_errors

    schedule = app.conf.beat_schedule or {}
    sources = entry_sources(schedule, config, pm, app.host_changed_by)
    unknown = unknown_task_errors(schedule, tasks, sources, pm)
    for name, error in unknown:
        yield from_error(f"beat entry {name}", error)
    ambiguous = [
        (name, entry["task"], *(contested or {})[entry["task"]])
        for name, entry in schedule.items()
        if isinstance(entry, Mapping) and entry.get("task") in (contested or {})
    ]
    for name, task, owner, dropped in ambiguous:
        yield Check(
            f"beat entry {name}",
            False,
            f"its task {task} is defined by {owner} and by {dropped}, which was left out: "
            f"the entry ({sources[name].label if name in sources else 'its source'}) would run {owner}'s",
            "rename one of the tasks, and point the entry at the one it means",
        )
    if schedule and not unknown and not ambiguous:
        yield Check("beat schedule", True, f"{_count(schedule, 'entry', 'entries')}, every task exists")
    if schedule and check_election is not None:
        try:
            check_election(app)
        except HostError as e:
            # A site may send periodic tasks without running beat here; beat itself refuses to start.
            warning = from_error("beat election", e)
            warning.ok, warning.warning = True, True
            warning.detail += ": host celerybeat and host celeryd -B will not start"
            yield warning


def notification_checks(config: HostConfig) -> Iterator[Check]:
    """Failure emails (``host.admin_emails``) have an SMTP server to go through."""
    from core import notify

    problems = notify.problems(config)
    for problem in problems:
        yield Check(
            "failure emails",
            False,
            problem,
            fix=f"set smtp.server (and smtp.port, smtp.user...) in {config.path}, or HOST_SMTP_SERVER; "
            "or leave host.admin_emails empty",
        )
    if config.host.get("admin_emails") and not problems:
        yield Check("failure emails", True, notify.summary(config))


def outage_checks(app: HostCelery) -> Iterator[Check]:
    """Settings with which a broker outage would end the workers instead of being waited out."""
    conf = app.conf
    fix = "leave it empty: workers then retry for as long as it takes"
    limit = conf.broker_connection_max_retries
    if limit is not None:
        if limit == 0:
            effect = "workers stop at the first failed attempt: a broker restart ends every worker"
        else:
            effect = (
                f"workers stop after {limit} failed attempts to reach the broker, about "
                f"{reconnect_seconds(conf, limit):.0f} s: a longer outage ends every worker"
            )
        yield Check(
            "broker outage",
            True,
            f"celery.broker_connection_max_retries = {limit}: {effect}",
            fix,
            warning=True,
        )
    for key, effect in (
        ("broker_connection_retry", "a worker that loses the broker stops instead of reconnecting"),
        ("broker_connection_retry_on_startup", "a worker started while the broker is down stops at once"),
    ):
        if conf.get(key) is False:
            yield Check(
                "broker outage", True, f"celery.{key} = false: {effect}", "remove the setting", warning=True
            )


def reconnect_seconds(conf: Any, attempts: int) -> float:
    """How long a worker keeps trying the broker over ``attempts`` attempts (the waits between them)."""
    from core.consumer import RECONNECT_INTERVALS

    options = {**RECONNECT_INTERVALS, **(conf.broker_transport_options or {})}
    start, step, longest = (float(options[k]) for k in ("interval_start", "interval_step", "interval_max"))
    return sum(min(start + i * step, longest) for i in range(attempts))


def _broker_check(app: HostCelery, config: HostConfig, timeout: float) -> Check:
    from core.masking import mask_url

    url = mask_url(str(app.conf.broker_url))

    def probe() -> None:
        with app.connection_for_write(connect_timeout=timeout) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)

    return _service("broker", url, probe, _fix(config, "broker_url", "start the broker"))


def _backend_check(app: HostCelery, config: HostConfig, timeout: float) -> Check | None:
    from core.masking import mask_url

    url = str(app.conf.result_backend or "")
    scheme = url.partition("://")[0].partition("+")[0]
    if scheme in ("redis", "rediss"):

        def probe() -> None:
            import redis

            client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
            try:
                client.ping()
            finally:
                client.close()

    elif scheme in ("db", "database", "embedded"):

        def probe() -> None:
            app.backend.get_task_meta("host-doctor-probe")

    else:
        return None
    return _service("result store", mask_url(url), probe, _fix(config, "result_backend", "start it"))


def embedded_store_checks(app: HostCelery) -> Iterator[Check]:
    """The embedded broker's and result store's files: their size, what waits, and who may read them.

    A warning when others than the owner may read or write them: whoever can
    read them sees every task's arguments and results; whoever can write to
    them can make a worker run a task.
    """
    from core.embedded import SCHEME, loose_permissions, sqlite_path
    from core.embedded_store import read_report

    for what, url in (("broker", app.conf.broker_url), ("result store", app.conf.result_backend)):
        url = str(url or "")
        if not url.startswith(f"{SCHEME}+"):
            continue
        path = sqlite_path(url.partition("+")[2])
        loose = loose_permissions(path)
        if loose:
            detail = f"{'; '.join(loose)}: others on this machine could read or change its tasks"
            fix = f"chmod 700 {path.parent} && chmod 600 {path}*"
            yield Check(f"embedded {what}", True, detail, fix, warning=True)
        if what == "broker":
            yield _broker_store_check(path, read_report(path))
        elif path.exists():
            size = sum(p.stat().st_size for p in path.parent.glob(f"{path.name}*") if p.is_file())
            yield Check(f"embedded {what}", True, f"{path}, {_size(size)}")


def _broker_store_check(path: Any, report: Any) -> Check:
    if report is None:
        return Check(
            "embedded broker", True, f"{path}: not created yet (the first worker or send creates it)"
        )
    queues = ", ".join(
        f"{name} {waiting}"
        + (f" (+{held} held)" if held else "")
        + (f" [{consumers} consuming]" if consumers else "")
        for name, (waiting, held, consumers) in report.queues.items()
    )
    detail = f"{path}, {_size(report.size)}; waiting per queue: {queues or 'none'}"
    if report.undeliverable:
        return Check(
            "embedded broker",
            True,
            f"{detail}; {report.undeliverable} undeliverable message(s) kept in host_message_undeliverable",
            f"look at them with: sqlite3 {path} 'SELECT id, queue, error FROM host_message_undeliverable'",
            warning=True,
        )
    return Check("embedded broker", True, detail)


def _size(size: float) -> str:
    units = ["bytes", "KiB", "MiB", "GiB"]
    while size >= 1024 and len(units) > 1:
        size /= 1024
        units.pop(0)
    return f"{size:.0f} bytes" if units[0] == "bytes" else f"{size:.1f} {units[0]}"


def _service(what: str, url: str, probe: Callable[[], Any], fix: str) -> Check:
    started = time.monotonic()
    try:
        probe()
    except Exception as e:
        cause = " ".join(f"{type(e).__name__}: {e}".split())
        return Check(what, False, f"{url} does not answer ({cause})", fix, service=True)
    return Check(what, True, f"{url} answers ({(time.monotonic() - started) * 1000:.0f} ms)")


def _fix(config: HostConfig, key: str, action: str) -> str:
    name = f"celery.{key}"
    source = config.sources.get(name, "default")
    where = (
        source[len("env ") :]
        if source.startswith("env ")
        else f"{name} in {config.origin(APP_SECTION, name)}"
    )
    return f"{action}, or correct {where}"


def _count(items: Any, one: str, many: str | None = None) -> str:
    n = len(items)
    return f"{n} {one if n == 1 else many or one + 's'}"
