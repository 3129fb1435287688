"""The solo drain of bench/solo_stall.py on Redis: does ``core.solo_ack`` hold there too?

``python -m bench.solo_stall_redis [--runs 3] [--tasks 2000]``: plain Celery
(``plain_app``) against the same app with the fix (``solo_fixed_app``), each
run a fresh ``-P solo`` worker on a queue of its own (``solo-investigation-...``)
prefilled with N ``bench.noop`` tasks, in Redis database 13 (the bench's
RabbitMQ rows do not use Redis; other engineers use database 0). The drain is
timed by ``LLEN`` of the queue's list, as bench/solo_stall.py times the
RabbitMQ queue's ready count. The settings are row 1's (late acks, prefetch
multiplier 1) with the broker URL changed, minus publisher confirms. Remote
control is off (no pidbox bindings); the queues and their binding keys are
deleted at the end, and each worker stops warm, so kombu's ``unacked`` hash
is left empty.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench import plain_app
from bench.harness import BENCH, REDIS_URL, clean_env
from bench.row1_throughput import COMMON_FLAGS, INI, Worker, plain_command

PREFIX = "solo-investigation-"
DB = 13
POLL = 0.002


def redis_url() -> str:
    return REDIS_URL.rsplit("/", 1)[0] + f"/{DB}"


def main(argv: list[str] | None = None) -> int:
    import redis
    from celery import Celery

    parser = argparse.ArgumentParser(prog="python -m bench.solo_stall_redis")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--cap", type=float, default=20.0)
    args = parser.parse_args(argv)
    url = redis_url()
    client = redis.Redis.from_url(url)
    sender = Celery("solo-investigation-sender", broker=url, set_as_current=False)
    queues: list[str] = []
    results: dict[str, list[float]] = {"plain": [], "plain-fix": []}
    with tempfile.TemporaryDirectory(prefix=PREFIX) as tmp:
        folder = Path(tmp)
        ini = folder / "redis.ini"
        text = INI.format(broker=url, queue=f"{PREFIX}default").replace(
            'celery.broker_transport_options = {"confirm_publish": true}\n', ""
        )
        ini.write_text(text, encoding="utf-8")
        settings = plain_app.settings_for(str(ini))
        settings["worker_enable_remote_control"] = False  # no pidbox bindings left in the database
        env = clean_env(PYTHONPATH=f"{BENCH}:{BENCH.parent}", BENCH_PLAIN_SETTINGS=json.dumps(settings))
        try:
            for round_ in range(args.runs):
                for label, app in (("plain", "plain_app"), ("plain-fix", "solo_fixed_app")):
                    queue = f"{PREFIX}redis-{uuid.uuid4().hex[:8]}"
                    queues.append(queue)
                    with sender.producer_or_acquire() as producer:
                        for _ in range(args.tasks):
                            sender.send_task("bench.noop", queue=queue, producer=producer)
                    node = f"{PREFIX}{label}-{uuid.uuid4().hex[:8]}@bench"
                    command = plain_command(["-P", "solo", *COMMON_FLAGS, "-n", node, "-Q", queue])
                    command[2] = app
                    worker = Worker(label, command, env, folder / f"{node[:40]}.log", node)
                    worker.start()
                    try:
                        start = None
                        drained = args.tasks
                        deadline = time.monotonic() + 60 + args.cap
                        while True:
                            count = client.llen(queue)
                            now = time.perf_counter()
                            if start is None and count < args.tasks:
                                start, drained = now, count
                                cap_at = now + args.cap
                            if count == 0 or (start is not None and now > cap_at):
                                break
                            worker.check()
                            if time.monotonic() > deadline:
                                raise RuntimeError(
                                    f"{label} never consumed:\n{worker.log.read_text()[-2000:]}"
                                )
                            time.sleep(POLL)
                        assert start is not None
                        rate = (drained - count) / (now - start)
                    finally:
                        worker.stop()  # warm: the message in hand is acked, kombu's unacked hash empties
                    results[label].append(rate)
                    capped = " (capped)" if count else ""
                    print(f"round {round_ + 1} {label:>10}: {rate:7,.0f} tasks/s{capped}", flush=True)
        finally:
            for queue in queues:
                client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
    for label, rates in results.items():
        print(
            f"{label:>10}: median {statistics.median(rates):,.0f}, range {min(rates):,.0f}-{max(rates):,.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
