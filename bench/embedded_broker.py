"""Benchmark: the embedded broker (SQLite) next to RabbitMQ, through a real ``host celeryd``.

For each broker it

1. pre-publishes N ``example.add`` tasks while no worker runs (publish rate),
2. starts ``host celeryd -c 2`` and measures how fast it drains them: from the
   first "received" to the last "succeeded" line of the worker's log,
3. measures the round trip of sequential ``send_task(...).get()`` calls
   (p50/p99), the way a web application waits for a task.

Run::

    .venv/bin/python bench/embedded_broker.py [--tasks 5000] [--roundtrips 200] [--no-rabbitmq]

RabbitMQ uses amqp://guest:guest@127.0.0.1:5672// with Redis results (as
production.ini does), on a queue of its own that is deleted afterwards.
Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from datetime import datetime
from pathlib import Path

HOST = str(Path(sys.executable).parent / "host")
RABBITMQ_URL = os.environ.get("HOST_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
REDIS_URL = os.environ.get("HOST_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
LOG_LINE = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): INFO/\S+\] Task example\.add\[[^\]]+\] "
    r"(received|succeeded)",
    re.M,
)


def ini_text(broker: str, queue: str) -> str:
    if broker == "embedded":
        urls = """
            celery.broker_url = embedded+sqlite:///%(here)s/data/broker.sqlite
            celery.result_backend = embedded+sqlite:///%(here)s/data/results.sqlite
        """
    else:
        urls = f"""
            celery.broker_url = {RABBITMQ_URL}
            celery.result_backend = {REDIS_URL}
            celery.task_default_queue = {queue}
            celery.result_expires = 600
        """
    return "[app:main]\n" + textwrap.dedent(urls).strip() + "\n"


def app_for(ini: Path):
    from core.celery_app import HostCelery, configure_app
    from core.config import load_config

    return configure_app(HostCelery(f"bench-{uuid.uuid4().hex[:6]}"), load_config(ini, environ={}))


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def wait_for(predicate, timeout: float, what: str, log: Path):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what}; worker log:\n{log.read_text()[-4000:]}")
        time.sleep(0.01)


def run(broker: str, tasks: int, roundtrips: int) -> dict[str, float]:
    queue = f"bench-{uuid.uuid4()}"
    with tempfile.TemporaryDirectory(prefix=f"bench-{broker}-") as tmp:
        folder = Path(tmp)
        ini = folder / "bench.ini"
        ini.write_text(ini_text(broker, queue), encoding="utf-8")
        app = app_for(ini)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HOST_", "CELERY_"))}
        try:
            # 1. pre-publish
            start = time.perf_counter()
            with app.producer_or_acquire() as producer:
                ids = [app.send_task("example.add", args=[i, i], producer=producer).id for i in range(tasks)]
            publish_rate = tasks / (time.perf_counter() - start)

            # 2. drain
            log = folder / "worker.log"
            with log.open("wb") as out:
                worker = subprocess.Popen(
                    [
                        HOST,
                        "celeryd",
                        "--config",
                        str(ini),
                        "--",
                        "-c",
                        "2",
                        "-n",
                        f"bench-{uuid.uuid4().hex[:8]}@%h",
                        "--without-mingle",
                        "--without-gossip",
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=folder,
                    start_new_session=True,
                )
            try:
                wait_for(
                    lambda: (
                        len(re.findall(r"Task example\.add\[[^\]]+\] succeeded", log.read_text())) >= tasks
                    ),
                    600,
                    f"{tasks} tasks to succeed",
                    log,
                )
                stamps = {"received": [], "succeeded": []}
                for stamp, what in LOG_LINE.findall(log.read_text()):
                    stamps[what].append(datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f"))
                drain_seconds = (max(stamps["succeeded"]) - min(stamps["received"])).total_seconds()
                missing = (
                    sum(1 for i in ids if app.AsyncResult(i).state != "SUCCESS") if tasks <= 20000 else 0
                )

                # 3. round trips
                times = []
                for i in range(roundtrips):
                    t = time.perf_counter()
                    value = app.send_task("example.add", args=[i, 1]).get(timeout=30)
                    times.append(time.perf_counter() - t)
                    assert value == i + 1, value
            finally:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(worker.pid, signal.SIGKILL)
                    worker.wait()
            left = None
            if broker == "embedded":
                with sqlite3.connect(folder / "data" / "broker.sqlite") as db:
                    left = db.execute("SELECT COUNT(*) FROM host_message").fetchone()[0]
            return {
                "publish/s": publish_rate,
                "drain/s": tasks / drain_seconds,
                "p50 ms": statistics.median(times) * 1000,
                "p99 ms": percentile(times, 99) * 1000,
                "missing": missing,
                "rows left": left,
                "exit": worker.returncode,
            }
        finally:
            if broker == "rabbitmq":
                with app.connection_for_write() as conn:
                    channel = conn.default_channel
                    channel.queue_delete(queue)
                    channel.exchange_delete(queue)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=5000, help="tasks to pre-publish and drain")
    parser.add_argument("--roundtrips", type=int, default=200, help="sequential send-and-get calls")
    parser.add_argument("--no-rabbitmq", action="store_true", help="only the embedded broker")
    args = parser.parse_args()
    brokers = ["embedded"] + ([] if args.no_rabbitmq else ["rabbitmq"])
    results = {broker: run(broker, args.tasks, args.roundtrips) for broker in brokers}
    columns = ["publish/s", "drain/s", "p50 ms", "p99 ms", "missing", "rows left", "exit"]
    print(f"\n{args.tasks} tasks drained by `host celeryd -c 2`; {args.roundtrips} sequential round trips\n")
    print(f"{'broker':<10}" + "".join(f"{c:>11}" for c in columns))
    for broker, row in results.items():
        cells = []
        for c in columns:
            v = row[c]
            cells.append(f"{'-' if v is None else (f'{v:.1f}' if isinstance(v, float) else v):>11}")
        print(f"{broker:<10}" + "".join(cells))


if __name__ == "__main__":
    main()
