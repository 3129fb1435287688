"""The periodic entries beat sends: read from the ini and the plugins, checked, and where each came from.

One schedule, merged from three sources (the first wins on a name clash
with a plugin; two ini definitions of one name are an error):

1. ``[celerybeat:NAME]`` sections, as pyramid_celery wrote them::

       [celerybeat:nightly-report]
       task = reports.nightly
       schedule = 0 3 * * *
       args = ["pdf"]
       kwargs = {"notify": true}
       queue = reports
       options = {"expires": 3600}

2. ``celery.beat_schedule`` in ``[app:main]``: Celery's own form, as JSON;
3. every plugin's :func:`~plugins.hookspecs.host_beat_schedule`.

``schedule`` is written the same way everywhere (:func:`parse_schedule`):
seconds (``30``), a duration (``90s``, ``5m``, ``1h30m``, ``2d``), a
five-field crontab (``*/15 * * * *``) or ``@hourly``, ``@daily``,
``@midnight``, ``@weekly``, ``@monthly``, ``@yearly``, ``@annually``. A
plugin may also return a number, a ``timedelta`` or a ``celery.schedules``
object.

Everything here is checked when the app is configured, so a malformed
crontab, bad JSON or an unknown key stops every command with an error naming
the file and section (exit 2). Whether each entry's task exists needs the
installed extensions: :func:`unknown_task_errors` checks it once they are
discovered (``host celerybeat``, ``host celeryd -B``, ``host doctor``,
``host plugins``, ``host schedule``).
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from core.config import APP_SECTION, ENVIRONMENT, HostConfig, suggest
from core.errors import ConfigError, HostError, PluginError
from core.inifile import section_values

if TYPE_CHECKING:
    from core.plugin_manager import HostPluginManager

#: ``[celerybeat:NAME]``: one periodic entry, named NAME.
SECTION_PREFIX = "celerybeat:"
#: The keys of a ``[celerybeat:NAME]`` section, and what each holds.
SECTION_KEYS = {
    "task": "the task's name",
    "schedule": "when it runs: seconds, a duration, a crontab or an @ name",
    "args": "a JSON list of positional arguments",
    "kwargs": "a JSON object of keyword arguments",
    "queue": "the queue to send it to, as plugins and -Q name it",
    "options": "a JSON object of apply_async options",
}
#: The keys of an entry in Celery's ``beat_schedule`` form.
ENTRY_KEYS = ("task", "schedule", "args", "kwargs", "options", "relative")
BEAT_SCHEDULE_KEY = "celery.beat_schedule"

SCHEDULE_HINT = (
    "write seconds (30), a duration (90s, 5m, 1h), a five-field crontab "
    "(minute hour day-of-month month day-of-week, such as */15 * * * *) or one of "
    "@hourly, @daily, @midnight, @weekly, @monthly, @yearly"
)

#: ``@daily`` and the other names cron knows, as Celery crontabs (minute hour dom month dow).
NICKNAMES = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
#: The crontab's fields in order: Celery's argument name, what cron calls it, the range.
CRON_FIELDS = (
    ("minute", "minute", 0, 59),
    ("hour", "hour", 0, 23),
    ("day_of_month", "day of month", 1, 31),
    ("month_of_year", "month", 1, 12),
    ("day_of_week", "day of week", 0, 6),
)
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER = re.compile(r"^\d+(\.\d+)?$")
_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?\s*[smhd]\s*)+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_STEP = re.compile(r"/(\d+)$")
#: What a crontab field looks like (``*/15``, ``1-5``, ``mon-fri``), to tell a miscounted crontab from prose.
_CRON_TOKEN = re.compile(r"^(?:[\d*/,?-]+|[a-z]{3}(?:-[a-z]{3})?)$", re.IGNORECASE)


class BadSchedule(ValueError):
    """A schedule that cannot be: what is wrong, and how to write it."""

    def __init__(self, message: str, hint: str = SCHEDULE_HINT) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


def parse_schedule(text: str) -> float | Any:
    """``30`` -> 30.0 seconds, ``5m`` -> 300.0, ``*/15 * * * *`` and ``@daily`` -> a Celery ``crontab``.

    :raises BadSchedule: naming what is wrong (the crontab field, say).
    """
    from celery.schedules import crontab

    value = " ".join(text.split())
    if not value:
        raise BadSchedule("is empty")
    if _NUMBER.match(value):
        return _positive(float(value), value)
    if _DURATION.match(value):
        seconds = sum(float(n) * _UNITS[unit] for n, unit in _DURATION_PART.findall(value))
        return _positive(seconds, value)
    if value.startswith("@"):
        if value.lower() not in NICKNAMES:
            names = ", ".join(NICKNAMES)
            raise BadSchedule(f"{value!r} is not a schedule name", hint=f"the names are {names}")
        value = NICKNAMES[value.lower()]
    fields = value.split(" ")
    if len(fields) != len(CRON_FIELDS):
        if len(fields) in (3, 4, 6, 7) and all(_CRON_TOKEN.match(f) for f in fields):
            raise BadSchedule(
                f"{value!r} has {len(fields)} fields; a crontab has five: minute hour day-of-month "
                "month day-of-week (no seconds, no year)"
            )
        raise BadSchedule(f"{value!r} is not a schedule")
    for field, (_, name, low, high) in zip(fields, CRON_FIELDS, strict=True):
        _check_cron_field(field, name, low, high, value)
    spec = {arg: field for field, (arg, _, _, _) in zip(fields, CRON_FIELDS, strict=True)}
    try:
        return crontab(**spec)
    except ValueError as e:  # Celery checks the dates can occur (the 30th of February)
        raise BadSchedule(
            f"crontab {value!r} never runs: no month of {fields[3]!r} has a day {fields[2]!r}",
            hint="correct the day of month or the month",
        ) from e


def _positive(seconds: float, text: str) -> float:
    if not math.isfinite(seconds) or seconds <= 0:
        raise BadSchedule(f"{text!r} is not a time after now: the interval must be more than 0 seconds")
    return seconds


def _check_cron_field(field: str, name: str, low: int, high: int, whole: str) -> None:
    """One field of a crontab, the way Celery's parser reads it, with the field named on error."""
    from celery.schedules import crontab_parser

    where = f"crontab {whole!r}, {name} field {field!r}"
    names = {"month": " or jan-dec", "day of week": " (0 is Sunday) or sun-sat"}.get(name, "")
    hint = (
        f"the {name} field takes {low}-{high}{names}: a value, a range (1-5), a step (*/15), "
        "or a list of them (1,15); fields are minute hour day-of-month month day-of-week"
    )
    for part in field.split(","):
        step = _STEP.search(part)
        if step and not 0 < int(step[1]) <= high - low + 1:
            raise BadSchedule(f"{where}: the step {step[1]} does not fit in {low}-{high}", hint)
    try:
        # Celery's parser: its own ranges (0-59, 0-23, 1-31, 1-12, 0-6) and names (mon, jan).
        crontab_parser(high + 1 if low == 0 else high, low).parse(field)
    except ValueError as e:
        raise BadSchedule(f"{where}: {_cron_problem(e, low, high)}", hint) from e
    except Exception as e:  # the parser's own ParseException for a field it cannot read at all
        raise BadSchedule(f"{where}: not a crontab field", hint) from e


_OUT_OF_RANGE = re.compile(r"Invalid (?:beginning|end) range: (\d+) [<>] \d+")


def _cron_problem(error: ValueError, low: int, high: int) -> str:
    text = str(error)
    out = _OUT_OF_RANGE.search(text)
    if out:
        return f"{out[1]} is outside {low}-{high}"
    # Celery tries a word it cannot read as a weekday name, whatever the field.
    if "literal" in text:
        return "not a number, a name, a range, a step or a list"
    return text.rstrip(".")


def describe_schedule(schedule: Any) -> str:
    """How ``host schedule`` shows a schedule: ``every 30 s``, ``*/15 * * * *``."""
    from celery.schedules import crontab
    from celery.schedules import schedule as interval

    if isinstance(schedule, (int, float)) and not isinstance(schedule, bool):
        return f"every {_seconds_text(float(schedule))}"
    if isinstance(schedule, timedelta):
        return f"every {_seconds_text(schedule.total_seconds())}"
    if isinstance(schedule, crontab):
        return " ".join(str(getattr(schedule, f"_orig_{arg}")) for arg, _, _, _ in CRON_FIELDS)
    if isinstance(schedule, interval):
        return f"every {_seconds_text(schedule.run_every.total_seconds())}"
    return str(schedule)


def _seconds_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


# -- where an entry came from -------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where one entry was written: an ini section, ``celery.beat_schedule``, or a plugin."""

    #: ``section``, ``key`` or ``plugin``.
    kind: str
    path: str | None = None
    section: str | None = None
    key: str | None = None
    plugin: str | None = None

    @property
    def label(self) -> str:
        """``/srv/app/development.ini [celerybeat:nightly]``, ``plugin example``."""
        if self.kind == "plugin":
            return f"plugin {self.plugin}"
        if self.kind == "section":
            return f"{self.path} [{self.section}]"
        return f"{self.path} {self.key}"

    def as_json(self) -> dict[str, Any]:
        if self.kind == "plugin":
            return {"plugin": self.plugin}
        if self.kind == "section":
            return {"file": self.path, "section": self.section}
        return {"file": self.path, "section": self.section, "key": self.key}


def section_name(entry: str) -> str:
    return f"{SECTION_PREFIX}{entry}"


def beat_sections(config: HostConfig) -> list[str]:
    """The ``[celerybeat:NAME]`` sections of the merged ini files, in the order written."""
    parser = config.parser
    if parser is None:
        return []
    found = []
    for section in parser.sections():
        if section.strip().lower() == "celerybeat" or (
            section.lower().startswith(SECTION_PREFIX) and section != section.strip()
        ):
            raise ConfigError(
                "a periodic entry's section needs a name",
                path=_section_file(config, section),
                section=section,
                hint="write [celerybeat:NAME], such as [celerybeat:nightly-report]",
            )
        if section.lower().replace("-", "").replace("_", "").startswith("celerybeat") and not (
            section.startswith(SECTION_PREFIX)
        ):
            # Other unknown sections are left alone, as PasteDeploy leaves [server:main]; this
            # one is a periodic entry misspelt, which would otherwise never run.
            raise ConfigError(
                "not a periodic entry's section: it would be ignored",
                path=_section_file(config, section),
                section=section,
                hint="write [celerybeat:NAME], in lower case, such as [celerybeat:nightly-report]",
            )
        if section.startswith(SECTION_PREFIX):
            name = section[len(SECTION_PREFIX) :]
            if not name.strip() or name != name.strip():
                raise ConfigError(
                    "a periodic entry's section needs a name, with no space around it",
                    path=_section_file(config, section),
                    section=section,
                    hint="write [celerybeat:NAME], such as [celerybeat:nightly-report]",
                )
            found.append(section)
    return found


def _section_file(config: HostConfig, section: str) -> str:
    """The file a section was written in (a base file, through ``use``): where its first key was."""
    written = [path for (name, _), path in config.written_in.items() if name == section]
    return str(written[0] if written else config.path)


def ini_entries(config: HostConfig) -> tuple[dict[str, dict[str, Any]], dict[str, Source]]:
    """The ini's periodic entries, checked and in Celery's form, and where each was written.

    ``[celerybeat:NAME]`` sections, then ``celery.beat_schedule``; a name both
    define is an error.

    :raises ConfigError: naming the file, section and key of the first problem.
    """
    entries: dict[str, dict[str, Any]] = {}
    sources: dict[str, Source] = {}
    for section in beat_sections(config):
        name = section[len(SECTION_PREFIX) :]
        entries[name], sources[name] = _read_section(config, section)
    written = config.celery.get("beat_schedule") or {}
    if written:
        key_source = config.sources.get(BEAT_SCHEDULE_KEY, "file")
        where: str | None = APP_SECTION
        key = BEAT_SCHEDULE_KEY
        if key_source.startswith("env "):
            path, where, key = ENVIRONMENT, None, key_source[len("env ") :]
        else:
            path = str(config.origin(APP_SECTION, BEAT_SCHEDULE_KEY))
        if not isinstance(written, Mapping):
            raise ConfigError(
                "is not a JSON object of entries",
                path=path,
                section=where,
                key=key,
                hint='write {"NAME": {"task": "TASK", "schedule": "*/15 * * * *"}}, or a [celerybeat:NAME] '
                "section per entry",
            )
        for name, entry in written.items():
            source = Source("key", path=path, section=where, key=key)
            if name in entries:
                raise ConfigError(
                    f"the entry {name!r} is also defined by the section [{section_name(name)}] "
                    f"of {sources[name].path}",
                    path=path,
                    section=where,
                    key=key,
                    hint="keep one of them",
                )

            def error(
                message: str, hint: str | None = None, *, _name: str = name, _key: str = key
            ) -> HostError:
                return ConfigError(
                    f"entry {_name!r}: {message}", path=path, section=where, key=_key, hint=hint
                )

            entries[name], sources[name] = checked_entry(entry, error), source
    return entries, sources


def _read_section(config: HostConfig, section: str) -> tuple[dict[str, Any], Source]:
    assert config.parser is not None
    values = section_values(config.parser, section, config.origin)
    path = str(config.origin(section, "task")) if "task" in values else _section_file(config, section)

    def fail(key: str | None, message: str, hint: str | None = None) -> ConfigError:
        where = str(config.origin(section, key)) if key else path
        return ConfigError(message, path=where, section=section, key=key, hint=hint)

    for key in values:
        if key not in SECTION_KEYS:
            hint = suggest(key, SECTION_KEYS, render=str)
            if key == "type":
                hint = "schedule = takes the crontab or the interval itself: schedule = 0 12 * * *"
            elif not hint.startswith("did you mean"):
                hint = f"the keys are {', '.join(SECTION_KEYS)}"
            raise fail(key, "unknown key of a periodic entry", hint)
    for key in ("task", "schedule"):
        if not values.get(key, "").strip():
            raise fail(None, f"the entry has no {key} =", f"add {key} = ({SECTION_KEYS[key]})")
    entry: dict[str, Any] = {"task": values["task"].strip()}
    try:
        entry["schedule"] = parse_schedule(values["schedule"])
    except BadSchedule as e:
        raise fail("schedule", e.message, e.hint) from e
    for key, kind, example in (("args", list, '["pdf", 3]'), ("kwargs", dict, '{"notify": true}')):
        if values.get(key, "").strip():
            entry[key] = _json(values[key], kind, functools.partial(fail, key), example)
    options: dict[str, Any] = {}
    if values.get("options", "").strip():
        options = _json(values["options"], dict, functools.partial(fail, "options"), '{"expires": 3600}')
    queue = values.get("queue", "").strip()
    if queue:
        if options.get("queue", queue) != queue:
            raise fail("queue", "differs from the queue in options =", "name the queue in one place")
        options["queue"] = queue
    if options:
        entry["options"] = options
    return entry, Source("section", path=path, section=section)


def _json(text: str, kind: type, fail: Callable[[str, str], HostError], example: str) -> Any:
    what = "a JSON list" if kind is list else "a JSON object"
    try:
        value = json.loads(text)
    except ValueError as e:
        raise fail(f"is not {what}: {e}", f"for example {example}") from e
    if not isinstance(value, kind):
        raise fail(f"is {_json_kind(value)}, not {what}", f"for example {example}")
    return value


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true or false"
    if value is None:
        return "null"
    kinds: dict[type, str] = {list: "a JSON list", dict: "a JSON object", str: "a JSON string"}
    return kinds.get(type(value), "a number")


def checked_entry(entry: Any, error: Callable[..., HostError]) -> dict[str, Any]:
    """An entry in Celery's form (``celery.beat_schedule``, a plugin's), checked, its schedule parsed."""
    from celery.schedules import BaseSchedule

    if not isinstance(entry, Mapping):
        raise error(f"is {type(entry).__name__}, not an object", 'write {"task": ..., "schedule": ...}')
    unknown = [k for k in entry if k not in ENTRY_KEYS]
    if unknown:
        hint = suggest(str(unknown[0]), dict.fromkeys(ENTRY_KEYS), render=str)
        if not hint.startswith("did you mean"):
            hint = f"the keys are {', '.join(ENTRY_KEYS)}"
        raise error(f"unknown key {unknown[0]!r}", hint)
    task = entry.get("task")
    if not isinstance(task, str) or not task.strip():
        raise error("has no task name", 'add "task": "NAME"')
    checked = dict(entry)
    schedule = entry.get("schedule")
    if isinstance(schedule, str):
        try:
            checked["schedule"] = parse_schedule(schedule)
        except BadSchedule as e:
            raise error(f"schedule: {e.message}", e.hint) from e
    elif isinstance(schedule, bool) or not isinstance(schedule, (int, float, timedelta, BaseSchedule)):
        raise error(f"schedule is {schedule!r}, not a schedule", SCHEDULE_HINT)
    elif isinstance(schedule, (int, float)) and (not math.isfinite(schedule) or schedule <= 0):
        raise error(f"schedule is {schedule!r}: the interval must be more than 0 seconds", SCHEDULE_HINT)
    for key, kind in (("args", (list, tuple)), ("kwargs", Mapping), ("options", Mapping)):
        if entry.get(key) is not None and not isinstance(entry[key], kind):
            expected = "a list" if key == "args" else "an object"
            raise error(f"{key} is {type(entry[key]).__name__}, not {expected}", f"write {key} as {expected}")
    return checked


# -- the merged schedule --------------------------------------------------------------------


def merge(
    config: HostConfig, plugin_entries: Mapping[str, Any], pm: HostPluginManager | None
) -> tuple[dict[str, dict[str, Any]], dict[str, Source]]:
    """The ini's entries, then the plugins' (an ini entry of the same name wins), each checked.

    A plugin's bad entry fails that plugin (``pm.fail``) and is left out.

    :raises ConfigError: for a problem of the ini's entries.
    """
    schedule, sources = ini_entries(config)
    owners = plugin_owners(pm)
    for name, entry in plugin_entries.items():
        if name in schedule:
            continue
        owner = owners.get(name)

        def error(
            message: str, hint: str | None = None, *, _name: str = name, _owner: Any = owner
        ) -> HostError:
            text = f"host_beat_schedule() entry {_name!r}: {message}"
            if _owner is None:
                return PluginError(text, plugin="?", hint=hint)
            return _owner.error_for(text, hint=hint)

        try:
            schedule[name] = checked_entry(entry, error)
        except PluginError as e:
            if pm is not None and owner is not None:
                pm.fail(owner, e)
                continue
            raise
        sources[name] = Source("plugin", plugin=owner.name if owner is not None else "?")
    return schedule, sources


def plugin_owners(pm: HostPluginManager | None) -> dict[str, Any]:
    """``{entry name: the plugin record that contributed it}``, the first plugin in order winning."""
    owners: dict[str, Any] = {}
    if pm is None:
        return owners
    for plugin in sorted(pm.records, key=lambda p: pm.order.get(p.name, len(pm.order))):
        for name in plugin.beat:
            owners.setdefault(name, plugin)
    return owners


def entry_sources(
    schedule: Mapping[str, Any],
    config: HostConfig,
    pm: HostPluginManager | None,
    changed_by: Mapping[str, str],
) -> dict[str, Source]:
    """Where each entry of the app's ``beat_schedule`` came from (``host schedule``, error messages)."""
    sources: dict[str, Source] = {}
    try:
        _, ini = ini_entries(config)
    except ConfigError:
        ini = {}
    owners = plugin_owners(pm)
    for name in schedule:
        if name in ini:
            sources[name] = ini[name]
        elif name in owners:
            sources[name] = Source("plugin", plugin=owners[name].name)
        else:  # added by a plugin's host_celery_config, or by Celery itself
            changer = changed_by.get("beat_schedule", "")
            plugin = changer[len("plugin ") :] if changer.startswith("plugin ") else "celery"
            sources[name] = Source("plugin", plugin=plugin)
    return sources


def unknown_task_errors(
    schedule: Mapping[str, Any],
    known: Iterable[str],
    sources: Mapping[str, Source],
    pm: HostPluginManager | None,
) -> list[tuple[str, HostError]]:
    """``(entry, error)`` for each entry whose task no installed extension provides.

    An ini entry's error is a :class:`ConfigError` naming its file and section;
    a plugin's, a :class:`PluginError` of that plugin.
    """
    import difflib

    known = set(known)
    problems: list[tuple[str, HostError]] = []
    for name, entry in sorted(schedule.items()):
        task = entry.get("task")
        if task in known:
            continue
        close = difflib.get_close_matches(str(task), sorted(known), n=1)
        hint = (
            f"did you mean {close[0]}? (host tasks lists every task)"
            if close
            else "install or enable the extension that provides it, or correct the entry (host tasks lists "
            "every task)"
        )
        message = f"no installed extension provides the task {task!r}"
        source = sources.get(name)
        if source is None or source.kind == "plugin":
            owner = plugin_owners(pm).get(name)
            text = f"beat entry {name!r} runs task {task!r}, which no installed extension provides"
            error: HostError = (
                owner.error_for(text, hint=hint)
                if owner is not None
                else PluginError(text, plugin=(source.plugin if source else None) or "?", hint=hint)
            )
        elif source.kind == "section":
            error = ConfigError(message, path=source.path, section=source.section, key="task", hint=hint)
        else:
            error = ConfigError(
                f"entry {name!r}: {message}",
                path=source.path,
                section=source.section,
                key=source.key,
                hint=hint,
            )
        problems.append((name, error))
    return problems
