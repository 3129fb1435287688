"""The host's one Celery app.

Task modules register on it before anything is configured::

    from core.celery_app import celery

    @celery.task(name="example.echo")
    def echo(message):
        return message

The CLI configures it once from the ini (:func:`configure_app`). A process
that only sends tasks, such as the host's web application, calls
:func:`configure` with the ini's path; if it never does, the first use of the
app's configuration reads the file named by ``$HOST_CONFIG`` (else
``./development.ini``), the way CKAN read ``CKAN_CONFIG``.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.utils.imports import qualname

from core import embedded
from core.config import HostConfig, load_config
from core.errors import DuplicateTaskError

embedded.register()


class HostCelery(Celery):
    """A Celery app that knows its :class:`HostConfig` and refuses duplicate task names."""

    host_config: HostConfig | None = None

    def __init__(self, main: str = "host", **kwargs: Any) -> None:
        super().__init__(main, **kwargs)
        # Celery calls on_configure when the configuration is first needed. As
        # a Signal (its default) it would log and swallow our ConfigError and
        # run on Celery's defaults; as a plain method, the error reaches the caller.
        self.on_configure = self._configure_from_environment

    def _configure_from_environment(self) -> None:
        if self.host_config is None:
            config = load_config(None, os.environ)
            self.host_config = config
            self.config_from_object(dict(config.celery))

    def _warn_if_duplicate_task_name(self, task: Any, fun: Any, name: str) -> None:
        # Celery skips the check when the registered task is class-based (it
        # has no decorated function to compare), silently dropping ``fun``.
        if getattr(task, "_decorated_fun", None) is None:
            raise DuplicateTaskError(name, qualname(type(task)), qualname(fun))
        super()._warn_if_duplicate_task_name(task, fun, name)

    def _warn_duplicate_task_name(self, name: str, existing: str, new: str, consequence: str) -> None:
        # Celery 5.7 routes both collisions (a second @task with a taken name,
        # and register_task() replacing one) through this method, and only
        # warns. Two extensions silently sharing a name is a lost task, so it
        # is an error here; discovery adds which extensions are involved.
        raise DuplicateTaskError(name, existing, new)


def configure_app(app: HostCelery, config: HostConfig) -> HostCelery:
    """Apply a configuration to an app: the one place settings reach ``app.conf``."""
    app.host_config = config
    app.config_from_object(dict(config.celery), force=True)
    return app


def configure(path: str | os.PathLike[str] | None = None, **kwargs: Any) -> HostCelery:
    """Configure the shared app from an ini file; for processes that send tasks.

    :param path: the ini file; ``None`` means ``$HOST_CONFIG`` or ./development.ini.
    :param kwargs: passed to :func:`core.config.load_config` (``environ``).
    """
    return configure_app(celery, load_config(path, **kwargs))


#: The shared app. Import it, decorate tasks with it, send tasks with it.
celery = HostCelery("host")
