"""Synthetic extensions: real ``*.dist-info`` folders and modules, as pip would leave them.

``make_site(folder, n)`` writes ``n`` distributions ``bench-ext-K`` (K = 0..n-1)
into ``folder``, each with

* ``bench_ext_K-1.0.dist-info/{METADATA,entry_points.txt,RECORD}``, whose
  entry point is ``[host.celery_task] tasks = bench_ext_K.celery_import:task_imports``
  (the CKAN pattern);
* the package ``bench_ext_K/`` with ``celery_import.py`` and ``tasks.py``
  holding one task, ``bench.extK.noop``.

Put ``folder`` on ``PYTHONPATH`` (or ``sys.path``) and every discovery
mechanism sees them: importlib.metadata, pkg_resources, stevedore and the
host's own. ``bench_site(folder)`` adds ``bench-tasks``, the extension with
the no-op task the worker rows drain (``bench.noop``).
"""

from __future__ import annotations

from pathlib import Path

GROUP = "host.celery_task"

TASKS = """\
from core.celery_app import celery


@celery.task(name="bench.ext{k}.noop")
def noop():
    return None
"""

CELERY_IMPORT = """\
def task_imports():
    return ["bench_ext_{k}.tasks"]
"""

BENCH_TASKS = """\
\"\"\"The no-op task the worker benchmarks drain, as an extension of the host.\"\"\"

from core.celery_app import celery


@celery.task(name="bench.noop")
def noop(*args, **kwargs):
    return None


@celery.task(name="bench.add")
def add(x, y):
    return x + y
"""


def write_distribution(
    folder: Path, name: str, entry_points: dict[str, dict[str, str]], files: dict[str, str]
) -> None:
    """One distribution, exactly as pip would leave it in site-packages."""
    dist_info = folder / f"{name.replace('-', '_')}-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n", encoding="utf-8"
    )
    lines: list[str] = []
    for group, eps in entry_points.items():
        lines += [f"[{group}]", *(f"{k} = {v}" for k, v in eps.items()), ""]
    (dist_info / "entry_points.txt").write_text("\n".join(lines), encoding="utf-8")
    for relative, text in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    record = [f"{dist_info.name}/{f},," for f in ("METADATA", "entry_points.txt", "RECORD")]
    (dist_info / "RECORD").write_text(
        "\n".join([*record, *(f"{r},," for r in files)]) + "\n", encoding="utf-8"
    )


def make_site(folder: Path, n: int) -> Path:
    """``n`` synthetic extensions in ``folder`` (created); returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        package = f"bench_ext_{k}"
        write_distribution(
            folder,
            f"bench-ext-{k}",
            {GROUP: {"tasks": f"{package}.celery_import:task_imports"}},
            {
                f"{package}/__init__.py": "",
                f"{package}/celery_import.py": CELERY_IMPORT.format(k=k),
                f"{package}/tasks.py": TASKS.format(k=k),
            },
        )
    return folder


def bench_site(folder: Path, n: int = 0, tasks: str = BENCH_TASKS) -> Path:
    """The ``bench-tasks`` extension (``bench.noop``, ``bench.add``) plus ``n`` synthetic ones.

    :param tasks: the source of its task module.
    """
    make_site(folder, n)
    write_distribution(
        folder,
        "bench-tasks",
        {GROUP: {"tasks": "bench_tasks.celery_import:task_imports"}},
        {
            "bench_tasks/__init__.py": "",
            "bench_tasks/celery_import.py": 'def task_imports():\n    return ["bench_tasks.tasks"]\n',
            "bench_tasks/tasks.py": tasks,
        },
    )
    return folder
