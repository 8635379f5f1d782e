"""Staff accounts for the admin: create one with a password in a team, or set a user's password."""

from __future__ import annotations

import getpass
import sys
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from models_app.management.cli import application_errors, team_by_id
from models_app.models import Membership
from models_app.services.accounts import staff_user_create, user_set_password


class Command(BaseCommand):
    help = (
        "user create USERNAME --team-id T [--role R] [--password-stdin] | user password USERNAME [--password-stdin]. "
        "The password is asked twice on a terminal, or read from the first line of stdin with --password-stdin; "
        "it is never an argument (arguments show in the process list and shell history)."
    )

    stealth_options = ("stdin",)  # call_command(..., stdin=...) in tests and scripts

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(dest="command", required=True)
        create = commands.add_parser("create", help="create a staff user (admin sign-in) who is a member of a team")
        create.add_argument("username", help="the new user's sign-in name")
        create.add_argument("--team-id", required=True, help="the team they work in (team_…)")
        create.add_argument(
            "--role",
            choices=Membership.Role.values,
            default=Membership.Role.MEMBER,
            help="their role in the team (default: member)",
        )
        create.add_argument("--password-stdin", action="store_true", help="read the password from stdin's first line")
        password = commands.add_parser("password", help="set an existing user's password")
        password.add_argument("username", help="the user's sign-in name")
        password.add_argument("--password-stdin", action="store_true", help="read the password from stdin's first line")

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdin = options.get("stdin") or sys.stdin
        if options["command"] == "create":
            team = team_by_id(options["team_id"])
            secret = self.password(options["password_stdin"])
            with application_errors():
                user = staff_user_create(username=options["username"], password=secret, team=team, role=options["role"])
            self.stdout.write(f"{user.get_username()} created: staff, {options['role']} of {team.public_id}")
            return
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"user {options['username']!r} not found")
        secret = self.password(options["password_stdin"])
        with application_errors():
            user_set_password(user=user, password=secret)
        self.stdout.write(f"password of {user.get_username()} changed")

    def password(self, from_stdin: bool) -> str:
        stdin = self.stdin
        if from_stdin:
            secret = stdin.readline().rstrip("\r\n")
        elif stdin.isatty():
            secret = getpass.getpass("Password: ")
            if getpass.getpass("Password (again): ") != secret:
                raise CommandError("the two passwords differ")
        else:
            raise CommandError("no terminal to ask the password on: pass --password-stdin and send it on stdin")
        if not secret:
            raise CommandError("the password is empty")
        return secret
