"""Row 4: discovering N installed extensions, the host's way and three others.

For N = 10, 100 and 1,000 synthetic extensions (real ``*.dist-info`` folders
on ``PYTHONPATH``), each measurement is one fresh Python process that finds
the ``host.celery_task`` entry points, calls each ``task_imports()`` and
imports every module it returns; only that part is timed, inside the process:

* **host**: :func:`core.startup.load_plugins`, then
  :func:`core.discovery.discover` with those plugins, on a fresh, configured
  ``HostCelery`` (as ``tests/test_discovery.py`` sets one up): plugin loading
  makes the scan of the installed distributions that discovery uses, so both
  are timed, as a worker runs them;
* **floor**: the bare loop, ``importlib.metadata.entry_points(group=...)``,
  ``ep.load()()``, ``importlib.import_module`` each;
* **pkg_resources**: ``iter_entry_points``, as CKAN did; its import is timed
  too, since importing it is what scans ``sys.path``;
* **stevedore**: an ``ExtensionManager`` over the group, then the same calls
  and imports (its entry-point cache lives in the row's folder, warmed by the
  unrecorded first run like everything else).

Every side runs with the same configured, finalized app set up before the
clock starts, so each task module's ``@celery.task`` does the same work; each
side must register all N tasks or the row fails. The installed example-ext is
found by every side alike (N + 1 entry points). Python's bytecode cache is on,
as in any installation: the unrecorded first run of each side writes it.

Each side runs 10 times at N = 10 and 100 in a full run (``--runs`` if more),
otherwise ``--runs`` (5) times.

Targets: host <= 1.3x the floor at every N, and a linear cost: the host's time
per extension at N = 1,000 within 1.5x of that at 100. ``--quick`` (and
``--smoke``) measures N = 10 and 100 only, and judges linearity there as a
report.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.harness import Comparison, Context, alternate
from bench.row3_boot import measured_env
from bench.synthetic import make_site

ROW = 4
#: side -> label in the table
SIDES = {
    "host": "host load_plugins() + discover()",
    "floor": "importlib.metadata loop (floor)",
    "pkg_resources": "pkg_resources.iter_entry_points",
    "stevedore": "stevedore ExtensionManager",
}
TARGET = 1.3
NOTES = {
    "pkg_resources": "pkg_resources: its import is timed too, since importing it is what scans sys.path",
    "stevedore": "stevedore: its entry-point cache on disk is warm after the unrecorded first run",
}
LINEAR = 1.5
#: Runs per side at N = 10 and 100 in a full run.
SMALL_RUNS = 10

#: One measurement: ``python discover_once.py SIDE INI`` prints JSON with the seconds.
DRIVER = """\
import importlib
import json
import sys
import time
import warnings

side, ini = sys.argv[1], sys.argv[2]
GROUP = "host.celery_task"

import core.celery_app
from core.celery_app import HostCelery
from core.startup import configure_app
from core.config import load_config

app = HostCelery("host", set_as_current=False)
core.celery_app.celery = app  # what the task modules' `from core.celery_app import celery` gets
config = load_config(ini, environ={})
configure_app(app, config)
app.finalize()


def load_all(functions):
    count = 0
    for task_imports in functions:
        for module in task_imports():
            importlib.import_module(module)
        count += 1
    return count


if side == "host":
    from core.discovery import discover
    from core.startup import load_plugins

    start = time.perf_counter()
    found = discover(app, config, plugin_manager=load_plugins(config))
    seconds = time.perf_counter() - start
    if found.errors:
        sys.exit("\\n".join(map(str, found.errors)))
    extensions = len(found.active)
elif side == "floor":
    from importlib.metadata import entry_points

    start = time.perf_counter()
    extensions = load_all(ep.load() for ep in entry_points(group=GROUP))
    seconds = time.perf_counter() - start
elif side == "pkg_resources":
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its own deprecation warning
        import pkg_resources
    extensions = load_all(ep.load() for ep in pkg_resources.iter_entry_points(GROUP))
    seconds = time.perf_counter() - start
elif side == "stevedore":
    from stevedore import ExtensionManager

    start = time.perf_counter()
    manager = ExtensionManager(GROUP, propagate_map_exceptions=True)
    extensions = load_all(ext.plugin for ext in manager)
    seconds = time.perf_counter() - start
else:
    sys.exit(f"unknown side {side!r}")
tasks = sum(1 for name in app.tasks if name.startswith("bench.ext"))
print(json.dumps({"seconds": seconds, "extensions": extensions, "tasks": tasks}))
"""


def sizes(ctx: Context) -> list[int]:
    return [10, 100] if ctx.quick else [10, 100, 1000]


def runs(ctx: Context, n: int) -> int:
    """Small N takes milliseconds, where a millisecond of noise is 10 %: more samples in full runs."""
    return ctx.runs if ctx.quick or n >= 1000 else max(ctx.runs, SMALL_RUNS)


def run(ctx: Context) -> Iterator[Comparison]:
    folder = ctx.folder("row4")
    driver = folder / "discover_once.py"
    driver.write_text(DRIVER, encoding="utf-8")
    ini = folder / "discovery.ini"
    ini.write_text("[app:main]\ncelery.broker_url = memory://\n", encoding="utf-8")
    per_extension: dict[int, list[float]] = {}
    for n in sizes(ctx):
        site = make_site(folder / f"site-{n}", n)
        env = measured_env(PYTHONPATH=str(site), XDG_CACHE_HOME=str(folder / "cache"))
        seen: dict[str, tuple[int, int]] = {}
        measures = {side: _measure(side, driver, ini, env, folder, n, seen) for side in SIDES}
        samples = alternate(measures, runs(ctx, n))
        host = [s * 1000 for s in samples["host"]]
        per_extension[n] = [ms * 1000 / n for ms in host]  # µs
        extensions = seen["host"][0]
        for side in ("floor", "pkg_resources", "stevedore"):
            other = [s * 1000 for s in samples[side]]
            c = Comparison(
                row=ROW,
                measure=f"discovery of {n:,} extensions",
                unit="ms",
                host_label=SIDES["host"],
                host=host,
                other_label=SIDES[side],
                other=other,
                target=f"<= {TARGET}x" if side == "floor" else "report",
                extra={"n": n, "entry_points": extensions},
            )
            if side == "floor":
                assert c.ratio is not None
                c.met = c.ratio <= TARGET
                c.note = (
                    f"{extensions} entry points (N + the installed example-ext); per extension: host "
                    f"{c.host_median * 1000 / n:.0f} µs, floor {(c.other_median or 0) * 1000 / n:.0f} µs"
                )
            elif n == sizes(ctx)[0]:
                c.note = NOTES[side]
            yield c
    yield _linearity(ctx, per_extension)


def _linearity(ctx: Context, per_extension: dict[int, list[float]]) -> Comparison:
    big, small = (1000, 100) if 1000 in per_extension else (100, 10)
    c = Comparison(
        row=ROW,
        measure=f"host discovery time per extension, N = {big:,} vs {small:,}",
        unit="µs",
        host_label=f"host, N={big:,}",
        host=per_extension[big],
        other_label=f"host, N={small:,}",
        other=per_extension[small],
        target=f"<= {LINEAR}x (linear)",
    )
    shown = ", ".join(f"N={n:,}: {statistics.median(v):.0f} µs" for n, v in sorted(per_extension.items()))
    if ctx.quick:
        c.target = f"report (full run: N=1,000 vs 100 <= {LINEAR}x)"
        c.note = f"per extension {shown}; N=1,000 is measured in full runs only"
    else:
        assert c.ratio is not None
        c.met = c.ratio <= LINEAR
        c.note = f"per extension {shown}: " + ("linear" if c.met else "grows faster than linear")
    return c


def _measure(
    side: str,
    driver: Path,
    ini: Path,
    env: dict[str, str],
    cwd: Path,
    n: int,
    seen: dict[str, tuple[int, int]],
) -> Callable[[], float]:
    def measure() -> float:
        done = subprocess.run(
            [sys.executable, str(driver), side, str(ini)],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            raise RuntimeError(f"row 4, {side}, N={n}: exit {done.returncode}\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        if result["tasks"] != n:
            raise RuntimeError(f"row 4, {side}, N={n}: registered {result['tasks']} of {n} tasks")
        seen[side] = (result["extensions"], result["tasks"])
        return float(result["seconds"])

    return measure
