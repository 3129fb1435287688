"""Flower, the monitoring web UI, on the configured app: its command line and environment.

``host flower`` runs ``celery flower`` in its own process on the host's app,
so Flower sees what a worker of the same ini sees: the broker, the result
store, and the control and event exchanges with the site prefix
(``host.site_id``). The ``flower.*`` keys give its defaults; options after
``--`` go to Flower unchanged and win over them.

The basic-auth credentials (``flower.basic_auth``, or ``HOST_FLOWER_BASIC_AUTH``)
never go on the command line, which every user of the machine can read
(``ps``): they reach Flower through its own environment variable,
``FLOWER_BASIC_AUTH`` (flower/command.py, ``apply_env_options``).

Flower turns task events on in every worker it sees, every 5 s, through remote
control (its ``--enable_events`` option, on by default): a worker started
without ``-E`` shows its tasks in Flower as soon as Flower runs.
"""

from __future__ import annotations

import importlib.util
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.config import HostConfig
from core.errors import UsageError

INSTALL_HINT = "install the flower extra: pip install 'host-framework[flower]'"
#: The environment variable Flower reads its basic-auth credentials from.
BASIC_AUTH_ENV = "FLOWER_BASIC_AUTH"
#: Flower's options (or ``FLOWER_*`` variables) that make it ask who is calling.
_AUTH_OPTIONS = ("basic_auth", "auth", "auth_provider")


@dataclass(frozen=True)
class FlowerRun:
    """How to start Flower: ``celery`` arguments, and the variables to add to its environment."""

    argv: list[str]
    env: dict[str, str] = field(repr=False)
    address: str
    port: int
    url_prefix: str
    #: What the operator should know before Flower starts.
    warnings: tuple[str, ...] = ()
    #: Flower's own authentication options or ``FLOWER_*`` variables were given.
    auth_given: bool = False

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address or "0.0.0.0"
        prefix = f"/{self.url_prefix.strip('/')}/" if self.url_prefix.strip("/") else "/"
        return f"http://{host}:{self.port}{prefix}"

    @property
    def authenticated(self) -> bool:
        return bool(self.env.get(BASIC_AUTH_ENV)) or self.auth_given


def require_flower() -> None:
    """Flower is installed, or a :class:`UsageError` (exit 2) saying how to install it."""
    if importlib.util.find_spec("flower") is None:
        raise UsageError(f"Flower is not installed; {INSTALL_HINT}", hint=INSTALL_HINT)


def flower_run(config: HostConfig, args: Sequence[str], environ: Mapping[str, str]) -> FlowerRun:
    """``celery flower`` arguments from ``flower.*`` and ``args`` (Flower's own options, which win).

    :param environ: the environment Flower will run with: its own ``FLOWER_*``
        variables count as given, as Flower reads them too.
    :raises UsageError: Flower would listen beyond this machine with nobody asked to log in.
    """
    given = flower_options(args, environ)
    address = given.get("address", config.flower["address"])
    port = given.get("port", str(config.flower["port"]))
    prefix = given.get("url_prefix", config.flower["url_prefix"])
    env = {BASIC_AUTH_ENV: config.flower["basic_auth"]} if config.flower["basic_auth"] else {}
    auth_given = any(given.get(name) for name in _AUTH_OPTIONS)
    if not _loopback(address) and not env and not auth_given:
        raise UsageError(
            f"refusing to run Flower on {address or 'every address'} without authentication: "
            "anyone who reaches it could revoke tasks and shut workers down",
            hint="set flower.basic_auth = user:password in the ini (or HOST_FLOWER_BASIC_AUTH), "
            "or listen on 127.0.0.1 behind a reverse proxy that authenticates",
        )
    ours = [f"--address={address}", f"--port={port}"]
    if prefix:
        ours.append(f"--url_prefix={prefix}")
    defaults = [arg for arg in ours if _name(arg) not in given]
    warnings = []
    if any(_name(arg).replace("-", "_") == "basic_auth" for arg in args):
        warnings.append(
            "--basic_auth on the command line is visible to every user of this machine (ps): "
            "set flower.basic_auth or HOST_FLOWER_BASIC_AUTH instead"
        )
    return FlowerRun(
        ["flower", *defaults, *args], env, address, _port(port), prefix, tuple(warnings), auth_given
    )


def flower_options(args: Sequence[str], environ: Mapping[str, str]) -> dict[str, str]:
    """Flower's options in ``args`` (``--name=value``, as Flower takes them) and ``FLOWER_*`` variables.

    Names as Flower normalizes them: ``--url-prefix`` is ``url_prefix``. A flag
    without a value counts as ``"true"``.
    """
    found = {
        var.removeprefix("FLOWER_").lower(): value
        for var, value in environ.items()
        if var.startswith("FLOWER_") and value
    }
    for arg in args:
        if arg.startswith("-") and arg != "--":
            name, equals, value = arg.lstrip("-").partition("=")
            found[name.replace("-", "_")] = value if equals else "true"
    return found


def _port(text: str) -> int:
    if text.isdigit() and 0 < int(text) < 65536:
        return int(text)
    raise UsageError(f"{text!r} is not a port for Flower", hint="write --port=5566: 1 to 65535, after an '='")


def _name(arg: str) -> str:
    return arg.lstrip("-").partition("=")[0]


def _loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # a host name, or "" (every address)
        return False


def flower_settings(config: HostConfig) -> list[tuple[str, Any, str, str | None]]:
    """The ``flower.*`` keys as ``host config show`` lists them: key, value (masked), source, meaning."""
    from core.masking import mask

    rows: list[tuple[str, Any, str, str | None]] = []
    for name, value in sorted(config.flower.items()):
        key = f"flower.{name}"
        rows.append((key, mask(value, key), config.sources.get(key, "default"), None))
    return rows
