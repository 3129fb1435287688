"""Is the broker there? A check cheap enough for a web request, and the bookkeeping of an outage.

:func:`check_broker` answers without any worker (Celery's ``control.ping``
needs an idle one and waits its whole timeout when there is none: arches#7746,
#11155). It asks only the broker, and only whether it can be reached:

* ``amqp://``, ``redis://`` and ``sentinel://`` URLs: a TCP connection to the
  URL's host and port, opened and closed at once. Every fail-over URL
  (``url1;url2``) is tried at the same time, each in a thread of its own;
  the first to accept answers "up", so the check lasts at most the timeout
  however many there are, and a name that takes long to resolve cannot
  stretch it either. (One URL with an IP address needs no thread.) A kombu
  connection would log in as well, and notice wrong credentials, but it costs
  an AMQP handshake (several round trips), and kombu tries fail-over URLs one
  after the other, each with the whole timeout. The question here is "can a
  message be handed over now?"; a broker that refuses the login is a
  configuration error, which the send itself reports.
* the embedded broker (``embedded+sqlite://``): its store's folder exists and
  this user may create files in it (or it can be created): then a send will
  work. No file is opened.
* any other transport: a kombu connection, bounded by the same timeout.

The answer is kept for ``host.broker_check.cache_seconds`` (5 s by default),
per process: a web request asking on every page pays for one check every few
seconds, and otherwise a dictionary look-up. How long it takes is measured in
docs/running-tasks.md.

With ``host.fallback = eager``, :mod:`core.sending` asks it before each send,
and reports here what it finds (:func:`fallback_check`, :func:`send_failed`):
an outage is logged once, as a WARNING, and its end once, as INFO.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kombu.utils.url import url_to_parts

from core.errors import ConfigError, UsageError
from core.masking import mask_text, mask_url

logger = logging.getLogger("host.availability")

#: The port of a URL that names none, by scheme (kombu's and redis-py's defaults).
DEFAULT_PORTS = {
    "amqp": 5672,
    "pyamqp": 5672,
    "librabbitmq": 5672,
    "amqps": 5671,
    "redis": 6379,
    "rediss": 6379,
    "sentinel": 26379,
}
#: Celery's broker when ``celery.broker_url`` is not set.
CELERY_DEFAULT_BROKER = "amqp://guest:guest@localhost:5672//"


@dataclass(frozen=True)
class BrokerCheck:
    """What the check found. True when the broker is up, so ``if broker_available():`` reads well."""

    #: The broker can be reached.
    up: bool
    #: The broker URL (every fail-over URL, separated by ``;``), password masked.
    url: str
    #: Which address answered, or what each one did.
    detail: str
    #: How long the check took, in seconds (of the check that was cached, for a cached answer).
    seconds: float
    #: The longest the check could take.
    timeout: float
    #: The answer of an earlier check, less than ``host.broker_check.cache_seconds`` old.
    cached: bool = False

    def __bool__(self) -> bool:
        return self.up

    def line(self) -> str:
        """One line for people: ``broker URL is up: what answered (0.3 ms)``."""
        state = "up" if self.up else "down"
        return f"broker {self.url} is {state}: {self.detail} ({milliseconds(self.seconds)})"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def milliseconds(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"


# -- the check ----------------------------------------------------------------------


def check_broker(app: Any, timeout: float | None = None, max_age: float | None = None) -> BrokerCheck:
    """Whether the broker ``app`` sends to can be reached now.

    :param timeout: the longest the check may take, in seconds; default
        ``host.broker_check.timeout`` (1 s).
    :param max_age: an answer at most this old is returned without checking
        again; default ``host.broker_check.cache_seconds`` (5 s); 0: check now.
    """
    timeout = _seconds(app, "broker_check.timeout", timeout, positive=True)
    max_age = _seconds(app, "broker_check.cache_seconds", max_age, positive=False)
    urls = broker_urls(app)
    key = tuple(urls)
    with _lock:  # one check at a time per process: requests arriving meanwhile share its answer
        kept = _answers.get(key)
        if kept is not None and time.monotonic() - kept[0] < max_age:
            return dataclasses.replace(kept[1], cached=True)
        started = time.monotonic()
        up, detail = probe(urls, timeout, app.conf.broker_transport_options or {})
        found = BrokerCheck(up, mask_url(";".join(urls)), detail, time.monotonic() - started, timeout)
        _answers[key] = (started, found)
        return found


def broker_urls(app: Any) -> list[str]:
    """The URLs sending connects to: the write URL, else the broker URL; each fail-over URL apart."""
    url = app.conf.broker_write_url or app.conf.broker_url or CELERY_DEFAULT_BROKER
    parts = url if isinstance(url, (list, tuple)) else str(url).split(";")
    return [part.strip() for part in parts if part.strip()]


def probe(urls: list[str], timeout: float, transport_options: dict[str, Any]) -> tuple[bool, str]:
    """Check the broker now: ``(up, what answered or what each address did)``."""
    deadline = time.monotonic() + timeout
    scheme = _scheme(urls[0])
    if scheme == "embedded":
        return _embedded_usable(urls[0])
    if scheme == "memory":
        return True, "the in-memory transport lives in this process"
    targets = [_target(url) for url in urls]
    if all(target is not None for target in targets):
        return _any_connects([t for t in targets if t is not None], timeout, deadline)
    return _kombu_connects(";".join(urls), timeout, transport_options)


def _scheme(url: str) -> str:
    return url.partition("://")[0].partition("+")[0].lower()


def _target(url: str) -> tuple[str, int] | str | None:
    """``(host, port)`` to connect to, a Unix socket's path, or None for a transport checked by kombu."""
    parts = url_to_parts(url)
    scheme = parts.scheme.lower()
    if scheme in ("redis+socket", "socket"):
        return "/" + (parts.path or "").lstrip("/")
    if scheme not in DEFAULT_PORTS:
        return None
    return (parts.hostname or "localhost", parts.port or DEFAULT_PORTS[scheme])


def _any_connects(targets: list[tuple[str, int] | str], timeout: float, deadline: float) -> tuple[bool, str]:
    """Connect to every target at once, each in a thread; up as soon as one accepts, down at ``deadline``.

    One address that needs no name look-up (an IP address, a Unix socket) is
    connected to here, without a thread: only a look-up could outlast the timeout.
    """
    if len(targets) == 1 and _literal(targets[0]):
        problem = _connect(targets[0], max(deadline - time.monotonic(), 0.001), timeout)
        name = _name(targets[0])
        return (True, f"{name} accepted a connection") if problem is None else (False, f"{name} {problem}")
    done = threading.Condition()
    outcomes: dict[int, str | None] = {}  # index -> None (accepted) or what went wrong

    def attempt(index: int, target: tuple[str, int] | str) -> None:
        problem = _connect(target, timeout, timeout)
        with done:
            outcomes[index] = problem
            done.notify()

    for index, target in enumerate(targets):
        # Daemon threads: a name lookup that outlives the timeout must not hold up the process.
        threading.Thread(target=attempt, args=(index, target), daemon=True).start()
    with done:
        while len(outcomes) < len(targets) and None not in outcomes.values():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            done.wait(remaining)
        found = dict(outcomes)
    names = [_name(target) for target in targets]
    for index, problem in found.items():
        if problem is None:
            return True, f"{names[index]} accepted a connection"
    return False, "; ".join(
        f"{name} {found.get(index) or f'did not answer within {timeout:g} s'}"
        for index, name in enumerate(names)
    )


def _connect(target: tuple[str, int] | str, wait: float, timeout: float) -> str | None:
    """None when ``target`` accepts a connection within ``wait`` seconds, else what happened."""
    try:
        if isinstance(target, str):
            with socket.socket(socket.AF_UNIX) as unix:
                unix.settimeout(wait)
                unix.connect(target)
        else:
            socket.create_connection(target, timeout=wait).close()
    except ConnectionRefusedError:
        return "refused the connection"
    except TimeoutError:
        return f"did not answer within {timeout:g} s"
    except socket.gaierror as e:
        return f"is not a name that resolves ({e.strerror})"
    except OSError as e:
        return f"cannot be reached ({e.strerror or e})"
    return None


def _literal(target: tuple[str, int] | str) -> bool:
    """A Unix socket's path, or a host given as an IP address."""
    if isinstance(target, str):
        return True
    try:
        ipaddress.ip_address(target[0])
    except ValueError:
        return False
    return True


def _name(target: tuple[str, int] | str) -> str:
    if isinstance(target, str):
        return target
    host, port = target
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _embedded_usable(url: str) -> tuple[bool, str]:
    """The embedded broker's store can be opened: its folder is there and writable, or can be made."""
    from core.embedded import sqlite_path

    path = sqlite_path(url.partition("+")[2])
    folder = path.parent
    if folder.is_dir():
        if not os.access(folder, os.W_OK | os.X_OK):
            return False, f"the store's folder {folder} is not writable by this user"
        if path.exists() and not os.access(path, os.R_OK | os.W_OK):
            return False, f"the store {path} is not readable and writable by this user"
        return True, f"the store's folder {folder} is usable"
    existing = _nearest_existing(folder)
    if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
        return True, f"the store's folder {folder} will be created by the first send"
    return False, f"the store's folder {folder} cannot be created ({existing} is not a writable folder)"


def _nearest_existing(folder: Path) -> Path:
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return folder


def _kombu_connects(url: str, timeout: float, transport_options: dict[str, Any]) -> tuple[bool, str]:
    """Other transports: a kombu connection, in a thread so that the timeout bounds it."""
    from kombu import Connection

    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            with Connection(url, connect_timeout=timeout, transport_options=transport_options) as conn:
                conn.ensure_connection(max_retries=1, timeout=timeout)
        except Exception as e:
            outcome.append(mask_text(" ".join(f"{type(e).__name__}: {e}".split())))
        else:
            outcome.append(None)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        return False, f"no connection within {timeout:g} s"
    return (True, "a connection was opened") if outcome[0] is None else (False, outcome[0])


def _seconds(app: Any, key: str, given: float | None, *, positive: bool) -> float:
    """A duration given by the caller, else ``host.KEY``; a timeout must be more than 0."""
    config = getattr(app, "host_config", None)
    if given is not None:
        if positive and not given > 0:
            raise UsageError(f"a timeout of {given:g} s cannot be waited: give more than 0 seconds")
        return float(given)
    from core.config import HOST_OPTIONS

    value = float(config.host[key] if config is not None else HOST_OPTIONS[key].default)
    if positive and not value > 0:
        raise ConfigError(
            f"{value:g} is not a timeout: give more than 0 seconds",
            path=str(config.path) if config is not None else None,
            key=f"host.{key}",
        )
    return value


#: The last answer per broker (its fail-over URLs), with when it was checked.
_answers: dict[tuple[str, ...], tuple[float, BrokerCheck]] = {}
_lock = threading.Lock()


def forget() -> None:
    """Drop every kept answer and outage: the next check asks the broker."""
    with _lock:
        _answers.clear()
        _outages.clear()


# -- an outage, as host.fallback = eager lives through it ------------------------------


@dataclass
class _Outage:
    started: float
    inline: int = 0


#: The brokers found down by the fallback, and since when.
_outages: dict[tuple[str, ...], _Outage] = {}


def fallback_check(app: Any) -> bool:
    """Before a send with ``host.fallback = eager``: True if the broker can be reached.

    The first "down" of an outage logs a WARNING; the first "up" after it, INFO.
    """
    check = check_broker(app)
    key = tuple(broker_urls(app))
    if check.up:
        _recovered(key, check.url)
    else:
        _went_down(key, check.url, check.detail)
    return check.up


def send_failed(app: Any, error: BaseException) -> None:
    """A send failed although the check said "up": the broker counts as down for the next sends too."""
    urls = broker_urls(app)
    key = tuple(urls)
    detail = mask_text(" ".join(f"{type(error).__name__}: {error}".split()))
    timeout = _seconds(app, "broker_check.timeout", None, positive=True)
    url = mask_url(";".join(urls))
    with _lock:
        _answers[key] = (time.monotonic(), BrokerCheck(False, url, detail, 0.0, timeout))
    _went_down(key, url, detail)


def ran_inline(app: Any) -> None:
    """Count a task the fallback ran inline, for the line that ends the outage."""
    key = tuple(broker_urls(app))
    with _lock:
        if key in _outages:
            _outages[key].inline += 1


def _went_down(key: tuple[str, ...], url: str, detail: str) -> None:
    with _lock:
        first = key not in _outages
        if first:
            _outages[key] = _Outage(time.monotonic())
    if first:
        logger.warning(
            "the broker at %s does not answer (%s): host.fallback = eager, so tasks run inline in "
            "this process until it answers again (logged once per outage)",
            url,
            detail,
        )


def _recovered(key: tuple[str, ...], url: str) -> None:
    with _lock:
        outage = _outages.pop(key, None)
    if outage is not None:
        logger.info(
            "the broker at %s answers again: tasks are sent to it again (%s ran inline in %.0f s)",
            url,
            _tasks(outage.inline),
            time.monotonic() - outage.started,
        )


def _tasks(n: int) -> str:
    return f"{n} task" if n == 1 else f"{n} tasks"
