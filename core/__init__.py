"""host-framework: the core (configuration, discovery, the Celery app, the CLI).

Importing ``core`` does no work; :func:`configure` is the one call a process
that sends tasks needs.
"""

from __future__ import annotations

from typing import Any

__all__ = ["configure"]


def configure(path: Any = None, **kwargs: Any) -> Any:
    """Configure the shared Celery app from an ini file and return it.

    See :func:`core.celery_app.configure`.
    """
    from core.celery_app import configure as _configure

    return _configure(path, **kwargs)
