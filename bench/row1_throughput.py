"""Row 1: worker throughput, ``host celeryd`` next to plain ``celery worker``, on RabbitMQ.

For each pool (``-P prefork -c 2``, ``-P solo``) both workers are started
once, with identical flags (``--without-mingle --without-gossip
--without-heartbeat --loglevel=INFO``, a node name of their own) and
identical Celery settings, each consuming an idle queue of its own. One run
of a side is then:

1. publish N ``bench.noop`` messages to a new queue no worker consumes (raw
   AMQP publishes of the message Celery builds, so that publishing is quick
   and the same for both sides);
2. tell that side's worker to consume the queue (remote control
   ``add_consumer``, the worker's own code path for ``-Q``);
3. poll the queue's ready-message count (a passive ``queue_declare``) every
   2 ms: the clock starts at the first poll that sees the count drop and
   stops at the first that sees 0; the rate is the messages drained in
   between divided by that time;
4. ``cancel_consumer``; the queues are deleted at the end of the row.

So the worker's start-up is not measured, and a run costs the drain, not a
worker start and stop (about 1.5 s with prefork): the quick mode fits its
budget with 5 runs per side (800 tasks a run; 400 with ``--smoke``, enough to time). At the
end each worker gets SIGTERM (its main process only) and a remote-control
ping right after it, which wakes its event loop at once; otherwise the loop
notices the signal only when its poll times out, up to 10 s later.

The host side is ``host celeryd --config INI -- FLAGS`` with the ``bench-tasks``
extension on ``PYTHONPATH``; the plain side is ``celery -A plain_app worker
FLAGS`` with ``$BENCH_PLAIN_SETTINGS`` holding the settings the host derives
from the same ini (:func:`bench.plain_app.settings_for`). The ini has
production.ini's reliability settings (late acks, prefetch multiplier 1,
publisher confirms, persistent messages, time limits) and no result store.
Target: host / plain >= 0.97 for each pool.

On a 2-core machine shared with other jobs a drain's rate moves by up to
10% from one run to the next, and the median of 5 runs by a few percent:
the plain worker against an identical second plain worker (A/A) gave 1.02
and 1.06. Give ``--runs 9`` or more to resolve a 3% difference. The CPU time
per task of each side's processes (in the notes) moves less with the load
of the machine than the rate does.

``-P solo`` on RabbitMQ used to stall for up to 10 s at a time with messages
waiting, plain Celery as much as the host (Celery/kombu 5.7 and 5.6 alike):
a solo worker runs each task inside the transport's read callback, which
kombu's ``Hub.create_loop`` may run from its ready set, and the task's
acknowledgement, queued with ``Hub.call_soon`` from the loop's own thread,
then waits behind the next poll; the broker, its prefetch window full,
sends nothing to end it. The host acks when the task ends on the solo pool
(``core/solo_ack.py``, a consumer bootstep every ``HostCelery`` has); the
plain side runs the same step (``bench/solo_fixed_app.py``), so that the row
compares the frameworks, not the stall. ``python -m bench.solo_stall``
measures the stall itself (bench/FINDINGS.md).

Rows 2 and 7 use :class:`Worker`, :func:`running`, :class:`Broker` and
:func:`retrying` from here.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

from bench import plain_app
from bench.harness import (
    BENCH,
    CELERY,
    HOST,
    Comparison,
    Context,
    alternate,
    clean_env,
    delete_rabbitmq,
    process,
    wait_until,
)
from bench.synthetic import bench_site

TARGET = 0.97
TASK = "bench.noop"
#: Flags both sides get, besides the pool's and the node name.
COMMON_FLAGS = ["--without-mingle", "--without-gossip", "--without-heartbeat", "--loglevel=INFO"]
#: pool -> (its flags, the lines it adds to :data:`INI`).
POOLS = {"prefork": (["-P", "prefork", "-c", "2"], ""), "solo": (["-P", "solo"], "")}
#: Seconds between two looks at the queue.
POLL = 0.002
#: Seconds before a worker that has not started consuming a new queue gets a wake-up ping.
WAKE = 0.05
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
#: How often a run is tried when RabbitMQ closes every connection meanwhile.
ATTEMPTS = 3

#: production.ini's reliability settings; ``{queue}`` is the row's own idle queue.
INI = """\
[app:main]
celery.broker_url = {broker}
celery.task_default_queue = {queue}
celery.task_ignore_result = true
celery.accept_content = json
celery.task_serializer = json
celery.result_serializer = json
celery.task_acks_late = true
celery.task_reject_on_worker_lost = true
celery.worker_cancel_long_running_tasks_on_connection_loss = true
celery.worker_prefetch_multiplier = 1
celery.broker_transport_options = {{"confirm_publish": true}}
celery.task_default_delivery_mode = persistent
celery.broker_connection_retry_on_startup = true
celery.task_soft_time_limit = 270
celery.task_time_limit = 300
host.extensions.on_error = fail
host.allow_root = true
host.plugins =
"""


def node_name(label: str) -> str:
    """A node name of its own for ``-n``, the same wherever it runs (no ``%h``)."""
    return f"bench-{label}-{uuid.uuid4().hex[:8]}@bench"


def host_command(ini: Path, flags: Sequence[str]) -> list[str]:
    return [HOST, "celeryd", "--config", str(ini), "--", *flags]


def plain_command(flags: Sequence[str], app: str = "plain_app") -> list[str]:
    return [CELERY, "-A", app, "worker", *flags]


def host_env(site: Path) -> dict[str, str]:
    """The host worker's environment: the ``bench-tasks`` extension in ``site`` on ``PYTHONPATH``."""
    return clean_env(PYTHONPATH=str(site))


def plain_env(ini: Path) -> dict[str, str]:
    """The plain worker's environment: the host's settings for ``ini`` in ``$BENCH_PLAIN_SETTINGS``."""
    settings = plain_app.settings_for(str(ini))
    return clean_env(PYTHONPATH=str(BENCH), BENCH_PLAIN_SETTINGS=json.dumps(settings))


def tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


class Worker:
    """One worker subprocess, run through :func:`bench.harness.process`."""

    def __init__(
        self,
        label: str,
        command: list[str],
        env: dict[str, str],
        log: Path,
        node: str,
        wake: Callable[[str], None] | None = None,
    ) -> None:
        self.label, self.command, self.env, self.log, self.node = label, command, env, log, node
        #: Called with the node name after SIGTERM, to wake the worker's event loop.
        self.wake = wake
        self.proc: subprocess.Popen[bytes] | None = None
        #: CPU microseconds per task of each drain (main process and pool together).
        self.cpu_per_task: list[float] = []
        self._stack = ExitStack()

    def start(self) -> None:
        self.proc = self._stack.enter_context(process(self.command, self.log, self.env, cwd=self.log.parent))

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system) of the main process and its pool's processes; None off Linux."""
        if self.proc is None:
            return None
        try:
            pids = [self.proc.pid]
            for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
                pids += [int(pid) for pid in (task / "children").read_text().split()]
            total = 0
            for pid in pids:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, ValueError, IndexError):
            return None
        return total / CLOCK_TICKS

    def check(self) -> None:
        """Raise when the worker has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"the {self.label} worker exited ({self.proc.returncode}):\n{tail(self.log)}")

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            self.check()
            return f"{self.node} ready." in self.log.read_text(errors="replace")

        wait_until(ready, timeout, f"the {self.label} worker to be ready", lambda: tail(self.log))

    def terminate(self) -> None:
        """SIGTERM to the main process only: a warm shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """SIGTERM (unless sent already), then wait until the worker has exited."""
        self.terminate()
        if self.proc is not None and self.wake is not None:
            for pause in (0.02, 0.2, 1.0):
                try:
                    self.proc.wait(timeout=pause)
                    break
                except subprocess.TimeoutExpired:
                    self.wake(self.node)
        self._stack.close()  # waits, and SIGKILLs the group after 60 s


@contextmanager
def running(*workers: Worker) -> Iterator[None]:
    """Start the workers at once and wait until each is ready; afterwards stop them all at once."""
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.wait_ready()
        yield
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.stop()


class Broker:
    """The bench's own connection to RabbitMQ: declare, publish, count, remote control."""

    #: The name of the queue whose loss tells that RabbitMQ closed the connection.
    CANARY_PREFIX = "bench-canary-"

    def __init__(self, url: str) -> None:
        from celery import Celery

        self.url = url
        self.app = Celery("bench-control", set_as_current=False)
        self.app.conf.update(broker_url=url, broker_connection_retry_on_startup=True)
        # One message of the task protocol (v2) as Celery builds it; each copy gets its own id.
        template = self.app.amqp.create_task_message(str(uuid.uuid4()), TASK, (), {})
        self.headers: dict[str, Any] = dict(template.headers)
        self.body = json.dumps(template.body)
        self.connection: Any = None
        self.connect()

    def connect(self) -> None:
        from kombu import Connection

        if self.connection is not None:
            with suppress(Exception):
                self.connection.release()
        self.connection = Connection(self.url, connect_timeout=10)
        self.channel = self.connection.channel()
        # Exclusive: it goes with this connection, whoever closes it.
        self.canary = f"{self.CANARY_PREFIX}{uuid.uuid4()}"
        self.channel.queue_declare(self.canary, exclusive=True, auto_delete=True)

    def alive(self) -> bool:
        """False once this connection was closed (``rabbitmqctl close_all_connections``)."""
        try:
            self.channel.queue_declare(self.canary, passive=True)
            return True
        except Exception:
            return False

    def declare(self, name: str) -> None:
        """The queue and exchange exactly as a worker's ``add_consumer`` declares them."""
        from kombu import Exchange, Queue

        Queue(name, Exchange(name, "direct"), routing_key=name)(self.channel).declare()

    def publish(self, name: str, n: int) -> None:
        """``n`` ``bench.noop`` messages to queue ``name``; returns once all are in it."""
        for _ in range(n):
            task_id = str(uuid.uuid4())
            message = self.channel.prepare_message(
                self.body,
                content_type="application/json",
                content_encoding="utf-8",
                headers=dict(self.headers, id=task_id, root_id=task_id),
                properties={"correlation_id": task_id, "reply_to": "", "delivery_mode": 2},
            )
            self.channel.basic_publish(message, exchange=name, routing_key=name)
        deadline = time.monotonic() + 30
        while self.ready(name) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{n} messages published to {name} did not all arrive")
            time.sleep(0.005)

    def ready(self, name: str) -> int:
        """The queue's messages ready for delivery (not those a worker holds)."""
        return self.channel.queue_declare(name, passive=True).message_count

    def command(self, name: str, node: str, **arguments: Any) -> None:
        """A remote-control command to one worker, waiting for its reply."""
        replies = self.app.control.broadcast(
            name, arguments=arguments, destination=[node], reply=True, timeout=10, limit=1
        )
        if not replies:
            raise RuntimeError(f"worker {node} did not answer {name} {arguments}")

    def wake(self, node: str) -> None:
        """A ping, not waiting for the answer: the worker's event loop wakes up."""
        with suppress(Exception):
            self.app.control.broadcast("ping", destination=[node], reply=False)

    def close(self) -> None:
        with suppress(Exception):
            self.connection.release()


def retrying(
    broker: Broker, run: Callable[[], Any], retries: list[str], cleanup: Callable[[], None] | None = None
) -> Any:
    """``run()``, again (at most :data:`ATTEMPTS` times) when RabbitMQ dropped every connection meanwhile.

    Other test suites on this machine run ``rabbitmqctl close_all_connections``;
    the workers reconnect on their own, but a run that saw it measured the
    reconnection. Whether it happened is told by :meth:`Broker.alive`, so a
    run that fails for any other reason fails the row. ``cleanup()`` runs
    before the run is tried again.
    """
    for attempt in range(1, ATTEMPTS + 1):
        try:
            value = run()
        except Exception as e:
            if broker.alive() or attempt == ATTEMPTS:
                raise
            problem = f"{type(e).__name__}: {e}"
        else:
            if broker.alive():
                return value
            problem = "RabbitMQ closed the connections during the run"
        retries.append(problem)
        print(f"  {problem}; that run again", file=sys.stderr, flush=True)
        time.sleep(2)  # the workers reconnect on their own
        broker.connect()
        if cleanup is not None:
            cleanup()
    raise RuntimeError(f"RabbitMQ closed the connections {ATTEMPTS} times: {retries[-1]}")


def time_drain(
    waiting: Callable[[], int],
    n: int,
    worker: Worker,
    timeout: float,
    nudge: Callable[[], None] | None = None,
) -> float:
    """Poll ``waiting()`` until it reaches 0; the messages per second taken after it first dropped.

    The clock starts at the first look that sees fewer than ``n`` messages and
    stops at the first that sees none. ``nudge()`` is called every
    :data:`WAKE` seconds until the count drops.
    """
    start = end = None
    drained = count = 0
    deadline = time.monotonic() + timeout
    nudged = time.perf_counter()
    while True:
        count = waiting()
        now = time.perf_counter()
        if start is None and count < n:
            start, drained = now, count
        elif start is None and nudge is not None and now - nudged > WAKE:
            nudge()
            nudged = now
        if count == 0:
            end = now
            break
        worker.check()
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the {worker.label} worker did not drain {n} messages in {timeout:.0f} s "
                f"({count} left):\n{tail(worker.log)}"
            )
        time.sleep(POLL)
    if start is None or end is None or end <= start:
        raise RuntimeError(f"the drain of {n} messages was too quick to time; raise N")
    return drained / (end - start)


def drain_rate(broker: Broker, worker: Worker, n: int, queues: list[str], timeout: float) -> float:
    """One run: ``n`` messages on a new queue, then the worker consumes it; messages per second."""
    name = f"bench-{uuid.uuid4()}"
    queues.append(name)
    broker.declare(name)
    broker.publish(name, n)
    cpu = worker.cpu_seconds()
    broker.command("add_consumer", worker.node, queue=name)
    # The worker answers add_consumer at once, but its event loop may run the command only
    # when it wakes up (see the module's docstring): a ping wakes it, before the clock starts.
    rate = time_drain(lambda: broker.ready(name), n, worker, timeout, lambda: broker.wake(worker.node))
    broker.command("cancel_consumer", worker.node, queue=name)
    after = worker.cpu_seconds()
    if cpu is not None and after is not None:
        worker.cpu_per_task.append((after - cpu) / n * 1e6)
    return rate


def measure_pool(ctx: Context, broker: Broker, folder: Path, site: Path, pool: str, n: int) -> Comparison:
    pool_flags, ini_lines = POOLS[pool]
    idle = f"bench-idle-{uuid.uuid4()}"
    ini = folder / f"{pool}.ini"
    ini.write_text(INI.format(broker=ctx.rabbitmq_url, queue=idle) + ini_lines, encoding="utf-8")
    queues = [idle]
    retries: list[str] = []
    nodes = {"host": node_name("host"), "plain": node_name("plain")}
    commands = {
        "host": (host_command(ini, [*pool_flags, *COMMON_FLAGS, "-n", nodes["host"]]), host_env(site)),
        "plain": (
            plain_command(
                [*pool_flags, *COMMON_FLAGS, "-n", nodes["plain"]],
                # the host's SoloAck step on plain_app (bench/solo_fixed_app.py)
                "solo_fixed_app" if pool == "solo" else "plain_app",
            ),
            plain_env(ini),
        ),
    }
    workers = {
        label: Worker(label, command, env, folder / f"{pool}-{label}.log", nodes[label], broker.wake)
        for label, (command, env) in commands.items()
    }
    timeout = 60 + n / 100

    def side(worker: Worker) -> Callable[[], float]:
        def forget() -> None:  # the queue of the run RabbitMQ interrupted
            if queues[-1] != idle:
                broker.channel.queue_purge(queues[-1])
                with suppress(RuntimeError):  # it consumes an empty queue then: no harm
                    broker.command("cancel_consumer", worker.node, queue=queues[-1])

        return lambda: retrying(
            broker, lambda: drain_rate(broker, worker, n, queues, timeout), retries, forget
        )

    try:
        with running(*workers.values()):
            samples = alternate({label: side(worker) for label, worker in workers.items()}, ctx.runs)
    finally:
        delete_rabbitmq(queues, queues)
    comparison = Comparison(
        row=1,
        measure=f"throughput, {n:,} no-op tasks drained, {' '.join(pool_flags)}",
        unit="tasks/s",
        host_label="host celeryd",
        host=samples["host"],
        other_label="celery worker (plain app)",
        other=samples["plain"],
        target=f"ratio >= {TARGET}",
        extra={"tasks": n, "pool": pool, "flags": pool_flags + COMMON_FLAGS, "ini": ini_lines},
    )
    comparison.met = comparison.ratio is not None and comparison.ratio >= TARGET
    notes = []
    # CPU time per task does not depend on what else the machine runs, as the rate does.
    cpu = {label: worker.cpu_per_task[1:] for label, worker in workers.items()}  # [0]: unrecorded
    if all(cpu.values()):
        medians = {label: statistics.median(values) for label, values in cpu.items()}
        comparison.extra["cpu_us_per_task"] = medians
        notes.append(
            f"CPU per task (worker and pool processes): host {medians['host']:.0f} µs, "
            f"plain {medians['plain']:.0f} µs (ratio {medians['host'] / medians['plain']:.2f})"
        )
    if pool == "solo":
        notes.append("the plain side runs the host's SoloAck step (bench/solo_fixed_app.py)")
    if retries:
        notes.append(f"{len(retries)} run(s) repeated: RabbitMQ closed all connections (another test suite)")
    comparison.note = "; ".join(notes)
    return comparison


def run(ctx: Context) -> Iterator[Comparison]:
    n = ctx.scale(10_000, 800, smoke=400)
    folder = ctx.folder("row1")
    site = bench_site(folder / "site")
    broker = Broker(ctx.rabbitmq_url)
    try:
        for pool in POOLS:
            yield measure_pool(ctx, broker, folder, site, pool, n)
    finally:
        broker.close()
