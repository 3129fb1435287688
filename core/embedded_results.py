"""The embedded result store: Celery's database backend on a local SQLite file.

Used as ``celery.result_backend = embedded+sqlite:///%(here)s/data/results.sqlite``
(see :mod:`core.embedded`). Kept apart from the transport so that processes
which never read results do not import SQLAlchemy.
"""

from __future__ import annotations

import time
from typing import Any

from celery.backends.database import DatabaseBackend

from core.embedded import BUSY_TIMEOUT, sqlite_path


def _tune_sqlite(engine: Any) -> None:
    """Give every result-store connection WAL mode and a generous busy timeout."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


class ResultBackend(DatabaseBackend):
    """Celery's database result backend on a local SQLite file, tuned for it.

    Waiting for a result polls with a short first interval that doubles up to
    the caller's ``interval`` (Celery's default of 0.5 s would put half a
    second on every round trip).
    """

    def __init__(self, *args: Any, url: str | None = None, **kwargs: Any) -> None:
        if url:
            sqlite_path(url).parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("engine_callback", _tune_sqlite)
        super().__init__(*args, url=url, **kwargs)

    def wait_for(
        self,
        task_id: str,
        timeout: float | None = None,
        interval: float = 0.5,
        no_ack: bool = True,
        on_interval: Any = None,
    ) -> dict[str, Any]:
        from celery import states
        from celery.exceptions import TimeoutError

        self._ensure_not_eager()
        deadline = None if timeout is None else time.monotonic() + timeout
        nap = min(0.002, interval)
        while True:
            meta = self.get_task_meta(task_id)
            if meta["status"] in states.READY_STATES:
                return meta
            if on_interval:
                on_interval()
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("The operation timed out.")
                nap = min(nap, left)
            time.sleep(nap)
            nap = min(nap * 2, interval)
