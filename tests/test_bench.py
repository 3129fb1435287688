"""The benchmark harness works: ``make bench-quick`` exits 0 and produces every row.

Smoke tier only: it proves the harness runs, and asserts no timing. The
figures are in bench/RESULTS.md, from ``make bench``.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from conftest import ROOT
from worker import host_env

pytestmark = [pytest.mark.smoke, pytest.mark.rabbitmq, pytest.mark.redis, pytest.mark.e2e]


def test_make_bench_quick_produces_every_row() -> None:
    env = {**host_env(), "PATH": os.environ["PATH"]}
    done = subprocess.run(
        ["make", "--no-print-directory", "bench-quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    rows = {int(m) for m in re.findall(r"^\| (\d) \|", done.stdout, re.MULTILINE)}
    assert rows == set(range(1, 9)), done.stdout
    assert "Machine: " in done.stdout
    assert not re.search(r"\| (nan|inf) ", done.stdout)
