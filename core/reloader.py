"""``host celeryd --reload``: restart the worker when its code or its ini file changes.

Celery removed ``--autoreload`` in 4.0; its users wrap the worker in
watchmedo. Here the ``host celeryd --reload`` process is a small supervisor:
it runs the worker as a child process (``host celeryd`` without ``--reload``),
watches the files that make the worker what it is with watchfiles, and on a
change stops the child with a warm shutdown (SIGTERM: running tasks finish)
and starts a new one. watchfiles groups a burst of saves into one change, so
a burst causes one restart.

What is watched (:func:`watched_paths`): the folders of the ``core`` and
``plugins`` packages, the package folder of every extension (the modules
discovery imported, and the package of each ``host.celery_task`` entry point,
even a broken one, so that fixing it restarts the worker), the package of
every enabled plugin, and the ini file with the files it builds on
(``use = config:...``). Python files and ini files count; the rest of those
folders (``__pycache__``, editor swap files) does not.

A worker that stops on its own (a typo in a task module: exit 2) is not
restarted in a loop: the reloader says so and waits for the next change.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from core.errors import ConfigError

if TYPE_CHECKING:
    from core.startup import Host

logger = logging.getLogger("host.reload")

#: Seconds a warm shutdown may take before the worker is killed (its running tasks
#: are then delivered again, as after any worker loss).
STOP_TIMEOUT = 60.0


def watched_paths(h: Host) -> list[Path]:
    """The folders and files whose change restarts the worker, without duplicates, sorted."""
    from plugins import hookspecs  # the package's folder; the framework never imports the toolkit

    folders = {Path(__file__).resolve().parent, Path(hookspecs.__file__).resolve().parent}
    modules: set[str] = set()
    for ext in h.discovery.extensions:
        modules.update(ext.modules)
        modules.add(_entry_point_module(ext.entry_point))
    for plugin in h.plugins.active:
        modules.add(str(getattr(plugin.obj, "__module__", None) or getattr(plugin.obj, "__name__", "")))
        modules.add(_entry_point_module(plugin.entry_point))
    modules.discard("")
    for module in modules:
        folder = package_folder(module)
        if folder is not None:
            folders.add(folder)
    # A folder inside another is watched with it.
    kept = [f for f in folders if not any(f != other and other in f.parents for other in folders)]
    files = {Path(f).resolve() for f in (h.config.files or (h.config.path,))}
    return sorted(kept) + sorted(files)


def _entry_point_module(described: str | None) -> str:
    """The module of an entry point as :func:`core.entrypoints.describe` shows it (``G:N = module:attr``)."""
    if not described or "=" not in described:
        return ""
    return described.split("=", 1)[1].split(":", 1)[0].strip()


def package_folder(module: str) -> Path | None:
    """The folder of ``module``'s top-level package (a single-file module: that file)."""
    top = module.split(".", 1)[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        locations = list(spec.submodule_search_locations)
        return Path(locations[0]).resolve() if locations else None
    if spec.origin and spec.origin not in ("built-in", "frozen"):
        # A single-file module: the file itself, not the folder (site-packages) it sits in.
        return Path(spec.origin).resolve()
    return None


class Reloader:
    """Runs ``command`` as a child process, and runs it anew when a watched file changes."""

    def __init__(self, command: Sequence[str], paths: Iterable[Path], echo: object = print) -> None:
        self.command = list(command)
        self.paths = list(paths)
        self.echo = echo
        self.stop = threading.Event()
        self.child: subprocess.Popen[bytes] | None = None

    def say(self, message: str) -> None:
        self.echo(f"host celeryd --reload: {message}")  # type: ignore[operator]

    def run(self) -> int:
        """Until SIGTERM or SIGINT: returns the last worker's exit status."""
        try:
            import watchfiles
        except ModuleNotFoundError as e:  # pragma: no cover - a dependency of the framework
            raise ConfigError(
                "host celeryd --reload needs watchfiles, which is not installed",
                hint="pip install watchfiles",
            ) from e
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        watch_filter = watchfiles.PythonFilter(extra_extensions=(".ini",))
        shown = ", ".join(str(p) for p in self.paths)
        self.say(f"watching {shown}")
        status = 0
        try:
            self.start()
            while not self.stop.is_set():
                changes = self._next_change(watchfiles, watch_filter)
                if self.stop.is_set():
                    break
                if changes:
                    names = sorted({_shown(path) for _, path in changes})
                    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
                    self.say(f"{', '.join(names[:3])}{more} changed: restarting the worker (warm shutdown)")
                    self.stop_child()
                    if not self.stop.is_set():  # no new worker after a Ctrl+C during the restart
                        self.start()
        finally:
            exited = self.child is None or self.child.poll() is not None
            status = self.stop_child()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        # A stop someone asked for is 0, as for host celeryd, also when the last worker had
        # already stopped by itself (its status was said then).
        return 0 if self.stop.is_set() and exited else status

    def _next_change(self, watchfiles: object, watch_filter: object) -> set[tuple[object, str]]:
        """Wait for the next batch of changes (a fresh watch each time: an editor that saves by
        renaming replaces the ini file's inode), noticing meanwhile a worker that stopped by itself."""
        reported = False
        for changes in watchfiles.watch(  # type: ignore[attr-defined]
            *self.paths,
            watch_filter=watch_filter,
            stop_event=self.stop,
            rust_timeout=1000,
            yield_on_timeout=True,
            raise_interrupt=False,
        ):
            if changes:
                return changes  # type: ignore[no-any-return]
            if self.child is not None and self.child.poll() is not None and not reported:
                reported = True
                self.say(
                    f"the worker stopped by itself (exit status {self.child.returncode}): "
                    "waiting for a change to start it again"
                )
        return set()

    def start(self) -> None:
        # A session of its own: a Ctrl+C in the terminal reaches this process only, which
        # then asks the worker for one warm shutdown (two signals would make it a cold one).
        self.child = subprocess.Popen(self.command, start_new_session=True)

    def stop_child(self) -> int:
        child, self.child = self.child, None
        if child is None:
            return 0
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.say(f"the worker did not stop within {STOP_TIMEOUT:g} s: killing it")
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        return child.returncode

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop.set()


def _shown(path: str) -> str:
    """A changed file as the user named the folder: relative to the current one when inside it."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def child_command(config_path: str, worker_args: Sequence[str]) -> list[str]:
    """``host celeryd`` as the reloader runs it: the same ``host`` script, ini and options.

    The console script, not ``python -m core``: that would put the current
    folder first on ``sys.path``, where a project of its own may have a
    ``core`` package.
    """
    script = Path(sys.argv[0]) if Path(sys.argv[0]).name == "host" else Path(sys.executable).parent / "host"
    if script.is_file():
        command = [str(script.resolve())]
    else:  # not installed as a script: keep the current folder off sys.path where Python can (3.11+)
        command = [sys.executable, *(["-P"] if sys.version_info >= (3, 11) else []), "-m", "core"]
    return [*command, "celeryd", "--config", config_path, "--", *worker_args]
