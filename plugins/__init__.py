"""What extension authors import. The pluggy hook layer arrives with the plugin issue;
for now this re-exports the shared app so task modules have one stable import."""

from __future__ import annotations

__all__ = ["celery"]


def __getattr__(name: str) -> object:
    # Lazy, so that importing ``plugins`` does not import Celery.
    if name == "celery":
        from core.celery_app import celery

        return celery
    raise AttributeError(f"module 'plugins' has no attribute {name!r}")
