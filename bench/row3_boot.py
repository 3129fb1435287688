"""Row 3: a worker's boot, from spawning the process to its first task done.

Before each start one ``bench.add`` task is published to a queue of the
row's own; the clock starts when the worker process is spawned and stops when
that task's result appears in Redis (polled every 5 ms). Four sides, alternating:

* ``host celeryd`` with 300 synthetic extensions installed (plus
  ``bench-tasks``, which provides ``bench.add``);
* ``host celeryd`` with none but ``bench-tasks``;
* plain ``celery -A plain_app worker`` with the same Celery settings
  (``bench/plain_app.py``), no extension;
* the floor for 300 extensions: the same plain Celery app, which also imports
  the same 300 extensions with the bare ``importlib.metadata`` loop (their
  ``from core.celery_app import celery`` pointed at the plain app), so that it
  pays what importing them and registering their tasks costs, and nothing of
  the host's.

Every worker runs ``-P prefork -c 1 --without-mingle --without-gossip
--without-heartbeat -Q <the row's queue>`` with a unique node name. The
installed example-ext is disabled in the host's ini, so "0 extensions" means
only the task the row needs. Once the first task is done, the ``VmRSS`` of the
main process and of its pool child are read for row 8 (the same runs serve
both rows when both are asked for). The worker's process group is then killed:
shutting down is not what is measured (a warm shutdown of such a worker takes
about 10 s here). The queue, its exchange and the results are deleted afterwards.

Each side runs 10 times in a full run (``--runs`` if more), 5 with ``--quick``,
1 with ``--smoke``.
The CPU time of the main process and its pool child up to the first task
(their threads' time on a CPU, from ``/proc/PID/task/*/schedstat``) is read
too: on this shared 2-core machine a busy neighbour stretches every side's
wall time, and the host's extra work with it; CPU time moves much less.

Targets: host with 300 extensions <= plain + 150 ms; the host's own cost,
host with 300 extensions - the floor for 300, <= 50 ms.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.harness import (
    BENCH,
    CELERY,
    HOST,
    Comparison,
    Context,
    alternate,
    clean_env,
    delete_rabbitmq,
    wait_until,
)
from bench.synthetic import GROUP, bench_site

ROW = 3
EXTENSIONS = 300
#: host with 300 extensions may take this much longer than plain Celery.
BUDGET_MS = 150.0
#: ... and this much longer than the floor: plain Celery importing the same extensions.
OWN_BUDGET_MS = 50.0
WORKER_OPTIONS = [
    "-P",
    "prefork",
    "-c",
    "1",
    "--without-mingle",
    "--without-gossip",
    "--without-heartbeat",
    "--loglevel=INFO",
]
BOOT_TIMEOUT = 120.0
#: A worker's start varies by tens of milliseconds from run to run on 2 cores: full runs take more samples.
FULL_RUNS = 10
PLAIN = "celery -A plain_app worker, 0 extensions"
FLOOR = f"plain Celery importing the same {EXTENSIONS} extensions (bare loop)"

#: The floor's app: bench/plain_app.py's, plus the extensions imported the bare way.
FLOOR_APP = f'''\
"""Plain Celery that imports the row's extensions with the bare importlib.metadata loop."""

import importlib
import sys
import types
from importlib.metadata import entry_points

from plain_app import app

# The extensions register their tasks with `from core.celery_app import celery`:
# here that name is the plain app, and nothing of the host is imported.
shim = types.ModuleType("core.celery_app")
shim.celery = app
sys.modules["core.celery_app"] = shim

for ep in entry_points(group={GROUP!r}):
    if ep.module.startswith("bench_ext_"):  # the row's extensions, not others installed
        for module in ep.load()():
            importlib.import_module(module)
'''


@dataclass
class Sample:
    """One worker start: seconds to the first task, then the memory and CPU time of its processes."""

    seconds: float
    main_mib: float
    child_mib: float
    #: CPU time of the main process and its pool child, up to the first task.
    cpu_seconds: float | None = None
    #: The pool child's private memory (USS): what it does not share with the main process.
    child_private_mib: float | None = None


@dataclass
class Worker:
    """One side: how to start it."""

    label: str
    command: list[str]
    env: dict[str, str]


def measured_env(**extra: str) -> dict[str, str]:
    """:func:`clean_env`, with Python's bytecode cache on, as in any installation.

    With ``PYTHONDONTWRITEBYTECODE`` set (as in some shells and CI), every
    module without a ``.pyc`` from pip -- the framework installed in editable
    mode, every synthetic extension -- would be compiled again on each start.
    """
    env = clean_env(**extra)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


class Boots:
    """The ini, queue, result store and sites of one run; starts workers to their first task."""

    def __init__(self, ctx: Context, name: str) -> None:
        import redis
        from celery import Celery

        from bench.plain_app import settings_for

        self.folder = ctx.folder(name)
        self.queue = f"bench.{name}.{uuid.uuid4().hex[:8]}"
        self.ini = self.folder / "bench.ini"
        self.ini.write_text(
            "\n".join(
                [
                    "[app:main]",
                    f"celery.broker_url = {ctx.rabbitmq_url}",
                    f"celery.result_backend = {ctx.redis_url}",
                    f"celery.task_default_queue = {self.queue}",
                    "celery.result_expires = 600",
                    # Only the extensions the row installs: not the example the repository installs.
                    "host.celery_task.disabled = example-ext",
                    "host.allow_root = true",
                    "",
                ]
            ),
            encoding="utf-8",
        )
        self.settings = settings_for(str(self.ini))
        self.sender = Celery("bench-sender", set_as_current=False)
        self.sender.conf.update(self.settings)
        self.redis = redis.Redis.from_url(ctx.redis_url)
        self.sites: dict[int, Path] = {}

    def site(self, n: int) -> Path:
        """``bench-tasks`` and ``n`` synthetic extensions, written once."""
        if n not in self.sites:
            self.sites[n] = bench_site(self.folder / f"site-{n}", n)
        return self.sites[n]

    def options(self, label: str) -> list[str]:
        return [*WORKER_OPTIONS, "-Q", self.queue, "-n", f"{label}-{uuid.uuid4().hex[:8]}@%h"]

    def host(self, label: str, extensions: int) -> Worker:
        command = [HOST, "celeryd", "--config", str(self.ini), "--", *self.options(label)]
        return Worker(label, command, measured_env(PYTHONPATH=str(self.site(extensions))))

    def plain(self, label: str) -> Worker:
        command = [CELERY, "-A", "plain_app", "worker", *self.options(label)]
        env = measured_env(PYTHONPATH=str(BENCH), BENCH_PLAIN_SETTINGS=json.dumps(self.settings))
        return Worker(label, command, env)

    def floor(self, label: str, extensions: int) -> Worker:
        """Plain Celery importing ``extensions`` synthetic ones the bare way."""
        app = self.folder / "floor_app.py"
        app.write_text(FLOOR_APP, encoding="utf-8")
        command = [CELERY, "-A", "floor_app", "worker", *self.options(label)]
        path = os.pathsep.join([str(self.folder), str(BENCH), str(self.site(extensions))])
        env = measured_env(PYTHONPATH=path, BENCH_PLAIN_SETTINGS=json.dumps(self.settings))
        return Worker(label, command, env)

    def boot(self, worker: Worker) -> Sample:
        """Start ``worker``, time it to its first task's result, read its memory, kill it."""
        task_id = str(uuid.uuid4())
        key = f"celery-task-meta-{task_id}"
        self.sender.send_task("bench.add", args=(2, 3), task_id=task_id, queue=self.queue)
        log = self.folder / f"{worker.label}.log"
        with log.open("wb") as out:
            start = time.perf_counter()
            proc = subprocess.Popen(
                worker.command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=worker.env,
                cwd=self.folder,
                start_new_session=True,
            )
        try:

            def done() -> bool:
                if self.redis.exists(key):
                    return True
                if proc.poll() is not None:
                    raise RuntimeError(f"{worker.label} exited with {proc.returncode}:\n{_tail(log)}")
                return False

            wait_until(done, BOOT_TIMEOUT, f"{worker.label}'s first task", details=lambda: _tail(log))
            seconds = time.perf_counter() - start
            pool = children(proc.pid)
            if len(pool) != 1:
                raise RuntimeError(f"{worker.label}: expected one pool child, found {pool}")
            cpu = cpu_seconds([proc.pid, pool[0]])
            return Sample(seconds, rss_mib(proc.pid), rss_mib(pool[0]), cpu, private_mib(pool[0]))
        finally:
            _kill(proc)
            self.redis.delete(key)

    def close(self) -> None:
        try:
            delete_rabbitmq(queues=[self.queue], exchanges=[self.queue])
        finally:
            self.redis.close()
            self.sender.close()


def rss_mib(pid: int) -> float:
    """``VmRSS`` of process ``pid``, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def private_mib(pid: int) -> float | None:
    """``Private_Clean`` + ``Private_Dirty`` of process ``pid`` in MiB; None where Linux does not tell."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return None
    kib = sum(int(line.split()[1]) for line in lines if line.startswith(("Private_Clean:", "Private_Dirty:")))
    return kib / 1024


def cpu_seconds(pids: list[int]) -> float | None:
    """The time the threads of processes ``pids`` have spent on a CPU; None where Linux does not tell."""
    total = 0
    try:
        for pid in pids:
            for thread in Path(f"/proc/{pid}/task").iterdir():
                total += int((thread / "schedstat").read_text().split()[0])  # nanoseconds
    except (OSError, ValueError, IndexError):
        return None
    return total / 1e9


def children(pid: int) -> list[int]:
    """The child processes of ``pid``."""
    found = []
    for thread in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (thread / "children").read_text().split()]
    return found


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill the worker and its pool: its own process group (it was started in a new session)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


#: Samples of the sides measured so far in a run (keyed by its scratch folder), for rows 3 and 8.
_MEASURED: dict[Path, dict[str, list[Sample]]] = {}
#: Every side rows 3 and 8 use; the first run of either measures them all, alternating.
SIDES = ("host300", "floor300", "host0", "plain")


def boots(ctx: Context) -> dict[str, list[Sample]]:
    """The samples of every side in :data:`SIDES`, measured once per run (shared by rows 3 and 8)."""
    if ctx.workdir not in _MEASURED:
        run = Boots(ctx, "boot")
        try:
            workers = {
                "host300": run.host("host300", EXTENSIONS),
                "floor300": run.floor("floor300", EXTENSIONS),
                "host0": run.host("host0", 0),
                "plain": run.plain("plain"),
            }
            taken: dict[str, list[Sample]] = {label: [] for label in SIDES}

            def measure(label: str) -> float:
                sample = run.boot(workers[label])
                taken[label].append(sample)
                return sample.seconds

            runs = ctx.runs if ctx.quick else max(ctx.runs, FULL_RUNS)
            counts = alternate({label: (lambda label=label: measure(label)) for label in SIDES}, runs)
        finally:
            run.close()
        # alternate() runs each side once, unrecorded, before the samples: drop that one here too.
        _MEASURED[ctx.workdir] = {label: taken[label][-len(counts[label]) :] for label in SIDES}
    return _MEASURED[ctx.workdir]


def _cpu_ms(samples: list[Sample]) -> float | None:
    """The median CPU time of ``samples``, in ms; None when it could not be read."""
    cpu = [s.cpu_seconds * 1000 for s in samples if s.cpu_seconds is not None]
    return statistics.median(cpu) if cpu and len(cpu) == len(samples) else None


def run(ctx: Context) -> Iterator[Comparison]:
    measured = boots(ctx)

    def ms(label: str) -> list[float]:
        return [s.seconds * 1000 for s in measured[label]]

    measure = "worker boot to first task (-P prefork -c 1)"
    c = Comparison(
        row=ROW,
        measure=measure,
        unit="ms",
        host_label=f"host celeryd, {EXTENSIONS} extensions",
        host=ms("host300"),
        other_label=PLAIN,
        other=ms("plain"),
        target=f"<= plain + {BUDGET_MS:.0f} ms",
    )
    difference = c.difference
    floor = Comparison(ROW, measure, "ms", FLOOR, ms("floor300"), PLAIN, ms("plain"), "report")
    floor_difference = floor.difference
    c.met = difference <= BUDGET_MS
    c.note = (
        f"{difference:+.0f} ms over plain Celery; plain Celery that only imports the same "
        f"{EXTENSIONS} extensions takes {floor_difference:+.0f} ms"
    )
    c.extra = {"difference_ms": difference, "floor_difference_ms": floor_difference}
    yield c
    own = Comparison(
        ROW,
        measure,
        "ms",
        f"host celeryd, {EXTENSIONS} extensions",
        ms("host300"),
        FLOOR,
        ms("floor300"),
        f"<= floor + {OWN_BUDGET_MS:.0f} ms",
    )
    own_difference = own.difference
    own.met = own_difference <= OWN_BUDGET_MS
    own.note = (
        f"the host's own cost with {EXTENSIONS} extensions (host{EXTENSIONS} - floor{EXTENSIONS}): "
        f"{own_difference:+.0f} ms, target <= +{OWN_BUDGET_MS:.0f} ms"
    )
    own.extra = {"difference_ms": own_difference}
    cpu = {label: _cpu_ms(measured[label]) for label in ("host300", "floor300")}
    if cpu["host300"] is not None and cpu["floor300"] is not None:
        own_cpu = cpu["host300"] - cpu["floor300"]
        own.note += (
            f"; CPU time of the worker and its pool child to the first task: {cpu['host300']:.0f} ms "
            f"against {cpu['floor300']:.0f} ms, {own_cpu:+.0f} ms"
        )
        own.extra["cpu_difference_ms"] = own_cpu
    yield own
    c0 = Comparison(
        ROW, measure, "ms", "host celeryd, 0 extensions", ms("host0"), PLAIN, ms("plain"), "report"
    )
    difference0 = c0.difference
    c0.note = f"{difference0:+.0f} ms over plain Celery"
    c0.extra = {"difference_ms": difference0}
    yield c0
