"""Report, then remove, what killed processes left behind: stored files without a row, temporary uploads,
abandoned work folders (models_app.services.sweeper)."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from models_app.errors import ApplicationError
from models_app.services.sweeper import Orphan, SweepReport, orphan_grace_seconds, orphans_sweep

KIND_LABELS = {
    "stored_file": "stored files without a row",
    "temporary_upload": "temporary upload files",
    "work_folder": "abandoned work folders",
    "compile_cache": "unused compile cache files",
}


def readable_size(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    value = size / 1024
    for unit in ("KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            break
        value /= 1024
    return f"{value:.1f} {unit}"


def readable_duration(seconds: int) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.3g} h"
    return f"{seconds / 60:.3g} min" if seconds >= 60 else f"{seconds} s"


class Command(BaseCommand):
    help = (
        "Find files and folders left by killed processes and older than the grace period: stored files (local "
        "disk or S3) that no row names, Django's temporary upload files, and training work folders whose task "
        "is finished or gone (never a running task's). Lists them, then removes them (unless --dry-run)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="List the orphans and their sizes, and remove nothing.",
        )
        parser.add_argument(
            "--grace",
            type=int,
            metavar="SECONDS",
            default=None,
            help=(
                "Only orphans not modified for this many seconds (default: the ORPHAN_GRACE_SECONDS setting, "
                f"now {orphan_grace_seconds()}). Keep it longer than any upload or save takes: a younger "
                "file may belong to a row that is about to be committed."
            ),
        )

    def handle(self, *args: Any, **options: Any) -> None:
        dry_run: bool = options["dry_run"]
        try:
            report = orphans_sweep(remove=not dry_run, grace_seconds=options["grace"])
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.write_report(report, listed=options["verbosity"] >= 1)

    def write_report(self, report: SweepReport, *, listed: bool) -> None:
        self.stdout.write(
            f"Orphans not modified for {report.grace_seconds} s ({readable_duration(report.grace_seconds)})"
            + (" - dry run, nothing removed:" if not report.remove else ":")
        )
        removed = {id(orphan) for orphan in report.removed}
        if listed:  # -v 0: the totals only
            for orphan in report.found:
                self.stdout.write("  " + self.line(orphan, removed=id(orphan) in removed, dry_run=not report.remove))
        for kind, total in report.totals(report.found).items():
            self.stdout.write(f"{KIND_LABELS[kind]}: {total['count']} ({readable_size(total['bytes'])})")
        if not report.remove:
            self.stdout.write(f"{len(report.found)} found; run without --dry-run to remove them.")
            return
        freed = sum(orphan.size_bytes for orphan in report.removed)
        self.stdout.write(f"removed {len(report.removed)} of {len(report.found)} ({readable_size(freed)} freed)")
        for error in report.errors:
            self.stderr.write(f"could not remove {error}")

    @staticmethod
    def line(orphan: Orphan, *, removed: bool, dry_run: bool) -> str:
        outcome = "found" if dry_run else ("removed" if removed else "not removed")
        modified = orphan.modified_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
        size = readable_size(orphan.size_bytes)
        return f"{outcome:<12}{orphan.kind.value:<18}{orphan.location}  ({size}, modified {modified})"
