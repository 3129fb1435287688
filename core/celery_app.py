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

import difflib
import os
from collections.abc import Mapping
from typing import Any

from celery import Celery
from celery.utils.imports import qualname

from core import embedded
from core.config import APP_SECTION, ENVIRONMENT, HostConfig, load_config, mask_url
from core.errors import ConfigError, DuplicateTaskError

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
            check_urls(config)
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
    check_urls(config)
    app.host_config = config
    app.config_from_object(dict(config.celery), force=True)
    return app


#: Python modules some brokers and result stores need that their kombu or
#: Celery module does not import itself: scheme -> (module, what to install).
_REDIS = ("redis", "'host-framework[redis]'")
_TRANSPORT_NEEDS = {"redis": _REDIS, "rediss": _REDIS, "sentinel": _REDIS}
_BACKEND_NEEDS = {
    "redis": _REDIS,
    "rediss": _REDIS,
    "sentinel": _REDIS,
    "db": ("sqlalchemy", "sqlalchemy"),
    "database": ("sqlalchemy", "sqlalchemy"),
    "embedded": ("sqlalchemy", "sqlalchemy"),
    "mongodb": ("pymongo", "pymongo"),
    "elasticsearch": ("elasticsearch", "elasticsearch"),
    "cassandra": ("cassandra", "cassandra-driver"),
    "couchbase": ("couchbase", "couchbase"),
    "couchdb": ("pycouchdb", "pycouchdb"),
    "consul": ("consul", "python-consul2"),
    "dynamodb": ("boto3", "boto3"),
    "s3": ("boto3", "boto3"),
    "azureblockblob": ("azure.storage.blob", "azure-storage-blob"),
    "arangodb": ("pyArango", "pyArango"),
    "gs": ("google.cloud.storage", "google-cloud-storage"),
}


def check_urls(config: HostConfig) -> None:
    """Every broker and result-store URL names a transport or backend that is installed.

    Checked when the app is configured, so that a typo in a scheme is a
    configuration error naming the key (exit 2) instead of a traceback from
    the first connection. Nothing is connected to.
    """
    for name in ("broker_url", "broker_read_url", "broker_write_url"):
        url = config.celery.get(name)
        if isinstance(url, str) and url:
            for part in url.split(";"):
                _check_transport(config, name, part.strip())
    backend = config.celery.get("result_backend")
    if isinstance(backend, str) and backend:
        _check_backend(config, backend)


def _scheme(url: str) -> str:
    """``embedded+sqlite:///x`` -> ``embedded``; ``amqp://...`` -> ``amqp``."""
    return url.partition("://")[0].partition("+")[0] if "://" in url else url


def _check_transport(config: HostConfig, key: str, url: str) -> None:
    from kombu.transport import TRANSPORT_ALIASES, resolve_transport

    scheme = _scheme(url)
    try:
        resolve_transport(scheme)
    except KeyError:
        problem = f"unknown broker transport {scheme!r}"
        raise _url_error(config, key, url, problem, scheme, TRANSPORT_ALIASES) from None
    except ImportError as e:
        raise _missing(config, key, url, f"the {scheme!r} transport cannot be imported ({e})", None) from e
    if scheme in _TRANSPORT_NEEDS:
        _require(config, key, url, _TRANSPORT_NEEDS[scheme])
    if scheme == embedded.SCHEME:
        try:
            embedded.sqlite_path(url.partition("+")[2])
        except ValueError as e:
            raise _url_error(config, key, url, str(e), None, {}) from None


def _check_backend(config: HostConfig, url: str) -> None:
    from celery.app.backends import BACKEND_ALIASES
    from celery.utils.imports import load_extension_class_names, symbol_by_name

    scheme = _scheme(url)
    if scheme in _BACKEND_NEEDS:
        _require(config, "result_backend", url, _BACKEND_NEEDS[scheme])
        return
    if scheme in BACKEND_ALIASES or scheme in dict(load_extension_class_names("celery.result_backends")):
        return
    try:  # a backend class given by its dotted path
        symbol_by_name(scheme)
    except (ImportError, ValueError, AttributeError):
        raise _url_error(
            config, "result_backend", url, f"unknown result backend {scheme!r}", scheme, BACKEND_ALIASES
        ) from None


def _require(config: HostConfig, key: str, url: str, needs: tuple[str, str]) -> None:
    from importlib.util import find_spec

    module, package = needs
    try:
        found = find_spec(module) is not None
    except ImportError:  # a parent package of a dotted module is missing
        found = False
    if not found:
        problem = f"it needs the Python package {package}, which is not installed"
        raise _missing(config, key, url, problem, package)


def _missing(config: HostConfig, key: str, url: str, problem: str, package: str | None) -> ConfigError:
    return ConfigError(
        f"{mask_url(url)}: {problem}",
        **_where(config, key),
        hint=f"pip install {package}" if package else "install the library this transport needs",
    )


def _where(config: HostConfig, name: str) -> dict[str, str | None]:
    """The file and key a setting came from, or the environment variable."""
    source = config.sources.get(f"celery.{name}", "file")
    if source.startswith("env "):
        return {"path": ENVIRONMENT, "section": None, "key": source[len("env ") :]}
    return {"path": str(config.path), "section": APP_SECTION, "key": f"celery.{name}"}


def _url_error(
    config: HostConfig, key: str, url: str, problem: str, scheme: str | None, known: Mapping[str, Any]
) -> ConfigError:
    close = difflib.get_close_matches(scheme, list(known), n=1) if scheme else []
    hint = f"did you mean {close[0]}://?" if close else None
    if known and not close:
        hint = "known schemes: " + ", ".join(sorted(known))
    return ConfigError(f"{mask_url(url)}: {problem}", **_where(config, key), hint=hint)


def configure(path: str | os.PathLike[str] | None = None, **kwargs: Any) -> HostCelery:
    """Configure the shared app from an ini file; for processes that send tasks.

    :param path: the ini file; ``None`` means ``$HOST_CONFIG`` or ./development.ini.
    :param kwargs: passed to :func:`core.config.load_config` (``environ``).
    """
    return configure_app(celery, load_config(path, **kwargs))


#: The shared app. Import it, decorate tasks with it, send tasks with it.
celery = HostCelery("host")
