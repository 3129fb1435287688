"""Hide secrets wherever a value is shown: URLs, dicts, ``key=value`` pairs, free text."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

#: A key or parameter name that holds a secret.
SECRET_KEY = re.compile(
    r"password|passwd|secret|token|api_?key|credential|auth|access_?key|account_?key|private_?key|sas",
    re.IGNORECASE,
)


def mask(value: Any, key: str = "") -> Any:
    """Hide passwords: in URLs, in dicts, and under keys that name a secret."""
    if isinstance(value, Mapping):
        return {k: mask(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(mask(v, key) for v in value)
    if key and SECRET_KEY.search(key) and value not in (None, ""):
        return "********"
    if isinstance(value, str) and ("://" in value or "=" in value):
        return mask_url(value)
    return value


# Everything between "scheme://user:" and the last "@" is the password. Not
# kombu's sanitize_url: it raises (quoting part of the password) when the
# password holds "/", "?" or "#", and drops the query string. A scheme starts
# only where no scheme character precedes it, so that text without a URL (a
# long base64 argument) is scanned once, not once per position.
_URL_PASSWORD = re.compile(r"(?<![\w+.-])([A-Za-z][\w+.-]*://[^:@/?#\s]*:)(.*)@", re.DOTALL)
# key=value pairs: URL query parameters (?password=...) and connection strings
# (Azure's AccountKey=...;); the key is then checked against SECRET_KEY. One
# pass over the text: each key ends at its first "=" or separator.
_KEY_VALUE = re.compile(r"((?:^|[?&;\s])([^=&;?\s]+)=)([^&;\s]*)")


def mask_url(url: str) -> str:
    """``amqp://user:secret@host//`` -> ``amqp://user:**@host//``; several URLs
    separated by ``;`` (kombu's fail-over syntax) are each masked, and so are
    secrets written as ``key=value``, such as ``?password=`` or ``AccountKey=``."""
    return ";".join(_mask_one_url(part) for part in url.split(";"))


def _mask_one_url(url: str) -> str:
    if "://" in url and "@" in url:
        url = _URL_PASSWORD.sub(r"\1**@", url, count=1)
    if "=" in url:
        url = _KEY_VALUE.sub(_secret_value, url)
    return url


def _secret_value(match: re.Match[str]) -> str:
    return f"{match.group(1)}**" if SECRET_KEY.search(match.group(2)) else match.group(0)


def mask_text(text: str) -> str:
    """Mask every URL and ``key=value`` secret in free text, such as an error message."""
    if "://" not in text and "=" not in text:
        return text
    return re.sub(r"\S+", lambda m: mask_url(m.group()), text)


def mask_lines(text: str) -> str:
    """:func:`mask_text` line by line, keeping the layout (indentation) of a traceback."""
    return "\n".join(
        line[: len(line) - len(line.lstrip())] + mask_text(line.lstrip()) if line.strip() else line
        for line in text.splitlines()
    )
