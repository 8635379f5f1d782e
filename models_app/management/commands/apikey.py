"""Team API keys: create (the secret is shown once), list, revoke."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from models_app.management.cli import application_errors, team_by_id
from models_app.models import ApiKey
from models_app.services.accounts import api_key_create, api_key_revoke, api_key_token


class Command(BaseCommand):
    help = "apikey create --team-id T [--name N] | apikey list [--team-id T] | apikey revoke KEY"

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(dest="command", required=True)
        create = commands.add_parser("create", help="create a key; its secret is printed this once")
        create.add_argument("--team-id", help="the team the key acts for (team_…); optional when there is one team")
        create.add_argument("--name", default="", help="a label to tell keys apart (e.g. 'ci')")
        listing = commands.add_parser("list", help="list keys: id, team, name, state, last use (never the secret)")
        listing.add_argument("--team-id", help="only this team's keys")
        revoke = commands.add_parser("revoke", help="revoke a key at once (its requests get 401 from then on)")
        revoke.add_argument("key", help="the key id (key_…) or the whole token")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["command"] == "create":
            api_key, secret = api_key_create(team=team_by_id(options["team_id"]), name=options["name"])
            self.stdout.write(api_key_token(api_key, secret))
            self.stderr.write("Keep it now: the secret is not stored and cannot be shown again.")
        elif options["command"] == "list":
            keys = ApiKey.objects.select_related("team").order_by("created_at")
            if options["team_id"]:
                keys = keys.filter(team=team_by_id(options["team_id"]))
            for key in keys:
                state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
                used = f"{key.last_used_at:%Y-%m-%d %H:%M}" if key.last_used_at else "never used"
                self.stdout.write(f"{key.key}\t{key.team.public_id}\t{key.name or '-'}\t{state}\t{used}")
        else:
            found = ApiKey.objects.filter(key=options["key"].split(".", 1)[0]).first()
            if found is None:
                raise CommandError(f"API key {options['key']} not found")
            with application_errors():
                api_key_revoke(api_key=found)
            self.stdout.write(f"{found.key} revoked")
