"""Row 8: a worker's memory, the host's with 300 extensions next to plain Celery's with none.

The workers are row 3's (:func:`bench.row3_boot.boots`: ``-P prefork -c 1``,
the sides alternating, one set of runs serving both rows): once a worker's
first task is done -- its pool child ran it -- ``VmRSS`` is read from
``/proc/PID/status`` for the main process and for the one pool child.

* ``host celeryd`` with 300 synthetic extensions (plus ``bench-tasks``);
* plain ``celery -A plain_app worker`` with the same Celery settings.

Target: the host's RSS <= plain's + 30 MiB, for the main process and for the
child. Plain Celery importing the same 300 extensions the bare way is shown
too: the part of the difference that is the extensions' own code and tasks.

A pool child's ``VmRSS`` counts the pages it still shares with the main
process (copy-on-write, since the fork), so the child's line also notes its
private memory (USS, ``Private_Clean`` + ``Private_Dirty`` from
``/proc/PID/smaps_rollup``): what each further pool process adds.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator

from bench.harness import Comparison, Context
from bench.row3_boot import EXTENSIONS, FLOOR, PLAIN, Sample, boots

ROW = 8
BUDGET_MIB = 30.0


def run(ctx: Context) -> Iterator[Comparison]:
    measured = boots(ctx)
    for part, what in (("main_mib", "worker main process RSS"), ("child_mib", "pool child RSS (-c 1)")):

        def mib(label: str, part: str = part) -> list[float]:
            return [getattr(s, part) for s in measured[label]]

        c = Comparison(
            row=ROW,
            measure=what,
            unit="MiB",
            host_label=f"host celeryd, {EXTENSIONS} extensions",
            host=mib("host300"),
            other_label=PLAIN,
            other=mib("plain"),
            target=f"<= plain + {BUDGET_MIB:.0f} MiB",
        )
        difference = c.difference
        floor = Comparison(ROW, what, "MiB", FLOOR, mib("floor300"), PLAIN, mib("plain"), "report")
        floor_difference = floor.difference
        c.met = difference <= BUDGET_MIB
        c.note = (
            f"{difference:+.1f} MiB over plain Celery, read after the first task; plain Celery "
            f"importing the same {EXTENSIONS} extensions: {floor_difference:+.1f} MiB"
        )
        c.extra = {"difference_mib": difference, "floor_difference_mib": floor_difference}
        if part == "child_mib":
            private = {label: _private_mib(measured[label]) for label in ("host300", "plain")}
            if private["host300"] is not None and private["plain"] is not None:
                c.note += (
                    f"; its private memory (USS): {private['host300']:.1f} MiB against "
                    f"{private['plain']:.1f} MiB"
                )
                c.extra["private_mib"] = private
        yield c


def _private_mib(samples: list[Sample]) -> float | None:
    values = [s.child_private_mib for s in samples if s.child_private_mib is not None]
    return statistics.median(values) if values and len(values) == len(samples) else None
