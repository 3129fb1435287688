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
        #: (broker write URL, broker_transport) -> its transport's driver type (``amqp``...).
        self.host_driver_types: dict[tuple[Any, Any], str] = {}
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

    def send_task(
        self,
        name: str,
        args: Any = None,
        kwargs: Any = None,
        countdown: Any = None,
        eta: Any = None,
        *more: Any,
        **options: Any,
    ) -> Any:
        """Celery's ``send_task``; a countdown or ETA less than a second away waits one second
        when Celery's native delayed delivery carries it (quorum queues on RabbitMQ).

        Celery (5.5 to 5.7 at least) routes such a message through its delay queues by whole
        seconds, ``int(countdown)``, and a countdown of 0 < s < 1 raises
        ``ValueError: countdown must be a positive number`` from kombu's
        ``calculate_routing_key``: the send fails, and a task retrying with
        ``self.retry(countdown=0.5)`` is rejected and lost. One second is still
        "no earlier than" the time asked for.
        """
        # The range first: it is cheap, and most countdowns are a second or more.
        if (countdown or eta) and _under_a_second(self, countdown, eta) and _delays_natively(self):
            countdown, eta = 1, None
        return super().send_task(name, args, kwargs, countdown, eta, *more, **options)

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


def _under_a_second(app: Celery, countdown: Any, eta: Any) -> bool:
    """The delay Celery computes for native delayed delivery is more than 0 and less than 1 s."""
    if eta:  # as Celery computes it: an ETA wins over a countdown
        from celery.utils.time import subtract_datetimes
        from dateutil.parser import isoparse

        when = isoparse(eta) if isinstance(eta, str) else eta
        countdown = subtract_datetimes(when, app.now()).total_seconds()
    return isinstance(countdown, (int, float)) and 0 < countdown < 1


def _delays_natively(app: HostCelery) -> bool:
    """Celery's own test for native delayed delivery: a quorum queue among the app's queues, on AMQP."""
    from celery.utils.quorum_queues import detect_quorum_queues

    return bool(detect_quorum_queues(app, driver_type(app))[0])


def driver_type(app: HostCelery) -> str:
    """The driver type of the transport the app sends with (``amqp``, ``redis``...).

    Read once per broker URL and transport: reading it builds a kombu Connection
    (no network, but some 100 us), and the settings may change under a test.
    """
    conf = app.conf
    key = (conf.broker_write_url, conf.broker_transport)
    found = app.host_driver_types.get(key)
    if found is None:
        with app.connection_for_write() as connection:
            found = app.host_driver_types[key] = connection.transport.driver_type
    return found
