"""Row 6: bulk enqueue of 10,000 tasks.

``send_many`` (the toolkit's bulk API; ``host send --many`` uses it) against a
loop of ``apply_async`` and against raw kombu ``publish`` of ready-made
messages (the limit of the wire), all in one process, alternating, each run
onto an empty queue of the run's own on RabbitMQ.

Measured twice: with production.ini's settings (publisher confirms,
persistent messages, Redis results), where the target applies, and without
publisher confirms, to show what is left when the broker's round trips are
not the cost.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

from bench.harness import Comparison, Context, alternate, delete_rabbitmq

INI = """
[app:main]
celery.broker_url = {broker}
celery.result_backend = {results}
celery.task_acks_late = true
celery.task_default_delivery_mode = persistent
{confirm}
host.site_id = {site}
"""


def run(ctx: Context) -> Iterator[Comparison]:
    n = ctx.scale(10_000, 1_000, smoke=100)
    for confirm in (True, False):
        yield from _measure(ctx, n, confirm)


def _measure(ctx: Context, n: int, confirm: bool) -> Iterator[Comparison]:
    from kombu import Connection, Exchange, Producer

    from core.bulk import send_many
    from core.celery_app import HostCelery
    from core.config import load_config
    from core.startup import configure_app

    site = f"bench{uuid.uuid4().hex[:8]}"
    queue = f"host:{site}:celery"
    folder = ctx.folder("row6")
    ini = folder / "bench.ini"
    option = 'celery.broker_transport_options = {"confirm_publish": true}' if confirm else ""
    ini.write_text(INI.format(broker=ctx.rabbitmq_url, results=ctx.redis_url, confirm=option, site=site))
    app = configure_app(HostCelery("bench-bulk", set_as_current=False), load_config(ini, environ={}))

    @app.task(name="bench.noop")
    def noop(*args: object) -> None:
        return None

    def purge() -> None:
        with app.connection_for_write() as connection:
            connection.default_channel.queue_purge(queue)

    def apply_async_loop() -> float:
        start = time.perf_counter()
        for i in range(n):
            noop.apply_async((i,))
        elapsed = time.perf_counter() - start
        purge()
        return n / elapsed

    def bulk() -> float:
        start = time.perf_counter()
        ids = send_many(app, "bench.noop", ([i] for i in range(n)))
        elapsed = time.perf_counter() - start
        assert len(ids) == n
        purge()
        return n / elapsed

    def raw_kombu() -> float:
        # Ready-made bodies and headers: only kombu's publish is timed.
        bodies = [json.dumps([[i], {}, {"callbacks": None, "errbacks": None}]) for i in range(n)]
        headers = [{"lang": "py", "task": "bench.noop", "id": str(uuid.uuid4())} for _ in range(n)]
        with Connection(ctx.rabbitmq_url) as connection:
            producer = Producer(connection.default_channel, exchange=Exchange(""))
            start = time.perf_counter()
            for body, header in zip(bodies, headers, strict=True):
                producer.publish(
                    body,
                    routing_key=queue,
                    headers=header,
                    content_type="application/json",
                    content_encoding="utf-8",
                    delivery_mode=2,
                )
            elapsed = time.perf_counter() - start
        purge()
        return n / elapsed

    try:
        noop.apply_async((0,))  # declares the queue
        purge()
        samples = alternate({"loop": apply_async_loop, "bulk": bulk, "raw": raw_kombu}, ctx.runs)
    finally:
        app.close()
        delete_rabbitmq([queue], [f"host:{site}:{e}" for e in ("celery", "celeryev", "celery.pidbox")])

    settings = "publisher confirms (production.ini)" if confirm else "no publisher confirms"
    loop = Comparison(
        row=6,
        measure=f"bulk enqueue of {n:,} tasks, {settings}",
        unit="tasks/s",
        host_label="send_many",
        host=samples["bulk"],
        other_label="apply_async loop",
        other=samples["loop"],
        target=">= 3x" if confirm else "report",
    )
    if confirm:
        loop.met = (loop.ratio or 0) >= 3
    elif (loop.ratio or 0) < 3:
        loop.note = (
            "without confirms neither side waits for the broker: what is left is Celery's own work per "
            "message (send_task builds and routes each one), which send_many keeps so that every message "
            "is exactly what send_task sends"
        )
    yield loop
    yield Comparison(
        row=6,
        measure=f"bulk enqueue of {n:,} tasks, {settings}",
        unit="tasks/s",
        host_label="send_many",
        host=samples["bulk"],
        other_label="raw kombu publish (no confirms; the limit)",
        other=samples["raw"],
        target="report",
    )
