"""Shared fixtures: real services, real *.dist-info folders, real worker processes.

Services: a test marked ``rabbitmq`` or ``redis`` uses the real server on
127.0.0.1. Without ``CI=true`` it is skipped, with the reason, when the server
does not answer; with ``CI=true`` it fails instead, so CI never passes by
skipping.
"""

from __future__ import annotations

import os
import socket
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from core.testing.sites import Site, install_site

__all__ = ["Site", "install_site"]

if TYPE_CHECKING:
    from core.celery_app import HostCelery

ROOT = Path(__file__).resolve().parent.parent
RABBITMQ_URL = os.environ.get("HOST_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
REDIS_URL = os.environ.get("HOST_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() == "true"


def answers(port: int) -> bool:
    """Something listens on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _require(service: str, port: int) -> None:
    if answers(port):
        return
    message = f"{service} does not answer on 127.0.0.1:{port}"
    if IN_CI:
        pytest.fail(f"{message}; with CI=true this test must run (.ci/run starts it)")
    pytest.skip(f"{message} (start it, or run with CI=true to make this a failure)")


@pytest.fixture(autouse=True)
def _services(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("rabbitmq"):
        _require("RabbitMQ", 5672)
    if request.node.get_closest_marker("redis"):
        _require("Redis", 6379)


# -- real distributions: the test kit's (core/testing/sites.py) ----------------------------


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    """A fresh site folder on ``sys.path``; the modules it provided are forgotten afterwards.

    The kit's ``installed_extension`` fixture is the same for one distribution at a time.
    """
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    site = Site(path)
    yield site
    site.forget_modules()


def write_ini(path: Path, body: str) -> Path:
    """Write an ini file; ``body`` is dedented."""
    path.write_text(textwrap.dedent(body).lstrip(), encoding="utf-8")
    return path


# -- a fresh app --------------------------------------------------------------


@pytest.fixture
def fresh_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[HostCelery]:
    """A fresh HostCelery that ``from core.celery_app import celery`` returns during the test.

    Task modules bind ``celery`` when they are imported, so pointing the module
    attribute at a fresh app makes every registration land there; the shared
    app is never touched. ``@celery.task`` also adds a process-wide callback
    that registers the task on every app finalized later
    (``celery._state._on_app_finalizers``, "shared" tasks); without cleaning
    that set, tasks of earlier tests -- and of example_ext, if anything in this
    process imported it -- would land on this app and collide by name. Only
    Celery's built-in tasks are kept during the test, and the set is restored
    afterwards.
    """
    from celery import _state as celery_state

    import core.celery_app

    fresh = core.celery_app.HostCelery("host", set_as_current=False)
    monkeypatch.setattr(core.celery_app, "celery", fresh)
    finalizers = celery_state._on_app_finalizers
    saved = set(finalizers)
    finalizers.clear()
    finalizers.update(cb for cb in saved if cb.__module__ == "celery.app.builtins")
    try:
        yield fresh
    finally:
        finalizers.clear()
        finalizers.update(saved)
