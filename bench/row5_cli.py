"""Row 5: how long the ``host`` command takes to start, next to ``celery --version``.

Wall time of one subprocess each, the four alternating (A B C D ...):

* ``host --help``, run in a folder whose ``development.ini`` enables no
  plugin, as in a project folder (so it also looks for plugin commands);
* ``host --version``;
* ``host tasks --config INI`` with 10 synthetic extensions installed (the
  installed example-ext disabled in the ini);
* ``celery --version``, the least a Celery command does.

Target: ``host --help`` <= 0.5x ``celery --version``; the others are reported.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.harness import CELERY, HOST, Comparison, Context, alternate
from bench.row3_boot import measured_env
from bench.synthetic import make_site

ROW = 5
EXTENSIONS = 10
TARGET = 0.5


def run(ctx: Context) -> Iterator[Comparison]:
    folder = ctx.folder("row5")
    site = make_site(folder / "site", EXTENSIONS)
    ini = folder / "development.ini"
    ini.write_text(
        "[app:main]\ncelery.broker_url = memory://\nhost.celery_task.disabled = example-ext\n",
        encoding="utf-8",
    )
    env = measured_env(PYTHONPATH=str(site))
    commands = {
        "host --help": [HOST, "--help"],
        "host --version": [HOST, "--version"],
        f"host tasks ({EXTENSIONS} extensions)": [HOST, "tasks", "--config", str(ini)],
        "celery --version": [CELERY, "--version"],
    }
    samples = alternate({label: _wall(command, env, folder) for label, command in commands.items()}, ctx.runs)
    celery = [s * 1000 for s in samples.pop("celery --version")]
    for label, seconds in samples.items():
        c = Comparison(
            row=ROW,
            measure="CLI start (wall time)",
            unit="ms",
            host_label=label,
            host=[s * 1000 for s in seconds],
            other_label="celery --version",
            other=celery,
            target=f"<= {TARGET}x" if label == "host --help" else "report",
        )
        if label == "host --help":
            assert c.ratio is not None
            c.met = c.ratio <= TARGET
        yield c


def _wall(command: list[str], env: dict[str, str], cwd: Path) -> Callable[[], float]:
    def measure() -> float:
        start = time.perf_counter()
        done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)}: exit {done.returncode}\n{done.stderr[-3000:]}")
        if "tasks" in command and done.stdout.count("bench.ext") != EXTENSIONS:
            raise RuntimeError(f"host tasks listed other than {EXTENSIONS} tasks:\n{done.stdout}")
        return seconds

    return measure
