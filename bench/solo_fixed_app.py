"""bench/plain_app.py with the fix of core/solo_ack.py: ``celery -A solo_fixed_app worker -P solo``.

The plain Celery app the host is compared with, plus one line: the
:class:`core.solo_ack.SoloAck` consumer step. Used by ``python -m
bench.solo_stall`` (side ``plain-fix``); run it with ``bench/`` on
``PYTHONPATH``.
"""

from __future__ import annotations

from plain_app import app

from core.solo_ack import SoloAck

app.steps["consumer"].add(SoloAck)

__all__ = ["app"]
