"""Create teams and projects, and add people to teams."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from models_app.management.cli import application_errors, team_by_id
from models_app.models import Membership
from models_app.services.accounts import membership_set, project_create, team_create


class Command(BaseCommand):
    help = "team create NAME | team project TEAM_ID NAME | team member TEAM_ID USERNAME [--role]"

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(dest="command", required=True)
        create = commands.add_parser("create", help="create a team")
        create.add_argument("name", help="the team's name (two teams may share one; their ids differ)")
        create.add_argument("--owner", help="username of its owner (an existing user)")
        create.add_argument(
            "--max-parallel-trainings",
            type=int,
            help="trainings the team may have queued or running at once (0 or more; default: the server's limit)",
        )
        project = commands.add_parser("project", help="create a project in a team")
        project.add_argument("team_id", help="the team (team_…)")
        project.add_argument("name", help="the project's name, unique in the team")
        member = commands.add_parser("member", help="add a user to a team (or change their role)")
        member.add_argument("team_id", help="the team (team_…)")
        member.add_argument("username", help="an existing user (create one with `user create`)")
        member.add_argument(
            "--role", choices=Membership.Role.values, default=Membership.Role.MEMBER, help="default: member"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        with application_errors():
            if options["command"] == "create":
                owner = self.user(options["owner"]) if options["owner"] else None
                team = team_create(
                    name=options["name"], owner=owner, max_parallel_trainings=options["max_parallel_trainings"]
                )
                self.stdout.write(f"{team.public_id}\t{team.name}")
            elif options["command"] == "project":
                project = project_create(team=team_by_id(options["team_id"]), name=options["name"])
                self.stdout.write(f"{project.public_id}\t{project.name}")
            else:
                membership = membership_set(
                    team=team_by_id(options["team_id"]), user=self.user(options["username"]), role=options["role"]
                )
                self.stdout.write(f"{membership.user} is {membership.role} of {membership.team.public_id}")

    def user(self, username: str) -> Any:
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"user {username!r} not found (create it with createsuperuser or the admin)")
        return user
