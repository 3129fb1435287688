"""Read an ini file into a validated, typed :class:`HostConfig`.

Configuration flows one way: ini file (plus environment overrides) ->
:class:`HostConfig` -> ``app.conf``. Nothing else in the framework reads the
file or the environment for settings.

The ini follows PasteDeploy's conventions, as CKAN's did: settings live in
``[app:main]``; ``%(here)s`` is the folder holding the file; ``[DEFAULT]``
holds names to interpolate; ``use = config:base.ini`` in ``[app:main]`` builds
on another file, whose keys the file overrides (:func:`read_chain`). These
namespaces are accepted in ``[app:main]``:

``celery.<setting>``
    Any setting from Celery's own option table (``celery.app.defaults``),
    converted to the type that table gives it.
``host.<key>``
    The framework's own keys, listed in :data:`HOST_OPTIONS`.
``smtp.<key>``
    The mail server for failure emails (``host.admin_emails``), listed in
    :data:`SMTP_OPTIONS`; ``HOST_SMTP_<KEY>`` overrides each (``HOST_SMTP_PASSWORD``).
``flower.<key>``
    How ``host flower`` runs Flower (core/flower.py), listed in
    :data:`FLOWER_OPTIONS`; ``HOST_FLOWER_<KEY>`` overrides each
    (``HOST_FLOWER_BASIC_AUTH``).

Environment variables override the file, so secrets need not live in it:
``HOST_CELERY_<SETTING>`` for any Celery setting, Celery's own
``CELERY_BROKER_URL``, ``CELERY_RESULT_BACKEND``, ``CELERY_BROKER_READ_URL``
and ``CELERY_BROKER_WRITE_URL``, and ``HOST_<KEY>`` for a ``host.`` key (dots
become underscores: ``HOST_EXTENSIONS_ON_ERROR``).
"""

from __future__ import annotations

import configparser
import copy
import difflib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.convert import cached_celery_options, convert_value
from core.errors import ConfigError
from core.inifile import APP_SECTION, IniChain, interpolation_variables, one_line, read_chain, section_values
from core.masking import mask_text
from core.options import Option

DEFAULT_CONFIG = "development.ini"
CONFIG_ENV = "HOST_CONFIG"
#: The ``path`` of a setting that came from an environment variable.
ENVIRONMENT = "environment"

#: Celery's own environment variable names, honoured for compatibility.
CELERY_ENV_ALIASES = {
    "CELERY_BROKER_URL": "broker_url",
    "CELERY_BROKER_READ_URL": "broker_read_url",
    "CELERY_BROKER_WRITE_URL": "broker_write_url",
    "CELERY_RESULT_BACKEND": "result_backend",
}
HOST_CELERY_ENV_PREFIX = "HOST_CELERY_"

#: What the framework sets unless the ini says otherwise. JSON is the only
#: serializer accepted: a pickle message can run code on the worker.
CELERY_DEFAULTS: dict[str, Any] = {
    "accept_content": ["json"],
    "result_accept_content": ["json"],
    "task_serializer": "json",
    "result_serializer": "json",
    # Keep retrying the broker at start-up, as Celery 5 does, without its
    # deprecation warning (celery#7904).
    "broker_connection_retry_on_startup": True,
    # ...and for as long as it takes: None is "no limit". Celery's default, 100
    # attempts, ends every worker of a long outage; 0 ends them at the first
    # failed attempt (kombu's retry_over_time; celery#8626).
    "broker_connection_max_retries": None,
    # A result the store cannot take right now is retried, with backoff, for
    # about a minute (20 attempts, at most 10 s apart) before it is given up
    # and logged (core/result_store.py); without this, the first failed
    # attempt loses it.
    "result_backend_always_retry": True,
    "result_backend_max_retries": 20.0,  # a float, as Celery types it (float("inf") is its default)
    # A running task shows STARTED, not PENDING (host result, Flower, host results).
    "task_track_started": True,
    # Each result keeps its task's name, arguments, worker and queue: what
    # host result and host results show.
    "result_extended": True,
}


#: Every ``host.*`` key the framework understands.
HOST_OPTIONS: dict[str, Option] = {
    "extensions.on_error": Option(
        "extensions.on_error",
        "string",
        "fail",
        "What a broken extension does: 'fail' stops the command (exit 2) "
        "before any worker starts; 'warn' logs it, skips it and runs the rest.",
        choices=("fail", "warn"),
    ),
    "celery_task.disabled": Option(
        "celery_task.disabled",
        "list",
        [],
        "Distribution names of installed extensions whose host.celery_task "
        "entry points are ignored. By default every installed extension "
        "contributes, as in CKAN.",
    ),
    "allow_root": Option(
        "allow_root",
        "bool",
        False,
        "Let host celeryd and host celerybeat run as root. Off: they refuse, since "
        "a task runs with the privileges of its worker and its message comes from "
        "the network. For throw-away containers and development only.",
    ),
    "max_message_bytes": Option(
        "max_message_bytes",
        "int",
        10 * 1024 * 1024,
        "The largest task message a worker runs, and host send and the toolkit send: "
        "a larger one is rejected with a clear error instead of filling memory, logs and "
        "the result store. Pass large data by reference. 0: no limit.",
    ),
    "plugins": Option(
        "plugins",
        "list",
        [],
        "Names of the plugins to enable (entry points in the group host.plugins), "
        "in the order their hooks are called. HOST_PLUGINS overrides it.",
    ),
    "site_id": Option(
        "site_id",
        "string",
        "",
        "Prefixes every queue name (host:SITE:queue) and the control and event "
        "exchanges, so that several hosts can share one broker without running "
        "each other's tasks. Empty: no prefix.",
        pattern=(r"[A-Za-z0-9_.-]*", "letters, digits, '_', '.' and '-' only"),
    ),
    "locks.url": Option(
        "locks.url",
        "string",
        "",
        "Where exclusive tasks and the beat election keep their locks (core/locks.py): "
        "redis://HOST:PORT/DB (the redis extra) or embedded+sqlite:///PATH. Empty: "
        "locks.sqlite beside the embedded broker's store; with any other broker, set it.",
    ),
    "locks.expires": Option(
        "locks.expires",
        "float",
        60.0,
        "Seconds a lock lives unless its holder renews it (every third of it): a killed "
        "holder's lock is free again within this time. At least 1.",
    ),
    "task_log.max_bytes": Option(
        "task_log.max_bytes",
        "int",
        64 * 1024,
        "How much of what a task logs through self.context.log is kept with its result "
        "(core/task_context.py): half for its INFO and WARNING lines, half for its errors; "
        "lines beyond it are counted, not kept. 0: none kept.",
    ),
    "admin_emails": Option(
        "admin_emails",
        "list",
        [],
        "Addresses that get an email when a task fails for good (its retries exhausted), "
        "through the smtp.* server (core/notify.py). Empty: no email.",
    ),
    "admin_emails_interval": Option(
        "admin_emails_interval",
        "float",
        300.0,
        "At most one failure email per task name per this many seconds, across the "
        "worker's processes; the next one counts the failures in between. 0: every failure.",
    ),
    "task_mode": Option(
        "task_mode",
        "string",
        "worker",
        "'worker': tasks are sent to the broker, for workers to run. 'eager': host send and the "
        "toolkit run each task at once in their own process (Celery's task_always_eager), with "
        "the same result API; no broker or worker needed. For tests and tiny installs.",
        choices=("worker", "eager"),
    ),
    "fallback": Option(
        "fallback",
        "string",
        "error",
        "What sending does when the broker cannot be reached: 'error' raises a clear error "
        "naming it (exit 1); 'eager' runs the task inline and logs a warning once per outage.",
        choices=("error", "eager"),
    ),
    "broker_check.timeout": Option(
        "broker_check.timeout",
        "float",
        1.0,
        "Seconds the broker check (host ping, broker_available(), host.fallback = eager) waits "
        "for an answer before it counts the broker as down. More than 0.",
    ),
    "broker_check.cache_seconds": Option(
        "broker_check.cache_seconds",
        "float",
        5.0,
        "Seconds a process keeps the broker check's answer (broker_available(), host.fallback = "
        "eager); host ping always checks anew. 0: check every time.",
    ),
}

#: Every ``smtp.*`` key: the server that mails failures to ``host.admin_emails``.
SMTP_OPTIONS: dict[str, Option] = {
    "server": Option("server", "string", "", "The SMTP server's host name or address; empty: none."),
    "port": Option("port", "int", 25, "The SMTP server's port."),
    "starttls": Option(
        "starttls", "bool", False, "Switch the connection to TLS (STARTTLS) before logging in."
    ),
    "user": Option("user", "string", "", "The user to log in as; empty: no login."),
    "password": Option(
        "password", "string", "", "The user's password (HOST_SMTP_PASSWORD keeps it out of the file)."
    ),
    "mail_from": Option("mail_from", "string", "", "The sender address; empty: host@ this machine's name."),
}
#: ``HOST_SMTP_<KEY>`` overrides ``smtp.<key>``.
HOST_SMTP_ENV_PREFIX = "HOST_SMTP_"

#: Every ``flower.*`` key: how ``host flower`` runs Flower (core/flower.py).
FLOWER_OPTIONS: dict[str, Option] = {
    "address": Option(
        "address",
        "string",
        "127.0.0.1",
        "The address Flower listens on. Any other than a loopback address needs flower.basic_auth: "
        "Flower can revoke tasks and shut workers down.",
    ),
    "port": Option("port", "int", 5555, "The port Flower listens on (1-65535)."),
    "url_prefix": Option(
        "url_prefix",
        "string",
        "",
        "Serve Flower under this path, for a reverse proxy: 'flower' serves http://HOST/flower/. "
        "Empty: at /.",
        pattern=(r"[A-Za-z0-9_./-]*", "letters, digits, '_', '.', '-' and '/' only"),
    ),
    "basic_auth": Option(
        "basic_auth",
        "string",
        "",
        "user:password[,user2:password2]: HTTP basic auth for every page and the API but "
        "/healthcheck and /metrics (HOST_FLOWER_BASIC_AUTH keeps it out of the file). A password "
        "cannot hold a comma. Never printed. Empty: none.",
    ),
}
#: ``HOST_FLOWER_<KEY>`` overrides ``flower.<key>``.
HOST_FLOWER_ENV_PREFIX = "HOST_FLOWER_"

#: The namespaces of ``[app:main]`` besides ``celery.*`` and ``host.*``: their keys, and
#: the prefix of the environment variables that override them.
NAMESPACES: dict[str, tuple[dict[str, Option], str]] = {
    "smtp": (SMTP_OPTIONS, HOST_SMTP_ENV_PREFIX),
    "flower": (FLOWER_OPTIONS, HOST_FLOWER_ENV_PREFIX),
}

#: The environment variables of plugin options start with this.
PLUGIN_ENV_PREFIX = "HOST_PLUGIN_"


@dataclass(frozen=True)
class HostConfig:
    """A validated configuration: where it came from and its typed values."""

    #: The file passed (``--config``), also when its settings come through ``use``.
    path: Path
    celery: dict[str, Any]
    host: dict[str, Any]
    #: Where each effective value came from: ``"file"`` (the file passed),
    #: ``"file BASE"`` (a file it builds on through ``use``), ``"default"`` or
    #: ``"env NAME"``, keyed like the ini (``celery.broker_url``).
    sources: dict[str, str] = field(default_factory=dict)
    #: True when a file of the chain has ``[loggers]``: logging is configured from it.
    has_logging: bool = False
    #: Every file of the chain merged (see :func:`read_chain`).
    parser: configparser.ConfigParser | None = field(default=None, repr=False, compare=False)
    #: ``HOST_PLUGIN_*`` variables, read once with the file; plugin options
    #: are validated against them once the plugins have declared their options.
    plugin_environ: dict[str, str] = field(default_factory=dict, repr=False)
    #: The files read: ``path``, then the file it uses, then that file's base...
    files: tuple[Path, ...] = ()
    #: The file each key was written in, keyed ``(section, key)``.
    written_in: dict[tuple[str, str], Path] = field(default_factory=dict, repr=False, compare=False)
    #: The file whose logging sections are in force; None when no file has ``[loggers]``.
    logging_path: Path | None = None
    #: The ``smtp.*`` keys, every one (defaults included), by their names without ``smtp.``.
    smtp: dict[str, Any] = field(default_factory=dict)
    #: The ``flower.*`` keys, likewise (``host flower``).
    flower: dict[str, Any] = field(default_factory=dict)

    def plugin_section(self, name: str) -> dict[str, str]:
        """The raw keys of ``[plugin:NAME]``, interpolated; empty when there is none."""
        section = plugin_section_name(name)
        if self.parser is None or not self.parser.has_section(section):
            return {}
        return section_values(self.parser, section, self.origin)

    def origin(self, section: str, key: str) -> Path:
        """The file where ``key`` was written: what an error about it must name."""
        return self.written_in.get((section, key), self.path)

    def file_source(self, section: str, key: str) -> str:
        """What ``sources`` says for a key read from the files: ``file`` or ``file BASE``."""
        return _file_source(self.path, self.origin(section, key))


def _file_source(passed: Path, origin: Path) -> str:
    return "file" if origin == passed else f"file {origin}"


def plugin_section_name(name: str) -> str:
    return f"plugin:{name}"


# -- which file -----------------------------------------------------------


def resolve_config_path(explicit: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Path:
    """Pick the ini file: ``--config``, else ``$HOST_CONFIG``, else ./development.ini."""
    if explicit is not None:
        if not str(explicit).strip():
            raise ConfigError("--config was given an empty file name", hint="pass --config FILE")
        return _existing(Path(explicit), "given with --config")
    if environ.get(CONFIG_ENV):
        return _existing(Path(environ[CONFIG_ENV]), f"named by ${CONFIG_ENV}")
    default = Path(DEFAULT_CONFIG)
    if default.is_file():
        return default.resolve()
    raise ConfigError(
        f"no configuration file: --config was not given, ${CONFIG_ENV} is not set, "
        f"and there is no {DEFAULT_CONFIG} in {Path.cwd()}",
        hint=f"pass --config FILE, set {CONFIG_ENV}=FILE, or run from the folder holding {DEFAULT_CONFIG}",
    )


def _existing(path: Path, how: str) -> Path:
    if path.is_dir():
        raise ConfigError(
            f"configuration file {path} ({how}) is a folder",
            hint=f"name the ini file inside it, such as {path / DEFAULT_CONFIG}",
        )
    if not path.is_file():
        raise ConfigError(
            f"configuration file {path} ({how}) does not exist",
            hint="check the path; relative paths are taken from the current folder",
        )
    return path.resolve()


# -- reading --------------------------------------------------------------


def load_config(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> HostConfig:
    """Resolve, read, convert and validate the configuration.

    :param path: the ini file; ``None`` follows :func:`resolve_config_path`.
    :param environ: the environment to take overrides from (``os.environ``
        when ``None``); tests pass their own.
    """
    environ = os.environ if environ is None else environ
    ini = resolve_config_path(path, environ)
    chain = read_chain(ini)
    celery, host, sources = _read_settings(chain)
    _apply_environment(environ, celery, host, sources)
    smtp = _read_namespace("smtp", chain, environ, sources)
    flower = _read_namespace("flower", chain, environ, sources)
    for name, value in CELERY_DEFAULTS.items():
        if name not in celery:
            # A copy: a caller changing its list must not change the next load's default.
            celery[name], sources[f"celery.{name}"] = copy.deepcopy(value), "default"
    for name, option in HOST_OPTIONS.items():
        if name not in host:
            host[name], sources[f"host.{name}"] = copy.deepcopy(option.default), "default"
    _check_serializers(celery, sources, chain)
    _check_embedded_options(celery, sources, chain)
    _check_addresses(host, smtp, sources, chain)
    _check_flower(flower, sources, chain)
    has_logging = chain.logging_path is not None
    if has_logging and "worker_hijack_root_logger" not in celery:
        celery["worker_hijack_root_logger"] = False
        sources["celery.worker_hijack_root_logger"] = "default"
    plugin_environ = {k: v for k, v in environ.items() if k.startswith(PLUGIN_ENV_PREFIX) and v != ""}
    return HostConfig(
        ini,
        celery,
        host,
        sources,
        has_logging,
        chain.parser,
        plugin_environ,
        files=chain.files,
        written_in=chain.written_in,
        logging_path=chain.logging_path,
        smtp=smtp,
        flower=flower,
    )


def _read_settings(chain: IniChain) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """Convert every key of the merged ``[app:main]``; an error names the file it was written in."""
    celery: dict[str, Any] = {}
    host: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, value in section_values(chain.parser, APP_SECTION, chain.origin).items():
        origin = chain.origin(APP_SECTION, key)
        namespace, _, name = key.partition(".")
        if namespace == "celery":
            celery[name] = convert_celery(name, value, path=str(origin), key=key)
        elif namespace in NAMESPACES:
            continue  # read by _read_namespace
        elif namespace == "host":
            host[name] = convert_host(name, value, path=str(origin), key=key)
        else:
            raise ConfigError(
                "unknown key: settings in this section start with 'celery.', 'host.', 'smtp.' or 'flower.'",
                path=str(origin),
                section=APP_SECTION,
                key=key,
                hint=f"write celery.{key} for a Celery setting, or remove it",
            )
        sources[key] = _file_source(chain.path, origin)
    return celery, host, sources


def plugin_names(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> list[str]:
    """``host.plugins`` (or ``$HOST_PLUGINS``) alone, without Celery's option table.

    For ``host --help``, which lists plugin commands and must stay fast; every
    command that runs validates the whole file with :func:`load_config`. The
    key may come from a base file (``use``), so the chain is read all the same.
    """
    environ = os.environ if environ is None else environ
    var = host_env_name("plugins")
    if environ.get(var):
        return convert_host("plugins", environ[var], path=ENVIRONMENT, key=var)
    chain = read_chain(resolve_config_path(path, environ))
    raw = section_values(chain.parser, APP_SECTION, chain.origin)
    key = "host.plugins"
    return convert_host("plugins", raw.get(key, ""), path=str(chain.origin(APP_SECTION, key)), key=key)


# -- conversion -----------------------------------------------------------


def convert_celery(name: str, value: str, *, path: str, key: str) -> Any:
    """Convert one ``celery.`` value to the type Celery's option table gives it."""
    options = cached_celery_options()
    if name not in options:
        raise ConfigError(
            "unknown Celery setting",
            path=path,
            section=_section_of(path),
            key=key,
            hint=suggest(name, options, render=lambda k: f"celery.{k}")
            + " (see https://docs.celeryq.dev/en/stable/userguide/configuration.html)",
        )
    return _convert(options[name], value, path=path, key=key)


def convert_host(name: str, value: str, *, path: str, key: str) -> Any:
    """Convert and check one ``host.`` value."""
    option = HOST_OPTIONS.get(name)
    section = _section_of(path)
    if option is None:
        raise ConfigError(
            "unknown host setting",
            path=path,
            section=section,
            key=key,
            hint=suggest(name, HOST_OPTIONS, render=lambda k: f"host.{k}"),
        )
    return option.convert(value, path=path, section=section, key=key)


def _section_of(path: str) -> str | None:
    return None if path == ENVIRONMENT else APP_SECTION


def suggest(name: str, known: Mapping[str, Any], render: Callable[[str], str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    if close:
        return f"did you mean {render(close[0])}?"
    return "the known keys are listed in docs/configuration.md"


def _convert(kind: str, value: str, *, path: str, key: str) -> Any:
    return convert_value(kind, value, path=path, section=_section_of(path), key=key)


# -- environment and checks -----------------------------------------------


def host_env_name(key: str) -> str:
    """``extensions.on_error`` -> ``HOST_EXTENSIONS_ON_ERROR``."""
    return "HOST_" + key.replace(".", "_").upper()


def _apply_environment(
    environ: Mapping[str, str], celery: dict[str, Any], host: dict[str, Any], sources: dict[str, str]
) -> None:
    options = cached_celery_options()
    # An empty variable counts as unset (VAR= in a shell or a unit file).
    environ = {var: value for var, value in environ.items() if value != ""}
    for var, name in CELERY_ENV_ALIASES.items():
        if var in environ:
            celery[name] = convert_celery(name, environ[var], path=ENVIRONMENT, key=var)
            sources[f"celery.{name}"] = f"env {var}"
    host_vars = {host_env_name(key) for key in HOST_OPTIONS}
    for var in sorted(environ):
        # HOST_CELERY_TASK_DISABLED is host.celery_task.disabled, not a Celery setting.
        if not var.startswith(HOST_CELERY_ENV_PREFIX) or var in host_vars:
            continue
        name = var[len(HOST_CELERY_ENV_PREFIX) :].lower()
        if name not in options:
            raise ConfigError(
                "unknown Celery setting in the environment",
                path=ENVIRONMENT,
                key=var,
                hint=suggest(name, options, render=lambda k: HOST_CELERY_ENV_PREFIX + k.upper()),
            )
        celery[name] = convert_celery(name, environ[var], path=ENVIRONMENT, key=var)
        sources[f"celery.{name}"] = f"env {var}"
    for key in HOST_OPTIONS:
        var = host_env_name(key)
        if var in environ:
            host[key] = convert_host(key, environ[var], path=ENVIRONMENT, key=var)
            sources[f"host.{key}"] = f"env {var}"


# -- smtp.* (failure emails, core/notify.py) and flower.* (host flower) ----


def _read_namespace(
    namespace: str, chain: IniChain, environ: Mapping[str, str], sources: dict[str, str]
) -> dict[str, Any]:
    """The ``smtp.*`` (or ``flower.*``) keys of ``[app:main]``, overridden by ``HOST_SMTP_<KEY>``
    (``HOST_FLOWER_<KEY>``), else their defaults."""
    options, prefix = NAMESPACES[namespace]
    values: dict[str, Any] = {}
    for key, value in section_values(chain.parser, APP_SECTION, chain.origin).items():
        space, _, name = key.partition(".")
        if space == namespace:
            origin = chain.origin(APP_SECTION, key)
            values[name] = convert_namespace(namespace, name, value, path=str(origin), key=key)
            sources[key] = _file_source(chain.path, origin)
    for var in sorted(environ):
        # An empty variable counts as unset, as for every other override.
        if var.startswith(prefix) and environ[var] != "":
            name = var[len(prefix) :].lower()
            values[name] = convert_namespace(namespace, name, environ[var], path=ENVIRONMENT, key=var)
            sources[f"{namespace}.{name}"] = f"env {var}"
    for name, option in options.items():
        if name not in values:
            values[name], sources[f"{namespace}.{name}"] = option.default, "default"
    return values


def convert_namespace(namespace: str, name: str, value: str, *, path: str, key: str) -> Any:
    """Convert and check one ``smtp.`` or ``flower.`` value (from the file, or the environment)."""
    options, prefix = NAMESPACES[namespace]
    option = options.get(name)
    section = _section_of(path)
    if option is None:
        in_env = path == ENVIRONMENT
        raise ConfigError(
            f"unknown {namespace} setting" + (" in the environment" if in_env else ""),
            path=path,
            section=section,
            key=key,
            hint=suggest(
                name,
                options,
                render=lambda k: prefix + k.upper() if in_env else f"{namespace}.{k}",
            ),
        )
    return option.convert(value, path=path, section=section, key=key)


#: One address, as ``user@example.org``: no display name, no spaces, no list separators.
_ADDRESS = re.compile(r"[^@\s<>,;\"']+@[^@\s<>,;\"']+")


def _check_addresses(
    host: dict[str, Any], smtp: dict[str, Any], sources: dict[str, str], chain: IniChain
) -> None:
    """``host.admin_emails`` and ``smtp.mail_from`` hold addresses an SMTP server can take."""
    for key, values in (
        ("host.admin_emails", host.get("admin_emails") or []),
        ("smtp.mail_from", [smtp.get("mail_from")] if smtp.get("mail_from") else []),
    ):
        for value in values:
            if isinstance(value, str) and _ADDRESS.fullmatch(value):
                continue
            source = sources.get(key, "")
            where: dict[str, Any] = (
                {"path": ENVIRONMENT, "key": source.removeprefix("env ")}
                if source.startswith("env ")
                else {"path": str(chain.origin(APP_SECTION, key)), "section": APP_SECTION, "key": key}
            )
            raise ConfigError(
                f"{value!r} is not an email address",
                **where,
                hint="write addresses such as admin@example.org, separated by spaces or commas",
            )


def _check_flower(flower: dict[str, Any], sources: dict[str, str], chain: IniChain) -> None:
    """``flower.port`` is a port; ``flower.basic_auth`` is ``user:password[,...]``, never quoted back."""
    port = flower.get("port")
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError(
            f"{port!r} is not a port", **_where("flower.port", sources, chain), hint="write 1 to 65535"
        )
    credentials = flower.get("basic_auth") or ""
    pairs = [pair.strip() for pair in credentials.split(",")] if credentials else []
    for n, pair in enumerate(pairs, 1):
        user, colon, password = pair.partition(":")
        if not (user and colon and password):
            # The value holds passwords: say which entry is wrong, never what it says.
            raise ConfigError(
                f"entry {n} of the value is not user:password (the value is not shown: it holds passwords)",
                **_where("flower.basic_auth", sources, chain),
                hint="write user:password, several separated by commas: alice:s3cret,bob:0ther "
                "(a password cannot hold a comma: Flower splits the value at each one)",
            )
    if pairs:
        # As checked: Flower compares "user:password" whole, so " bob:pw" would never match.
        flower["basic_auth"] = ",".join(pairs)


def _where(key: str, sources: dict[str, str], chain: IniChain) -> dict[str, Any]:
    """Where a value was set, for an error: the variable that set it, else its file and key."""
    source = sources.get(key, "")
    if source.startswith("env "):
        return {"path": ENVIRONMENT, "key": source.removeprefix("env ")}
    return {"path": str(chain.origin(APP_SECTION, key)), "section": APP_SECTION, "key": key}


#: Each serializer, the setting listing what its readers accept, and what a mismatch does.
_SERIALIZER_CHECKS = (
    ("task_serializer", "accept_content", "workers would reject every such message"),
    # Result readers use result_accept_content, else accept_content
    # (celery/backends/base.py, Backend.__init__).
    ("result_serializer", "result_accept_content", "every result would be refused when read"),
)


def _check_serializers(celery: dict[str, Any], sources: dict[str, str], chain: IniChain) -> None:
    """A serializer its readers would refuse is a configuration error, not lost tasks."""
    for name, accept_key, consequence in _SERIALIZER_CHECKS:
        if celery.get(accept_key) is None:
            accept_key = "accept_content"
        accepted = set(celery.get(accept_key) or [])
        serializer = celery.get(name)
        if serializer and serializer not in accepted and _mime(serializer) not in accepted:
            key = f"celery.{name}"
            # The file that set the serializer: a base file's, if it came through use.
            written = sources.get(key, "").startswith("file")
            raise ConfigError(
                f"celery.{name} = {serializer} is not in celery.{accept_key} "
                f"({', '.join(sorted(accepted)) or 'empty'}); {consequence}",
                path=str(chain.origin(APP_SECTION, key) if written else chain.path),
                section=APP_SECTION,
                hint=f"accepting {serializer} must be explicit: add it to celery.{accept_key}",
            )


#: The embedded broker's own transport options: the least each may be.
EMBEDDED_TRANSPORT_OPTIONS = {"lease_seconds": 3.0, "polling_interval": 0.001}


def _check_embedded_options(celery: dict[str, Any], sources: dict[str, str], chain: IniChain) -> None:
    """``lease_seconds`` and ``polling_interval`` are numbers the embedded broker can use."""
    options = celery.get("broker_transport_options")
    if not str(celery.get("broker_url") or "").startswith("embedded+") or not isinstance(options, dict):
        return
    for name, least in EMBEDDED_TRANSPORT_OPTIONS.items():
        value = options.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < least:
            key = "celery.broker_transport_options"
            written = sources.get(key, "").startswith("file")
            raise ConfigError(
                f"{key}: {name} = {value!r} is not a number of seconds of at least {least:g}",
                path=str(chain.origin(APP_SECTION, key) if written else chain.path),
                section=APP_SECTION,
                hint=f'for example {key} = {{"{name}": {30 if name == "lease_seconds" else 1}}}',
            )


def _mime(serializer: str) -> str:
    """``json`` -> ``application/json``: kombu's own table of serializer names."""
    from kombu.serialization import registry

    return registry.name_to_type.get(serializer, serializer)


# -- logging ----------------------------------------------------------------


def configure_logging(config: HostConfig) -> None:
    """``[loggers]``/``[handlers]``/``[formatters]`` in the ini configure logging.

    They come whole from one file, :attr:`HostConfig.logging_path`: the file
    passed if it has ``[loggers]``, else the nearest base file that has. The
    worker then leaves the root logger alone (``worker_hijack_root_logger``
    is off whenever logging comes from a file).
    """
    if not config.has_logging:
        return
    import logging.config

    where = str(config.logging_path or config.path)
    try:
        if config.parser is not None:
            # The merged parser holds that file's logging sections, %(here)s
            # already its folder, and the chain's [DEFAULT] names.
            logging.config.fileConfig(config.parser, disable_existing_loggers=False)
        else:
            logging.config.fileConfig(
                config.path, defaults=interpolation_variables(config.path), disable_existing_loggers=False
            )
    except KeyError as e:
        raise ConfigError(
            f"the logging sections are incomplete: nothing defines {e.args[0]!r}",
            path=where,
            hint="[loggers], [handlers] and [formatters] each need a keys = line, and every name "
            "listed there its own [logger_NAME], [handler_NAME] or [formatter_NAME] section",
        ) from e
    except Exception as e:
        raise ConfigError(
            f"the logging sections are invalid: {type(e).__name__}: {mask_text(one_line(e))}",
            path=where,
            hint="see https://docs.python.org/3/library/logging.config.html#configuration-file-format",
        ) from e
