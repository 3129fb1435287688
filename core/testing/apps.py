"""A test's own app: a fresh ``HostCelery`` standing in for the shared one, and plugins registered in-process.

Task modules write ``from core.celery_app import celery`` and register their
tasks on that app when they are imported. For one test,
:func:`fresh_shared_app` puts a new, unconfigured app in its place, so that
whatever the test configures -- through the fixture ``host_app``, ``host
tasks`` run in-process, ``plugins.plugin_config()`` -- configures that app
and nothing another test sees. Three things make that hold:

* modules already imported that hold tasks of another app are set aside, so
  that discovery imports them again, onto the test's app; afterwards the
  modules imported during the test are dropped and the set-aside ones put
  back (a task object bound to the shared app, imported by a test module,
  keeps running on the shared app: get tasks from ``host_app.tasks``);
* ``@celery.task`` also queues a process-wide callback that registers the task
  on every app finalized later ("shared" tasks,
  ``celery._state._on_app_finalizers``); only Celery's built-in ones are kept
  during the test, or the tasks of every module imported so far would land
  on the test's app;
* the shared app itself is put back afterwards.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.app import HostCelery

#: Modules of the framework and its libraries never hold an extension's tasks.
_NOT_EXTENSIONS = ("core.", "plugins.", "celery.", "kombu.", "_pytest.", "pytest.")


def holds_tasks(name: str, module: object) -> bool:
    """The module ``name`` has a Celery task (or the lazy proxy ``@celery.task`` returns) among its globals.

    ``type()`` is read, never ``isinstance()``: that would evaluate a lazy
    task, finalizing (and configuring) the app it belongs to.
    """
    from celery import Task
    from celery.local import PromiseProxy

    if not isinstance(module, types.ModuleType) or name == "__main__":
        return False
    if name.startswith(_NOT_EXTENSIONS) or name in ("core", "plugins", "celery"):
        return False
    try:
        values = list(vars(module).values())
    except TypeError:
        return False
    return any(issubclass(type(value), (Task, PromiseProxy)) for value in values)


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
    set_aside = {name: module for name, module in list(sys.modules.items()) if holds_tasks(name, module)}
    for name in set_aside:
        del sys.modules[name]
    before = set(sys.modules)
    finalizers.clear()
    finalizers.update(cb for cb in saved_finalizers if cb.__module__ == "celery.app.builtins")
    core.celery_app.celery = fresh
    try:
        yield fresh
    finally:
        core.celery_app.celery = shared
        finalizers.clear()
        finalizers.update(saved_finalizers)
        for name in set(sys.modules) - before:
            module = sys.modules[name]
            if holds_tasks(name, module):
                del sys.modules[name]
                _set_in_parent(name, set_aside.get(name))
        for name, module in set_aside.items():
            sys.modules[name] = module
            _set_in_parent(name, module)
        _disconnect(fresh)


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
