"""What every benchmark row shares: alternating runs, medians, ratios, the report.

A row module (``bench/row*.py``) has one function::

    def run(ctx: Context) -> Iterator[Comparison]

and yields one :class:`Comparison` per line of the table. Each comparison is
measured side by side in one run, alternating A B A B (:func:`alternate`), at
least :data:`MIN_RUNS` times each. Nothing here asserts a timing: a missed
target is reported as such, never raised.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BIN = Path(sys.executable).parent
HOST = str(BIN / "host")
CELERY = str(BIN / "celery")
RABBITMQ_URL = os.environ.get("HOST_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
REDIS_URL = os.environ.get("HOST_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
#: Each side of a comparison runs at least this often (a smoke run excepted).
MIN_RUNS = 5
#: Recorded runs per side with ``--smoke``: it proves that every row works, and measures nothing.
SMOKE_RUNS = 1


@dataclass
class Context:
    """What a row gets: the mode, a scratch folder, the services.

    ``smoke`` (``--smoke``, the test suite's size) is a quick run with the
    smallest workloads and :data:`SMOKE_RUNS` runs a side: every row, side and
    code path runs, and none of its figures means anything.
    """

    quick: bool
    workdir: Path
    runs: int = MIN_RUNS
    rabbitmq_url: str = RABBITMQ_URL
    redis_url: str = REDIS_URL
    smoke: bool = False

    def __post_init__(self) -> None:
        if self.smoke:
            self.quick, self.runs = True, SMOKE_RUNS
        else:
            self.runs = max(self.runs, MIN_RUNS)

    def scale(self, full: int, quick: int, smoke: int | None = None) -> int:
        """``full`` in a full run, ``quick`` with ``--quick``, ``smoke`` (or ``quick``) with ``--smoke``."""
        if self.smoke and smoke is not None:
            return smoke
        return quick if self.quick else full

    @property
    def command(self) -> str:
        """The command this run's size stands for, as the report names it."""
        if self.smoke:
            return "python -m bench --smoke"
        return "make bench-quick" if self.quick else "make bench"

    def folder(self, name: str) -> Path:
        """A fresh folder of the row's own under the scratch folder."""
        path = self.workdir / f"{name}-{uuid.uuid4().hex[:6]}"
        path.mkdir(parents=True)
        return path


@dataclass
class Comparison:
    """One line of the table: the host's samples next to the compared thing's.

    ``ratio`` is host / other for the medians, whichever way is better; the
    target says which way it must go, and ``met`` whether it did (``None``:
    reported only).
    """

    row: int
    measure: str
    unit: str
    host_label: str
    host: list[float]
    other_label: str
    other: list[float]
    target: str
    met: bool | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def host_median(self) -> float:
        return statistics.median(self.host)

    @property
    def other_median(self) -> float | None:
        return statistics.median(self.other) if self.other else None

    @property
    def difference(self) -> float:
        """host median - compared median, in the unit (for targets such as "plain + 150 ms")."""
        return self.host_median - (self.other_median or 0.0)

    @property
    def ratio(self) -> float | None:
        other = self.other_median
        return self.host_median / other if other else None


def alternate(sides: dict[str, Callable[[], float]], runs: int) -> dict[str, list[float]]:
    """Call each side in turn, A B A B ..., ``runs`` times each; one sample per call.

    The first call of each side is also run once before, unrecorded, so that
    no side pays for warming the machine's caches alone. ``runs`` comes from
    the :class:`Context`, at least :data:`MIN_RUNS` but in a smoke run.
    """
    if runs < 1:
        raise ValueError(f"runs must be at least 1, not {runs}")
    for measure in sides.values():
        measure()
    samples: dict[str, list[float]] = {label: [] for label in sides}
    for _ in range(runs):
        for label, measure in sides.items():
            samples[label].append(measure())
    return samples


def timed(call: Callable[[], Any]) -> float:
    """Seconds ``call()`` took."""
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, details: Callable[[], str] | None = None
) -> Any:
    """Poll ``predicate`` every few milliseconds until it is truthy; give up after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting for {what}" + (f"\n{details()}" if details else ""))
        time.sleep(0.005)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a measured process: none of the caller's host or Celery settings."""
    # PYTHONDONTWRITEBYTECODE would make every measured start compile its modules again.
    dropped = ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOST_", "CELERY_")) and k not in dropped}
    env["HOST_ALLOW_ROOT"] = "true"  # the benchmark may run as root, as CI does
    env.update(extra)
    return env


def delete_rabbitmq(queues: Sequence[str] = (), exchanges: Sequence[str] = ()) -> None:
    """Remove what a row declared on the shared RabbitMQ."""
    from kombu import Connection

    with Connection(RABBITMQ_URL, connect_timeout=10) as connection:
        channel = connection.default_channel
        for queue in queues:
            channel.queue_delete(queue)
        for exchange in exchanges:
            channel.exchange_delete(exchange)


@contextmanager
def process(
    command: Sequence[str], log: Path, env: dict[str, str], cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` with its output in ``log``; SIGTERM it (then SIGKILL its group) afterwards."""
    import signal

    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(command), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# -- the report ------------------------------------------------------------------------


def machine() -> dict[str, str]:
    """Cores, memory and CPU model of this machine, and the versions measured."""
    from importlib.metadata import version

    model = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        kib = int(meminfo.read_text().split("MemTotal:", 1)[1].split()[0])
        memory = f"{kib / 1024 / 1024:.1f} GiB"
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "memory": memory,
        "os": platform.platform(),
        "python": platform.python_version(),
        "celery": version("celery"),
        "kombu": version("kombu"),
        "host-framework": version("host-framework"),
    }


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms" or unit == "MiB":
        return f"{value:.1f} {unit}"
    if unit.endswith("/s"):
        return f"{value:,.0f} {unit}"
    return f"{value:.3g} {unit}"


def table(comparisons: Sequence[Comparison]) -> str:
    """The results as a Markdown table: medians, the ratio, the target and whether it was met."""
    lines = [
        "| # | measure | host | median | compared with | median | ratio | target | met |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in comparisons:
        met = "-" if c.met is None else ("yes" if c.met else "**no**")
        ratio = "-" if c.ratio is None else f"{c.ratio:.2f}"
        lines.append(
            f"| {c.row} | {c.measure} | {c.host_label} | {_number(c.host_median, c.unit)} "
            f"| {c.other_label or '-'} | {_number(c.other_median, c.unit)} | {ratio} | {c.target} | {met} |"
        )
    return "\n".join(lines)


def report(comparisons: Sequence[Comparison], ctx: Context, seconds: float) -> str:
    facts = machine()
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    fewest = min((len(c.host) for c in comparisons), default=0)
    head = [
        "# Benchmark results",
        "",
        f"Measured {when} by `{ctx.command}` in {seconds:.0f} s.",
        "",
        f"Machine: {facts['cpu']}, {facts['cores']} cores, {facts['memory']} memory; {facts['os']}.",
        f"Python {facts['python']}, celery {facts['celery']}, kombu {facts['kombu']}, "
        f"host-framework {facts['host-framework']}. RabbitMQ and Redis on loopback.",
        "",
        f"Medians of at least {fewest} runs per side, the sides alternating (A B A B); a row's notes "
        "say where it measures differently. Ratios are host / compared.",
        "",
    ]
    if ctx.smoke:
        head += ["A smoke run (`--smoke`): it proves that every row works; its figures mean nothing.", ""]
    notes = [f"- row {c.row}, {c.measure}: {c.note}" for c in comparisons if c.note]
    text = "\n".join(head) + table(comparisons) + "\n"
    if notes:
        text += "\nNotes:\n\n" + "\n".join(notes) + "\n"
    findings = BENCH / "FINDINGS.md"  # written by hand: the profiles behind missed targets
    if not ctx.quick and findings.exists():
        text += "\n" + findings.read_text(encoding="utf-8")
    return text


def which(command: str) -> str | None:
    return shutil.which(command)
