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
# password holds "/", "?" or "#", and drops the query string.
_URL_PASSWORD = re.compile(r"([A-Za-z][\w+.-]*://[^:@/?#\s]*:)(.*)@", re.DOTALL)
# key=value secrets: URL query parameters (?password=...) and connection
# strings (Azure's AccountKey=...;).
_KEY_VALUE_SECRET = re.compile(
    rf"((?:^|[?&;\s])[^=&;?\s]*(?:{SECRET_KEY.pattern})[^=&;?\s]*=)[^&;\s]*", re.IGNORECASE
)


def mask_url(url: str) -> str:
    """``amqp://user:secret@host//`` -> ``amqp://user:**@host//``; several URLs
    separated by ``;`` (kombu's fail-over syntax) are each masked, and so are
    secrets written as ``key=value``, such as ``?password=`` or ``AccountKey=``."""
    return ";".join(_mask_one_url(part) for part in url.split(";"))


def _mask_one_url(url: str) -> str:
    return _KEY_VALUE_SECRET.sub(r"\1**", _URL_PASSWORD.sub(r"\1**@", url, count=1))


def mask_text(text: str) -> str:
    """Mask every URL and ``key=value`` secret in free text, such as an error message."""
    return re.sub(r"\S+", lambda m: mask_url(m.group()), text)
