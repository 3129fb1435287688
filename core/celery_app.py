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
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from celery import Celery
from celery.utils.imports import qualname

from core import embedded
from core.config import APP_SECTION, ENVIRONMENT, HostConfig, load_config
from core.errors import ConfigError, DuplicateTaskError, HostError, combine
from core.masking import mask_url

if TYPE_CHECKING:
    from plugins.manager import HostPluginManager

logger = logging.getLogger("host")

embedded.register()


class HostCelery(Celery):
    """A Celery app that knows its :class:`HostConfig` and refuses duplicate task names."""

    host_config: HostConfig | None = None
    #: The plugins the app was configured with.
    host_plugins: HostPluginManager | None = None

    def __init__(self, main: str = "host", **kwargs: Any) -> None:
        super().__init__(main, **kwargs)
        #: Settings a plugin changed -> which plugin (for ``host config show``).
        self.host_changed_by: dict[str, str] = {}
        # Celery calls on_configure when the configuration is first needed. As
        # a Signal (its default) it would log and swallow our ConfigError and
        # run on Celery's defaults; as a plain method, the error reaches the caller.
        self.on_configure = self.configure_from_environment

    def configure_from_environment(self) -> HostConfig:
        """Configure from ``$HOST_CONFIG`` (else ./development.ini) unless already configured."""
        if self.host_config is None:
            configure_app(self, load_config(None, os.environ), lazy=True)
        assert self.host_config is not None
        return self.host_config

    def _get_backend(self) -> Any:
        from core.result_store import guard

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


def load_plugins(config: HostConfig) -> HostPluginManager:
    """Load the plugins ``host.plugins`` names and read their ``[plugin:NAME]`` options.

    A broken plugin is recorded on the manager, not raised; an invalid option is
    a :class:`ConfigError`.
    """
    from plugins.manager import make_plugin_manager
    from plugins.options import read_options

    pm = make_plugin_manager(config.host["plugins"])
    read_options(pm, config)
    return pm


def configure_app(
    app: HostCelery,
    config: HostConfig,
    plugin_manager: HostPluginManager | None = None,
    *,
    strict: bool = True,
    warn: Callable[[str], None] | None = None,
    lazy: bool = False,
) -> HostCelery:
    """Apply a configuration and its plugins to an app: the one place settings reach ``app.conf``.

    :param plugin_manager: the loaded plugins; default: load those the ini enables.
    :param strict: apply ``host.extensions.on_error`` to broken plugins: raise
        unless it is ``warn``. ``host plugins`` and ``host doctor`` pass False
        and show the errors themselves.
    :param warn: shows a skipped plugin's error (default: the ``host`` logger).
    :param lazy: called from within Celery's first use of the configuration.
    """
    from core import signals
    from core.settings import celery_settings

    pm = plugin_manager if plugin_manager is not None else load_plugins(config)
    previous = app.host_config, app.host_plugins
    # Set first, so that hooks can read plugins.plugin_config() while the
    # settings are computed; put back if the configuration is refused.
    app.host_config, app.host_plugins = config, pm
    try:
        settings, changed_by = celery_settings(config, pm)
        if strict:
            enforce(pm.errors, config, warn)
        check_urls(config, settings, changed_by)
    except BaseException:
        app.host_config, app.host_plugins = previous
        raise
    app.host_changed_by = changed_by
    # Within on_configure, Celery is reading the configuration: force=True would recurse.
    app.config_from_object(settings, force=not lazy)
    signals.connect(app, pm)
    return app


def enforce(
    errors: Sequence[HostError], config: HostConfig, warn: Callable[[str], None] | None = None
) -> None:
    """Stop on broken extensions or plugins, unless ``host.extensions.on_error = warn``."""
    if not errors:
        return
    if config.host["extensions.on_error"] != "warn":
        raise combine(errors)
    for error in errors:
        (warn or logger.warning)(f"skipped: {error}")


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


def check_urls(
    config: HostConfig, settings: Mapping[str, Any] | None = None, changed_by: Mapping[str, str] | None = None
) -> None:
    """Every broker and result-store URL names a transport or backend that is installed.

    Checked when the app is configured, so that a typo in a scheme is a
    configuration error naming the key (exit 2) instead of a traceback from
    the first connection. Nothing is connected to.

    :param settings: the settings to check (default: the ini's).
    :param changed_by: settings a plugin set, and which one, for the message.
    """
    settings = config.celery if settings is None else settings
    where = _Where(config, changed_by or {})
    for name in ("broker_url", "broker_read_url", "broker_write_url"):
        url = settings.get(name)
        if isinstance(url, str) and url:
            for part in url.split(";"):
                _check_transport(where, name, part.strip())
    backend = settings.get("result_backend")
    if isinstance(backend, str) and backend:
        _check_backend(where, backend)


def _scheme(url: str) -> str:
    """``embedded+sqlite:///x`` -> ``embedded``; ``amqp://...`` -> ``amqp``."""
    return url.partition("://")[0].partition("+")[0] if "://" in url else url


def _check_transport(config: _Where, key: str, url: str) -> None:
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


def _check_backend(config: _Where, url: str) -> None:
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


def _require(config: _Where, key: str, url: str, needs: tuple[str, str]) -> None:
    from importlib.util import find_spec

    module, package = needs
    try:
        found = find_spec(module) is not None
    except ImportError:  # a parent package of a dotted module is missing
        found = False
    if not found:
        problem = f"it needs the Python package {package}, which is not installed"
        raise _missing(config, key, url, problem, package)


def _missing(config: _Where, key: str, url: str, problem: str, package: str | None) -> ConfigError:
    return ConfigError(
        f"{mask_url(url)}: {problem}",
        **config(key),
        hint=f"pip install {package}" if package else "install the library this transport needs",
    )


class _Where:
    """Where a setting came from: the file and key, the environment variable, or a plugin."""

    def __init__(self, config: HostConfig, changed_by: Mapping[str, str]) -> None:
        self.config, self.changed_by = config, changed_by

    def __call__(self, name: str) -> dict[str, str | None]:
        if name in self.changed_by:
            return {"path": f"set by {self.changed_by[name]}", "section": None, "key": name}
        source = self.config.sources.get(f"celery.{name}", "file")
        if source.startswith("env "):
            return {"path": ENVIRONMENT, "section": None, "key": source[len("env ") :]}
        return {"path": str(self.config.path), "section": APP_SECTION, "key": f"celery.{name}"}


def _url_error(
    config: _Where, key: str, url: str, problem: str, scheme: str | None, known: Mapping[str, Any]
) -> ConfigError:
    close = difflib.get_close_matches(scheme, list(known), n=1) if scheme else []
    hint = f"did you mean {close[0]}://?" if close else None
    if known and not close:
        hint = "known schemes: " + ", ".join(sorted(known))
    return ConfigError(f"{mask_url(url)}: {problem}", **config(key), hint=hint)


def configure(path: str | os.PathLike[str] | None = None, **kwargs: Any) -> HostCelery:
    """Configure the shared app from an ini file; for processes that send tasks.

    :param path: the ini file; ``None`` means ``$HOST_CONFIG`` or ./development.ini.
    :param kwargs: passed to :func:`core.config.load_config` (``environ``).
    """
    return configure_app(celery, load_config(path, **kwargs))


#: The shared app. Import it, decorate tasks with it, send tasks with it.
celery = HostCelery("host")
