"""Broker and result-store URLs: each names a transport or backend that is installed.

Checked when the app is configured, so that a typo in a scheme is a
configuration error naming the key (exit 2) instead of a traceback from the
first connection. Nothing is connected to.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

from core import embedded
from core.config import APP_SECTION, ENVIRONMENT, HostConfig
from core.errors import ConfigError
from core.masking import mask_url

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
#: ``amqp:/host//``, ``redis:h/0``: a scheme and a colon without the two slashes a URL needs.
_MALFORMED = re.compile(r"^([A-Za-z][\w+.-]*):(?!//)")


def check_urls(config: HostConfig, settings: Mapping[str, Any], changed_by: Mapping[str, str]) -> None:
    """Every broker and result-store URL in ``settings`` names a transport or backend that is installed.

    :param changed_by: settings a plugin set, and which one, for the message.
    """
    where = _Where(config, changed_by)
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


def _check_form(config: _Where, key: str, url: str, known: Mapping[str, Any]) -> None:
    """``amqp:/127.0.0.1:5672//`` is a malformed URL, not a transport to import."""
    if "://" in url:
        return
    found = _MALFORMED.match(url)
    # ``pkg.module:Backend``, a class by its dotted path, has no "/" and no known scheme.
    if found is None or (found[1].partition("+")[0] not in known and "/" not in url):
        return
    scheme, rest = found[1], url[len(found[1]) + 1 :]
    # sqlite's absolute path keeps its own slash: sqlite:/abs -> sqlite:////abs.
    fixed = f"{scheme}:///{rest}" if scheme.endswith("sqlite") else f"{scheme}://{rest.lstrip('/')}"
    shown = re.sub(r"(?<=:)[^:@/]+(?=@)", "**", url)  # mask_url knows only well-formed URLs
    raise ConfigError(
        f"{shown}: malformed URL: the form is {scheme}://host:port/... (two slashes after '{scheme}:')",
        **config(key),
        hint=f"did you mean {mask_url(fixed)}?",
    )


def _check_embedded(config: _Where, key: str, url: str, what: str, file: str) -> None:
    """``embedded+sqlit:///x``: the embedded broker and result store take a SQLite file's URL."""
    sqlite = url.partition("+")[2]
    try:
        embedded.sqlite_path(sqlite)
    except ValueError:
        given = sqlite.partition("://")[0]
        close = given != "sqlite" and difflib.get_close_matches(given, ["sqlite"], n=1)
        raise ConfigError(
            f"{mask_url(url)}: the embedded {what} needs a URL like "
            f"embedded+sqlite:///%(here)s/data/{file}, got {sqlite!r}",
            **config(key),
            hint=f"did you mean {embedded.SCHEME}+sqlite://?" if close else None,
        ) from None


def _check_transport(config: _Where, key: str, url: str) -> None:
    from kombu.transport import TRANSPORT_ALIASES, resolve_transport

    _check_form(config, key, url, {**TRANSPORT_ALIASES, embedded.SCHEME: None})
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
        _check_embedded(config, key, url, "broker", "broker.sqlite")


def _check_backend(config: _Where, url: str) -> None:
    from celery.app.backends import BACKEND_ALIASES
    from celery.utils.imports import load_extension_class_names, symbol_by_name

    _check_form(config, "result_backend", url, {**BACKEND_ALIASES, embedded.SCHEME: None})
    scheme = _scheme(url)
    if scheme in _BACKEND_NEEDS:
        _require(config, "result_backend", url, _BACKEND_NEEDS[scheme])
        if scheme == embedded.SCHEME:
            _check_embedded(config, "result_backend", url, "result store", "results.sqlite")
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
        key = f"celery.{name}"
        source = self.config.sources.get(key, "file")
        if source.startswith("env "):
            return {"path": ENVIRONMENT, "section": None, "key": source[len("env ") :]}
        return {"path": str(self.config.origin(APP_SECTION, key)), "section": APP_SECTION, "key": key}


def _url_error(
    config: _Where, key: str, url: str, problem: str, scheme: str | None, known: Mapping[str, Any]
) -> ConfigError:
    close = difflib.get_close_matches(scheme, list(known), n=1) if scheme else []
    # Only the transport's name is replaced: embeded+sqlite:// -> embedded+sqlite://.
    rest = url.partition("://")[0][len(scheme or "") :] if "://" in url else ""
    hint = f"did you mean {close[0]}{rest}://?" if close else None
    if known and not close:
        hint = "known schemes: " + ", ".join(sorted(known))
    return ConfigError(f"{mask_url(url)}: {problem}", **config(key), hint=hint)
