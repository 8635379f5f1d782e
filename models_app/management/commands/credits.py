"""A team's credits: grant some, or show the balance and the newest ledger entries."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from models_app import selectors
from models_app.management.cli import application_errors, team_by_id
from models_app.services.credits import credits_grant


class Command(BaseCommand):
    help = "credits grant TEAM_ID AMOUNT [--note TEXT] | credits show TEAM_ID [--limit N]"

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(dest="command", required=True)
        grant = commands.add_parser("grant", help="add credits to a team's balance (recorded in its ledger)")
        grant.add_argument("team_id", help="the team (team_…)")
        grant.add_argument("amount", help="credits to add, a positive number with at most 2 decimals (e.g. 50 or 12.5)")
        grant.add_argument("--note", default="", help="why, kept in the ledger entry (e.g. an invoice number)")
        show = commands.add_parser("show", help="the team's balance and its newest ledger entries")
        show.add_argument("team_id", help="the team (team_…)")
        show.add_argument("--limit", type=int, default=20, help="how many ledger entries to list (default 20)")

    def handle(self, *args: Any, **options: Any) -> None:
        team = team_by_id(options["team_id"])
        if options["command"] == "grant":
            amount = self.amount(options["amount"])
            with application_errors():
                team = credits_grant(team=team, amount=amount, note=options["note"])
            team.refresh_from_db(fields=["credit_balance"])
            self.stdout.write(f"granted {amount} credits to {team.public_id}; balance {team.credit_balance}")
            return
        if options["limit"] < 1:
            raise CommandError(f"--limit must be 1 or more; got {options['limit']}")
        balance = "unlimited (no balance set)" if team.credit_balance is None else str(team.credit_balance)
        self.stdout.write(f"{team.public_id}\t{team.name}\tbalance {balance}")
        for entry in selectors.credit_entries_recent(team=team, limit=options["limit"]):
            task = f"task {entry.task_id}" if entry.task_id else "-"
            self.stdout.write(
                f"  {entry.created_at:%Y-%m-%d %H:%M}\t{entry.kind}\t{entry.amount:+}\t"
                f"balance {entry.balance_after}\t{task}\t{entry.note or '-'}"
            )

    @staticmethod
    def amount(text: str) -> Decimal:
        try:
            amount = Decimal(text)
        except InvalidOperation:
            raise CommandError(f"AMOUNT must be a number of credits, like 50 or 12.5; got {text!r}") from None
        if not amount.is_finite() or amount <= 0 or amount != amount.quantize(Decimal("0.01")):
            raise CommandError(f"AMOUNT must be positive with at most 2 decimals; got {text!r}")
        return amount
