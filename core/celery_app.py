"""The host's one Celery app.

Task modules register on it before anything is configured::

    from core.celery_app import celery

    @celery.task(name="example.echo")
    def echo(message):
        return message

The CLI configures it once from the ini (:mod:`core.startup`). A process
that only sends tasks, such as the host's web application, calls
:func:`configure` with the ini's path; if it never does, the first use of the
app's configuration reads the file named by ``$HOST_CONFIG`` (else
``./development.ini``), the way CKAN read ``CKAN_CONFIG``.
"""

from __future__ import annotations

import os
from typing import Any

from core import startup
from core.app import HostCelery

__all__ = ["HostCelery", "celery", "configure"]

# Celery's first look at the settings of an app nobody configured: start-up's lazy path.
HostCelery.configure_lazily = startup.configure_from_environment


def configure(path: str | os.PathLike[str] | None = None, **kwargs: Any) -> HostCelery:
    """Configure the shared app from an ini file and return it; for processes that send tasks.

    :param path: the ini file; ``None`` means ``$HOST_CONFIG`` or ./development.ini.
    :param kwargs: passed to :func:`core.config.load_config` (``environ``).
    """
    return startup.configure(celery, path, **kwargs)


#: The shared app. Import it, decorate tasks with it, send tasks with it.
celery = HostCelery("host")
