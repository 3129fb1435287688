"""Email the admins when a task fails for good: ``host.admin_emails``, ``smtp.*``.

Seed 001's ``NotifyAdminTaskMixin``, for every task of every extension, with
nothing to add to the task. When a task fails for good -- it raised and has
no retry left, or its pool process was lost, or it hit its hard time limit --
each address of ``host.admin_emails`` gets one email: the task's name, id and
arguments (secrets masked, :mod:`core.masking`), the worker's node name, the
exception and its traceback. A retry that will still be attempted sends
nothing: Celery's ``task_failure`` signal, which this listens to, fires only
once a task has given up (``Task.retry`` raises the task's exception when
``max_retries`` is exceeded).

**Never in the way of the worker.** The ``task_failure`` signal fires in the
pool process that ran the task for an exception it raised, and in the
worker's main process for a lost pool process (``WorkerLostError``) or a hard
time limit. The receiver only builds the message's text (masking included,
no I/O) and puts it on a queue; one daemon thread per process takes it from
there: the throttle, then the SMTP conversation, with a 10 s timeout on every
socket operation. A short timeout alone would still stall a pool process for
that long per failure (and, for the main process, every pool process it
feeds); with the thread, an SMTP server that hangs or refuses never holds up the
next task, nor the main process's event loop, and a sending error can never
replace the task's own failure (its result is stored before the signal
fires). A failed email is logged once, at ERROR, with the reason, and
dropped. The queue is drained when the process stops (``worker_process_shutdown``
in a pool process, ``worker_shutdown`` in the main process), for at most
:data:`DRAIN_SECONDS`; a process killed outright loses what it had not sent.

**Throttled per task name**, across the worker's processes and all workers
sharing the state: at most one email per task name per
``host.admin_emails_interval`` seconds. The first failure of a window is
mailed at once; the failures after it, until the window ends, are counted.
When the window ends, one of the processes that counted them (the first to
claim the count) sends one more email, "... and N more failures of NAME since
HH:MM", with the details of the last failure it saw; if they are all gone by
then, the next failure of the task carries the count instead. The lock store
(:mod:`core.locks`) could open a window but keeps no count, so the state is
one row per task name of its own:

* in ``notify.sqlite``, a private SQLite file beside the embedded broker's
  store (or under the ini's ``data/`` folder when the broker is not
  embedded): shared by every process on the machine, so several workers on
  one machine, each with its pool, send one email per window;
* in Redis when ``host.locks.url`` is a ``redis://`` URL (the lock store's):
  shared by every machine, with ``SET NX PX`` for the window and ``INCR`` for
  the count.

With the SQLite file, workers on *different* machines each send their own
email per window. If the state cannot be read or written, the failure is
mailed unthrottled (with a warning): an alert lost to a broken throttle is
worse than a second email.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import smtplib
import socket
import sqlite3
import ssl
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from celery import signals

from core.masking import mask, mask_lines, mask_text

if TYPE_CHECKING:
    from celery import Celery

    from core.config import HostConfig

logger = logging.getLogger("host.notify")

#: Every socket operation of the SMTP conversation gives up after this many seconds.
SMTP_TIMEOUT = 10.0
#: How long a stopping process waits for the emails it still has to send.
DRAIN_SECONDS = 2 * SMTP_TIMEOUT
#: The throttle's state file, beside the embedded broker's store.
STATE_FILE = "notify.sqlite"
#: The traceback is cut to its last this many characters.
MAX_TRACEBACK = 20_000


# -- what an email says ---------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """One task that failed for good, as the email shows it: already masked."""

    task: str
    task_id: str
    args: str
    kwargs: str
    hostname: str
    exception: str
    traceback: str
    at: float


def describe(
    task: str,
    task_id: str | None,
    args: Any,
    kwargs: Any,
    exception: BaseException | None,
    traceback: str,
    hostname: str,
) -> Failure:
    """The failure as the email shows it, every secret masked; cheap enough for the signal."""
    message = mask_text(" ".join(str(exception).split())) if exception is not None else ""
    kind = type(exception).__name__ if exception is not None else "unknown error"
    if exception is not None and message.startswith(f"{kind}(") and exception.args:
        # Celery's TimeLimitExceeded prints as its repr: TimeLimitExceeded(2,)
        message = mask_text(", ".join(str(arg) for arg in exception.args))
    return Failure(
        task=task,
        task_id=task_id or "?",
        args=_json(mask(list(args or []))),
        kwargs=_json(mask(dict(kwargs or {}))),
        hostname=hostname,
        exception=f"{kind}: {message}" if message else kind,
        traceback=mask_lines(traceback or "")[-MAX_TRACEBACK:],
        at=time.time(),
    )


def _json(value: Any) -> str:
    try:
        return json.dumps(value, default=repr, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def clock(at: float) -> str:
    """``14:05 UTC``: the worker's local time, with its zone."""
    return time.strftime("%H:%M %Z", time.localtime(at))


def build_message(
    failure: Failure,
    *,
    to: Sequence[str],
    sender: str,
    more: int = 0,
    since: float | None = None,
    summary: bool = False,
) -> EmailMessage:
    """The email: the failure in full, and the count of the others it stands for.

    :param more: failures of the task not mailed since the last email.
    :param since: when that email went out.
    :param summary: the email is the count of a window's failures (``failure``
        is the last of them), not a failure of its own.
    """
    message = EmailMessage()
    subject = f"[host] task {failure.task} failed: {failure.exception}"
    message["Subject"] = " ".join(subject.split())[:250]
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Date"] = formatdate(failure.at, localtime=True)
    message["Message-ID"] = make_msgid(domain=_domain(sender))
    message["X-Host-Task"] = failure.task
    message["X-Host-Task-Id"] = failure.task_id
    #: How many failures this email stands for.
    message["X-Host-Failures"] = str(more if summary else more + 1)
    lines = [f"Task {failure.task} failed for good (no retry left)."]
    if more:
        plural = "s" if more != 1 else ""
        lines += [
            "",
            f"... and {more} more failure{plural} of {failure.task} since {clock(since or failure.at)}"
            + (" (the last of them below)" if summary else ", not mailed one by one")
            + ": at most one email per task name is sent per host.admin_emails_interval.",
        ]
    lines += [
        "",
        f"task:      {failure.task}",
        f"id:        {failure.task_id}",
        f"args:      {failure.args}",
        f"kwargs:    {failure.kwargs}",
        f"worker:    {failure.hostname}",
        f"failed at: {formatdate(failure.at, localtime=True)}",
        f"exception: {failure.exception}",
        "",
        failure.traceback.rstrip() or "(no traceback)",
        "",
    ]
    message.set_content("\n".join(lines))
    return message


def _domain(address: str) -> str:
    return address.rpartition("@")[2] or socket.getfqdn()


def mail_from(smtp: Mapping[str, Any]) -> str:
    return smtp.get("mail_from") or f"host@{socket.getfqdn()}"


def send(smtp: Mapping[str, Any], message: EmailMessage, to: Sequence[str]) -> dict[str, Any]:
    """One SMTP conversation; returns the recipients the server refused (empty: all took it)."""
    with smtplib.SMTP(smtp["server"], smtp["port"], timeout=SMTP_TIMEOUT) as client:
        if smtp.get("starttls"):
            client.starttls(context=ssl.create_default_context())
        if smtp.get("user"):
            client.login(smtp["user"], smtp.get("password") or "")
        return dict(client.send_message(message, from_addr=mail_from(smtp), to_addrs=list(to)))


def reason(error: BaseException) -> str:
    """An error on one line, for the log: passwords masked."""
    return mask_text(f"{type(error).__name__}: {' '.join(str(error).split())}")


# -- the throttle -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What to do with one failure: mail it now, with the count of those not mailed before it."""

    send: bool
    #: Failures of the task not mailed since the last email (they go with this one).
    more: int = 0
    #: When the last email of the task was sent (the window those failures fell in).
    since: float | None = None
    #: When not sending: the window's end, when the count should go out.
    due: float | None = None
    #: The email is a window's count (from :meth:`Throttle.claim`), not one failure.
    summary: bool = False


class Throttle(Protocol):
    def record(self, task: str, now: float, interval: float) -> Decision: ...

    def claim(self, task: str, now: float, interval: float) -> Decision: ...


class SqliteThrottle:
    """One row per task name in a private SQLite file; each decision is one write transaction."""

    def __init__(self, path: Path) -> None:
        from core.embedded_store import connect

        self.path = path
        self.db = connect(path)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS host_notify_throttle ("
            " task TEXT PRIMARY KEY, sent_at REAL NOT NULL, missed INTEGER NOT NULL DEFAULT 0)"
        )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        from core.embedded_store import transaction

        with transaction(self.db) as db:
            yield db

    def record(self, task: str, now: float, interval: float) -> Decision:
        with self._transaction() as db:
            row = db.execute(
                "SELECT sent_at, missed FROM host_notify_throttle WHERE task = ?", (task,)
            ).fetchone()
            if row is None or now - row[0] >= interval:
                db.execute(
                    "INSERT OR REPLACE INTO host_notify_throttle (task, sent_at, missed) VALUES (?, ?, 0)",
                    (task, now),
                )
                return Decision(True, row[1] if row else 0, row[0] if row else None)
            db.execute("UPDATE host_notify_throttle SET missed = missed + 1 WHERE task = ?", (task,))
            return Decision(False, due=row[0] + interval)

    def claim(self, task: str, now: float, interval: float) -> Decision:
        """At a window's end: take the count of its failures not mailed, if nobody has yet."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT sent_at, missed FROM host_notify_throttle WHERE task = ?", (task,)
            ).fetchone()
            if row is None or row[1] == 0 or now - row[0] < interval:
                return Decision(False)
            db.execute("UPDATE host_notify_throttle SET sent_at = ?, missed = 0 WHERE task = ?", (now, task))
            # The count goes out as its own email, which opens the next window.
            return Decision(True, row[1], row[0], summary=True)


class RedisThrottle:
    """Three keys per task name: ``…:sent`` (``SET NX PX``: the window), ``…:missed`` (``INCR``: the
    failures not mailed in it) and ``…:last`` (when the last email went out).

    ``GETDEL`` hands a count to one process only, so no failure is counted
    twice; at a window's edge, a new failure and the window's count may each
    be mailed, two emails in one window at worst.
    """

    def __init__(self, url: str, prefix: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=SMTP_TIMEOUT, socket_connect_timeout=5)
        self.prefix = prefix

    def _keys(self, task: str) -> tuple[str, str, str]:
        base = f"{self.prefix}{task}"
        return f"{base}:sent", f"{base}:missed", f"{base}:last"

    def _open(self, task: str, now: float, interval: float) -> bool:
        """Open a window, if none is open: this process sends the email."""
        return bool(self.client.set(self._keys(task)[0], repr(now), nx=True, px=max(1, int(interval * 1000))))

    def _take(self, task: str, now: float, interval: float) -> tuple[int, float | None]:
        """The count of failures not mailed, and when the last email went out; both reset."""
        _, missed, last = self._keys(task)
        count = int(self.client.getdel(missed) or 0)
        since = self.client.set(last, repr(now), get=True, px=max(1, int(interval * 10_000)))
        return count, float(since) if since else None

    def record(self, task: str, now: float, interval: float) -> Decision:
        sent, missed, _ = self._keys(task)
        if self._open(task, now, interval):
            count, since = self._take(task, now, interval)
            return Decision(True, count, since)
        started = self.client.get(sent)
        self.client.incr(missed)
        self.client.pexpire(missed, max(1, int(interval * 10_000)))  # a count nobody takes goes in time
        return Decision(False, due=(float(started) if started else now) + interval)

    def claim(self, task: str, now: float, interval: float) -> Decision:
        sent, missed, _ = self._keys(task)
        if not self.client.exists(missed) or not self._open(task, now, interval):
            return Decision(False)
        count, since = self._take(task, now, interval)
        if count:
            return Decision(True, count, since, summary=True)
        self.client.delete(sent)  # nothing to report after all: no window for the next failure to wait out
        return Decision(False)


class NoThrottle:
    """Every failure mailed: ``host.admin_emails_interval = 0``, or a state that cannot be kept."""

    def record(self, task: str, now: float, interval: float) -> Decision:
        return Decision(True)

    def claim(self, task: str, now: float, interval: float) -> Decision:
        return Decision(False)


def state_path(config: HostConfig) -> Path:
    """Beside the embedded broker's store, else under the ini's ``data/`` folder."""
    url = str(config.celery.get("broker_url") or "")
    if url.startswith("embedded+"):
        with contextlib.suppress(ValueError):
            from core.embedded import sqlite_path

            return sqlite_path(url.partition("+")[2]).parent / STATE_FILE
    return config.path.parent / "data" / STATE_FILE


def make_throttle(config: HostConfig) -> Throttle:
    if not config.host.get("admin_emails_interval"):
        return NoThrottle()
    locks_url = str(config.host.get("locks.url") or "")
    if locks_url.startswith(("redis://", "rediss://", "unix://")):
        site = config.host.get("site_id") or ""
        return RedisThrottle(locks_url, f"host:{site}:notify:" if site else "host:notify:")
    return SqliteThrottle(state_path(config))


# -- the sender thread ------------------------------------------------------------------------

_STOP = object()


class Mailer:
    """One per process: a queue of failures and the daemon thread that throttles and mails them."""

    def __init__(self, config: HostConfig) -> None:
        self.to = list(config.host["admin_emails"])
        self.interval = float(config.host.get("admin_emails_interval") or 0)
        self.smtp = dict(config.smtp)
        self.config = config
        self.pid = os.getpid()
        self.queue: queue.Queue[Any] = queue.Queue()
        self._throttle: Throttle | None = None
        #: Task name -> (when its window ends, the last failure counted in it).
        self._due: dict[str, tuple[float, Failure]] = {}
        self._warned: set[str] = set()
        self.thread = threading.Thread(target=self._run, name="host-notify", daemon=True)
        self.thread.start()

    def put(self, failure: Failure) -> None:
        self.queue.put(failure)

    def close(self, timeout: float = DRAIN_SECONDS) -> None:
        """Send what is queued (for at most ``timeout`` seconds), then stop the thread."""
        if self.thread.is_alive():
            self.queue.put(_STOP)
            self.thread.join(timeout)
            if self.thread.is_alive():
                logger.error(
                    "gave up waiting %g s for the failure emails still to send (%d queued)",
                    timeout,
                    self.queue.qsize(),
                )

    def _run(self) -> None:
        while True:
            wait = None
            if self._due:
                wait = max(0.0, min(due for due, _ in self._due.values()) - time.time())
            try:
                item = self.queue.get(timeout=wait)
            except queue.Empty:
                item = None
            if item is _STOP:
                return
            try:
                if item is not None:
                    self._handle(item)
                self._flush_due()
            except Exception as e:  # never let the thread die: the next failure must still be mailed
                logger.error("the failure notifier raised %s", reason(e), exc_info=True)

    def throttle(self) -> Throttle:
        if self._throttle is None:
            try:
                self._throttle = make_throttle(self.config)
            except Exception as e:
                self._warn_once(
                    "state", f"cannot keep the throttle's state ({reason(e)}): every failure is mailed"
                )
                self._throttle = NoThrottle()
        return self._throttle

    def _decide(self, task: str, now: float, claim: bool = False) -> Decision:
        try:
            throttle = self.throttle()
            return (
                throttle.claim(task, now, self.interval)
                if claim
                else throttle.record(task, now, self.interval)
            )
        except Exception as e:
            self._warn_once("decide", f"the throttle's state failed ({reason(e)}): mailing without it")
            return Decision(not claim)

    def _handle(self, failure: Failure) -> None:
        decision = self._decide(failure.task, time.time())
        if decision.send:
            self._due.pop(failure.task, None)
            self._mail(failure, decision)
        else:
            self._due[failure.task] = (decision.due or time.time() + self.interval, failure)

    def _flush_due(self) -> None:
        now = time.time()
        for task, (due, failure) in list(self._due.items()):
            if due > now:
                continue
            del self._due[task]
            decision = self._decide(task, now, claim=True)
            if decision.send:
                self._mail(failure, decision)

    def _mail(self, failure: Failure, decision: Decision) -> None:
        what = f"the failure of task {failure.task}[{failure.task_id}]"
        if not self.smtp.get("server"):
            self._warn_once(
                "server", f"{what} is not mailed: host.admin_emails is set but smtp.server is not"
            )
            return
        message = build_message(
            failure,
            to=self.to,
            sender=mail_from(self.smtp),
            more=decision.more,
            since=decision.since,
            summary=decision.summary,
        )
        try:
            refused = send(self.smtp, message, self.to)
        except Exception as e:
            logger.error(
                "could not mail %s to %s: %s (SMTP server %s:%s)",
                what,
                ", ".join(self.to),
                reason(e),
                self.smtp["server"],
                self.smtp["port"],
            )
            return
        if refused:
            logger.error(
                "could not mail %s to %s: the SMTP server refused %s",
                what,
                ", ".join(refused),
                "; ".join(f"{k}: {mask_text(str(v))}" for k, v in refused.items()),
            )
        logger.info(
            "mailed %s to %s%s",
            what,
            ", ".join(a for a in self.to if a not in refused),
            f" (and {decision.more} more failures)" if decision.more else "",
        )

    def _warn_once(self, kind: str, text: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            logger.warning("%s", text)


# -- one mailer per process, the signals ---------------------------------------------------------

_lock = threading.Lock()
#: This process's mailers, one per configuration (a worker has one).
_mailers: dict[int, Mailer] = {}
#: Mailers a forked process inherited: kept, never used, never closed (their SQLite handle is the parent's).
_inherited: list[Mailer] = []
#: The worker's node name, from ``celeryd_after_setup`` (inherited by the pool processes).
_node: str | None = None


def mailer(config: HostConfig) -> Mailer:
    """This process's mailer for ``config``, started on first use (and again in a forked child)."""
    with _lock:
        current = _mailers.get(id(config))
        if current is not None and current.pid != os.getpid():
            _inherited.append(current)
            current = None
        elif current is not None and current.config is not config:  # an earlier config's id, reused
            current.queue.put(_STOP)  # it sends what it has, then stops
            current = None
        if current is None:
            current = _mailers[id(config)] = Mailer(config)
        return current


def close(timeout: float = DRAIN_SECONDS) -> None:
    """Send what this process still has queued (for at most ``timeout`` seconds), then stop."""
    with _lock:
        mine = [m for m in _mailers.values() if m.pid == os.getpid()]
        _inherited.extend(m for m in _mailers.values() if m.pid != os.getpid())
        _mailers.clear()
    deadline = time.monotonic() + timeout
    for current in mine:
        current.close(max(0.0, deadline - time.monotonic()))


def connect(app: Celery) -> None:
    """Mail the failures of ``app``'s tasks when its configuration names admins; else nothing.

    Called by :func:`core.signals.connect` whenever an app is configured;
    calling it again replaces the earlier connections.
    """
    uid = f"host:{id(app)}:notify"
    for signal in (signals.task_failure, signals.worker_process_shutdown, signals.worker_shutdown):
        signal.disconnect(dispatch_uid=uid)
    signals.celeryd_after_setup.disconnect(dispatch_uid=uid)
    config: HostConfig | None = getattr(app, "host_config", None)
    if config is None or not config.host.get("admin_emails"):
        return

    def on_failure(
        sender: Any = None,
        task_id: str | None = None,
        exception: BaseException | None = None,
        args: Any = None,
        kwargs: Any = None,
        einfo: Any = None,
        **_: Any,
    ) -> None:
        if getattr(sender, "app", None) is not app:
            return
        try:
            request = getattr(sender, "request", None)
            hostname = getattr(request, "hostname", None) or _node or socket.gethostname()
            traceback = str(einfo.traceback) if einfo is not None else ""
            failure = describe(sender.name, task_id, args, kwargs, exception, traceback, hostname)
            mailer(config).put(failure)
        except Exception as e:  # the task's own failure is already stored; this must not hide it
            logger.error(
                "could not queue the failure email of task %s[%s]: %s", sender.name, task_id, reason(e)
            )

    def on_stop(**_: Any) -> None:
        close()

    def on_setup(sender: Any = None, **_: Any) -> None:
        global _node
        _node = str(sender) if sender else None
        if not config.smtp.get("server"):
            logger.warning(
                "host.admin_emails is set but smtp.server is not: no failure email will be sent "
                "(host doctor says so too)"
            )

    signals.task_failure.connect(on_failure, weak=False, dispatch_uid=uid)
    signals.worker_process_shutdown.connect(on_stop, weak=False, dispatch_uid=uid)
    signals.worker_shutdown.connect(on_stop, weak=False, dispatch_uid=uid)
    signals.celeryd_after_setup.connect(on_setup, weak=False, dispatch_uid=uid)


def problems(config: HostConfig) -> list[str]:
    """What keeps failure emails from going out, for ``host doctor`` (empty: nothing)."""
    if config.host.get("admin_emails") and not config.smtp.get("server"):
        return ["host.admin_emails is set but smtp.server is not: no failure email can be sent"]
    return []


def summary(config: HostConfig) -> str:
    """``host doctor``'s line when nothing is wrong."""
    to = config.host.get("admin_emails") or []
    if not to:
        return "off (host.admin_emails is empty)"
    smtp = config.smtp
    interval = config.host.get("admin_emails_interval") or 0
    throttle = f"at most one per task name every {interval:g} s" if interval else "every failure"
    return f"to {', '.join(to)} through {smtp['server']}:{smtp['port']}, {throttle}"
