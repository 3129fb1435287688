"""The benchmark harness works: ``make bench-quick``'s command, at the smoke size, produces every row.

Smoke tier only: it proves the harness runs, and asserts no timing. The
figures are in bench/RESULTS.md, from ``make bench``. The test runs the
command of ``make bench-quick`` with ``--smoke`` for ``--quick``: every row,
side and code path, with the smallest workloads and one run a side
(bench/README.md), in a fraction of the quick run's time.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess

import pytest

from conftest import ROOT
from worker import host_env

pytestmark = [pytest.mark.smoke, pytest.mark.rabbitmq, pytest.mark.redis, pytest.mark.e2e]


def bench_quick_command() -> list[str]:
    """What ``make bench-quick`` runs (its last line: the packages it needs come with the tests')."""
    dry = subprocess.run(
        ["make", "--no-print-directory", "--dry-run", "bench-quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dry.returncode == 0, dry.stderr
    command = shlex.split(dry.stdout.splitlines()[-1])
    assert command[1:] == ["-m", "bench", "--quick"], dry.stdout
    return command


def test_make_bench_quick_produces_every_row() -> None:
    command = [*bench_quick_command()[:-1], "--smoke"]
    env = {**host_env(), "PATH": os.environ["PATH"]}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    rows = {int(m) for m in re.findall(r"^\| (\d) \|", done.stdout, re.MULTILINE)}
    assert rows == set(range(1, 9)), done.stdout
    assert "Machine: " in done.stdout
    assert not re.search(r"\| (nan|inf) ", done.stdout)
