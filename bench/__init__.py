"""Benchmarks: the host next to plain Celery, raw kombu and CKAN's discovery, in one run.

``make bench`` (full) and ``make bench-quick`` (under two minutes) run
``python -m bench``; ``python -m bench --smoke`` (the test suite's) proves
every row works. See bench/README.md.
"""
