"""The one exception family of host-framework.

Every problem the framework can diagnose is a :class:`HostError`. Each
subclass carries the offending object as attributes (file, section and key;
distribution, entry point and module) so callers can act on it, and a
message written for the person who has to fix it: what is wrong, where, and
what to do.

Each is a :class:`click.ClickException` carrying its own exit status, so that
any click program that meets one -- ``host``, and Celery's own ``celery -A
core.celery_app ...`` when the app cannot be configured -- prints ``Error:``
and the message instead of a traceback, and exits 2 for a configuration
problem (Flask's ``NoAppException`` is a ``click.UsageError`` for the same
reason).
"""

from __future__ import annotations

from collections.abc import Sequence

import click


class HostError(click.ClickException):
    """Base class: a problem the user can fix, reported without a traceback."""

    #: Exit status the CLI uses; 2 means "the configuration is wrong".
    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)  # sets self.message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  -> {self.hint}" if self.hint else self.message

    def format_message(self) -> str:
        return str(self)


class ConfigError(HostError):
    """The ini file (or the environment overriding it) is invalid."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        section: str | None = None,
        key: str | None = None,
        hint: str | None = None,
    ) -> None:
        where = ", ".join(
            part
            for part in (
                path,
                f"section [{section}]" if section else None,
                f"key {key!r}" if key else None,
            )
            if part
        )
        super().__init__(f"{where}: {message}" if where else message, hint=hint)
        self.path, self.section, self.key = path, section, key


class ExtensionError(HostError):
    """An installed extension could not contribute its tasks.

    ``not_installed`` tells "a module it names is not installed" apart from
    "a module exists but raised while importing".
    """

    def __init__(
        self,
        message: str,
        *,
        distribution: str,
        version: str,
        entry_point: str,
        module: str | None = None,
        not_installed: bool = False,
        duplicate_task: str | None = None,
        hint: str | None = None,
    ) -> None:
        source = f"extension {distribution}=={version} (entry point {entry_point})"
        super().__init__(f"{source}: {message}", hint=hint)
        self.distribution, self.version = distribution, version
        self.entry_point, self.module = entry_point, module
        self.not_installed = not_installed
        #: The task name, when the problem is a name another extension registered.
        self.duplicate_task = duplicate_task


class PluginError(HostError):
    """A plugin named in ``host.plugins`` could not be loaded, or one of its hooks failed."""

    def __init__(
        self,
        message: str,
        *,
        plugin: str,
        distribution: str | None = None,
        version: str | None = None,
        entry_point: str | None = None,
        not_installed: bool = False,
        hint: str | None = None,
    ) -> None:
        source = f"plugin {plugin!r}"
        if distribution:
            source += f" ({distribution}=={version}, entry point {entry_point})"
        super().__init__(
            f"{source} {message}" if message.startswith("is ") else f"{source}: {message}", hint=hint
        )
        self.plugin, self.distribution, self.version = plugin, distribution, version
        self.entry_point, self.not_installed = entry_point, not_installed


class DuplicateTaskError(HostError):
    """Two sources register the same task name."""

    def __init__(self, name: str, first: str, second: str) -> None:
        super().__init__(
            f"task name {name!r} is registered twice: by {first} and by {second}",
            hint="rename one of the tasks, or disable one extension with "
            "host.celery_task.disabled in the ini",
        )
        self.name, self.first, self.second = name, first, second


class UsageError(HostError):
    """A command-line argument is wrong (unknown task, argument not JSON...)."""


class ServiceUnavailable(HostError):
    """The broker or the result store does not answer; nothing is wrong with the request."""

    exit_code = 1


class TaskFailed(HostError):
    """The task ran and raised; not a configuration problem."""

    exit_code = 1


class ResultTimeout(HostError):
    """Waiting for a result gave up; the task may still run later."""

    exit_code = 1


def combine(errors: Sequence[HostError]) -> HostError:
    """One error for several: the only one, or a numbered list of all."""
    if len(errors) == 1:
        return errors[0]
    kinds = {type(e) for e in errors}
    what = (
        "plugins"
        if kinds == {PluginError}
        else "extensions"
        if PluginError not in kinds
        else "extensions and plugins"
    )
    text = "\n".join(f"  {i}. {e}" for i, e in enumerate(errors, 1))
    return HostError(
        f"{len(errors)} {what} are broken:\n{text}",
        hint=f"fix them, or set host.extensions.on_error = warn to skip broken {what}",
    )
