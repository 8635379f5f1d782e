"""django-q2 entry points of the housekeeping schedule. Like training.tasks, they only call a service."""

from __future__ import annotations


def sweep_orphans() -> dict[str, object]:
    """Remove the orphans older than ORPHAN_GRACE_SECONDS; the result (totals and paths) is kept by django-q2."""
    from models_app.services.sweeper import orphans_sweep

    return orphans_sweep(remove=True).as_dict()
