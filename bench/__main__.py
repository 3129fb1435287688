"""``python -m bench [--quick | --smoke] [--rows 1,2,...] [--output FILE]``: run the rows, print the table.

A full run writes bench/RESULTS.md; a quick or smoke run prints only, unless
given ``--output``. ``--smoke`` is the test suite's size (tests/test_bench.py):
every row with the smallest workloads and one run a side, to prove that the
harness works; its figures mean nothing. The exit status is 1 when a row could
not be measured (a missed target is reported in the table, not an error).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench.harness import BENCH, MIN_RUNS, Comparison, Context, report, table

ROWS = {
    1: "bench.row1_throughput",
    2: "bench.row2_latency",
    3: "bench.row3_boot",
    4: "bench.row4_discovery",
    5: "bench.row5_cli",
    6: "bench.row6_bulk",
    7: "bench.row7_embedded",
    8: "bench.row8_memory",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller workloads: the whole run under 2 minutes")
    size.add_argument(
        "--smoke",
        action="store_true",
        help="the smallest workloads, one run a side: proves every row works, measures nothing",
    )
    parser.add_argument(
        "--rows", default=",".join(map(str, ROWS)), help="which rows, e.g. 1,6 (default: all)"
    )
    parser.add_argument("--runs", type=int, default=MIN_RUNS, help="runs per side (at least 5; --smoke: 1)")
    parser.add_argument("--output", type=Path, help="write the report here (full runs: bench/RESULTS.md)")
    args = parser.parse_args(argv)
    rows = [int(r) for r in args.rows.split(",") if r.strip()]
    output = args.output or (None if args.quick or args.smoke else BENCH / "RESULTS.md")

    started = time.perf_counter()
    comparisons: list[Comparison] = []
    broken: list[int] = []
    with tempfile.TemporaryDirectory(prefix="host-bench-") as tmp:
        ctx = Context(quick=args.quick, workdir=Path(tmp), runs=args.runs, smoke=args.smoke)
        for row in rows:
            begun = time.perf_counter()
            print(f"row {row}: {ROWS[row]} ...", file=sys.stderr, flush=True)
            try:
                found = list(importlib.import_module(ROWS[row]).run(ctx))
            except Exception:
                traceback.print_exc()
                broken.append(row)
                continue
            comparisons += found
            print(table(found), file=sys.stderr)
            print(f"row {row}: {time.perf_counter() - begun:.1f} s", file=sys.stderr, flush=True)
    text = report(comparisons, ctx, time.perf_counter() - started)
    print(text)
    if output is not None:
        output.write_text(text, encoding="utf-8")
        print(f"written to {output}", file=sys.stderr)
    if broken:
        print(f"rows that could not be measured: {', '.join(map(str, broken))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
