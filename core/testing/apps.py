"""A test's own app: a fresh ``HostCelery`` standing in for the shared one, and plugins registered in-process.

Task modules write ``from core.celery_app import celery`` and register their
tasks on that app when they are imported. For one test,
:func:`fresh_shared_app` puts a new, unconfigured app in its place, so that
whatever the test configures -- through the fixture ``host_app``, ``host
tasks`` run in-process, ``plugins.plugin_config()`` -- configures that app
and nothing another test sees. Four things make that hold:

* modules already imported that hold tasks or an app (``from core.celery_app
  import celery``) are set aside, so that discovery imports them again, onto
  the test's app; afterwards every module the test imported is dropped --
  those of the framework, the standard library and site-packages excepted --
  and the set-aside ones put back, so that the next test imports its own
  (a task object bound to the shared app, imported by a test module, keeps
  running on the shared app: get tasks from ``host_app.tasks``);
* ``@celery.task`` also queues a process-wide callback that registers the task
  on every app finalized later ("shared" tasks,
  ``celery._state._on_app_finalizers``); only Celery's built-in ones are kept
  during the test, or the tasks of every module imported so far would land
  on the test's app;
* the test's app is Celery's default and current app (``celery.current_app``,
  ``@shared_task``) during the test;
* the shared app, and Celery's default and current apps, are put back afterwards.
"""

from __future__ import annotations

import os
import site
import sys
import sysconfig
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.app import HostCelery

#: Modules of the framework and its libraries never hold an extension's tasks.
_NOT_EXTENSIONS = ("core.", "plugins.", "celery.", "kombu.", "_pytest.", "pytest.")
#: Packages kept in ``sys.modules`` after a test, wherever they are installed (``core`` and
#: ``plugins`` may be a source checkout): importing them again would make a second copy of their
#: classes and of the state the running session holds.
_KEPT = ("core", "plugins", "celery", "kombu", "_pytest", "pytest", "pluggy")


def holds_tasks(name: str, module: object) -> bool:
    """The module ``name`` has a Celery task (or the lazy proxy ``@celery.task`` returns) or an app.

    ``type()`` is read, never ``isinstance()``: that would evaluate a lazy
    task, finalizing (and configuring) the app it belongs to.
    """
    from celery import Celery, Task
    from celery.local import PromiseProxy

    if not isinstance(module, types.ModuleType) or name == "__main__":
        return False
    if name.startswith(_NOT_EXTENSIONS) or name in ("core", "plugins", "celery"):
        return False
    try:
        values = list(vars(module).values())
    except TypeError:
        return False
    return any(issubclass(type(value), (Task, PromiseProxy, Celery)) for value in values)


def _library_folders() -> tuple[str, ...]:
    """The standard library and site-packages folders of this interpreter."""
    paths = sysconfig.get_paths()
    folders = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    folders.update(site.getsitepackages())
    return tuple(os.path.join(folder, "") for folder in folders)


def from_a_library(name: str, module: object, libraries: tuple[str, ...]) -> bool:
    """The module belongs to the framework, is built in, or lives in the stdlib or site-packages.

    Those stay imported after a test: some cannot be imported twice (C
    extensions), and a second copy of a library's classes breaks ``isinstance``.
    An extension's modules, the test's own and those ``installed_extension``
    wrote are elsewhere (a source checkout installed in development mode too).
    """
    if name.partition(".")[0] in _KEPT:
        return True
    locations = [getattr(module, "__file__", None), *(getattr(module, "__path__", None) or ())]
    files = [os.path.abspath(location) for location in locations if isinstance(location, str)]
    return all(file.startswith(libraries) for file in files)


def _set_in_parent(name: str, module: types.ModuleType | None) -> None:
    """``import a.b`` sets ``a.b``: keep the attribute pointing at the module ``sys.modules`` has."""
    parent_name, _, child = name.rpartition(".")
    parent = sys.modules.get(parent_name) if parent_name else None
    if parent is None:
        return
    if module is not None:
        setattr(parent, child, module)
    elif isinstance(getattr(parent, child, None), types.ModuleType):
        delattr(parent, child)


@contextmanager
def fresh_shared_app() -> Iterator[HostCelery]:
    """A fresh, unconfigured :class:`HostCelery` as ``core.celery_app.celery``; all put back afterwards."""
    from celery import _state as celery_state

    import core.celery_app

    shared = core.celery_app.celery
    fresh = HostCelery("host", set_as_current=False)
    finalizers = celery_state._on_app_finalizers
    saved_finalizers = set(finalizers)
    saved_default, saved_current = celery_state.default_app, getattr(celery_state._tls, "current_app", None)
    set_aside = {name: module for name, module in list(sys.modules.items()) if holds_tasks(name, module)}
    for name in set_aside:
        del sys.modules[name]
    before = set(sys.modules)
    finalizers.clear()
    finalizers.update(cb for cb in saved_finalizers if cb.__module__ == "celery.app.builtins")
    core.celery_app.celery = fresh
    fresh.set_default()
    fresh.set_current()
    try:
        yield fresh
    finally:
        core.celery_app.celery = shared
        celery_state.set_default_app(saved_default)
        celery_state._set_current_app(saved_current)
        finalizers.clear()
        finalizers.update(saved_finalizers)
        _drop_imported_since(before, set_aside)
        _disconnect(fresh)


def _drop_imported_since(before: set[str], set_aside: dict[str, types.ModuleType]) -> None:
    """Drop the modules imported since ``before`` was taken (libraries kept); put ``set_aside`` back."""
    libraries = _library_folders()
    for name in sorted(set(sys.modules) - before, reverse=True):  # a package's modules before it
        module = sys.modules[name]
        if holds_tasks(name, module) or not from_a_library(name, module, libraries):
            del sys.modules[name]
            _set_in_parent(name, set_aside.get(name))
    for name, module in set_aside.items():
        sys.modules[name] = module
        _set_in_parent(name, module)


def _disconnect(app: HostCelery) -> None:
    """Undo what configuring ``app`` connected process-wide (its signal receivers) and close its pool."""
    from core import signals
    from core.plugin_manager import HostPluginManager

    app.host_config = None  # no admin to mail: core.notify disconnects its receivers
    signals.connect(app, HostPluginManager())  # no plugin: every hook's receiver disconnected
    app.close()


def configure(app: HostCelery, ini: Path) -> HostCelery:
    """Configure ``app`` from ``ini`` and import its tasks, as ``host celeryd`` does before starting."""
    from core.startup import Host

    Host(app, str(ini)).tasks_or_fail()
    return app


def reconfigure(app: HostCelery, ini: Path) -> HostCelery:
    """Configure ``app`` again (a plugin or extension added during the test), and forget what Celery
    built from its previous configuration."""
    forget_built(app)
    return configure(app, ini)


def forget_built(app: HostCelery) -> None:
    """Drop what Celery built from ``app.conf`` and keeps, to be built from the new one when next used.

    A new configuration (``config_from_object(force=True)``) replaces
    ``app.conf`` only: ``app.amqp`` keeps the queues, the router and the
    default exchange it made from the old one (only ``conf.update()`` of
    ``task_routes`` flushes the router, ``AMQP._handle_conf_update``), and the
    connection pool, result backend, control and events keep their URLs.
    """
    for built in ("amqp", "control", "events"):  # Celery's cached properties (celery/app/base.py)
        app.__dict__.pop(built, None)
    app._pool = None
    app._backend_cache = None
    if hasattr(app._local, "backend"):
        del app._local.backend


@contextmanager
def registered_plugins() -> Iterator[dict[str, Any]]:
    """The plugin objects registered in this process, emptied at the end (``host_plugin``)."""
    from core.plugin_manager import registered

    saved = dict(registered)
    try:
        yield registered
    finally:
        registered.clear()
        registered.update(saved)
