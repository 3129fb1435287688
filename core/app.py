"""The host's Celery app class: it knows its configuration and refuses duplicate task names.

The one shared instance is :data:`core.celery_app.celery`; :mod:`core.startup`
configures it. This module holds only the class, so that the domain can name
it without depending on start-up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery import Celery
from celery.utils.imports import qualname

from core import embedded
from core.errors import DuplicateTaskError
from core.result_store import guard
from core.solo_ack import SoloAck
from core.task_context import HostTask

if TYPE_CHECKING:
    from core.config import HostConfig
    from core.plugin_manager import HostPluginManager


class HostCelery(Celery):
    """A Celery app that knows its :class:`HostConfig` and refuses duplicate task names."""

    host_config: HostConfig | None = None
    #: The plugins the app was configured with.
    host_plugins: HostPluginManager | None = None
    #: Configures an app from ``$HOST_CONFIG`` when Celery first needs its
    #: settings and nothing configured it; :mod:`core.celery_app` installs
    #: start-up's function here.
    configure_lazily: Callable[[HostCelery], HostConfig] | None = None

    def __init__(self, main: str = "host", **kwargs: Any) -> None:
        embedded.register()  # embedded+sqlite:// is a broker and result store every host app knows
        # Every task has self.context and a report (core/task_context.py).
        kwargs.setdefault("task_cls", HostTask)
        super().__init__(main, **kwargs)
        # -P solo: ack when the task ends, not when the event loop next wakes
        # (kombu can leave the ack queued behind a 10 s poll; core/solo_ack.py).
        self.steps["consumer"].add(SoloAck)
        #: Settings a plugin changed -> which plugin (for ``host config show``).
        self.host_changed_by: dict[str, str] = {}
        # Celery calls on_configure when the configuration is first needed. As
        # a Signal (its default) it would log and swallow our ConfigError and
        # run on Celery's defaults; as a plain method, the error reaches the caller.
        self.on_configure = self.configure_from_environment

    def configure_from_environment(self) -> HostConfig:
        """Configure from ``$HOST_CONFIG`` (else ./development.ini) unless already configured."""
        if self.host_config is None:
            if HostCelery.configure_lazily is None:
                raise RuntimeError("import core.celery_app before using a HostCelery's configuration")
            HostCelery.configure_lazily(self)
        assert self.host_config is not None
        return self.host_config

    def _get_backend(self) -> Any:
        return guard(super()._get_backend())

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
