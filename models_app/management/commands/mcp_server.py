"""Serve the `train` tool and its companions to MCP clients, over stdio or streamable HTTP."""

from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from models_app.mcp_server import api_key_team, build_server
from models_app.models import Team


class Command(BaseCommand):
    help = (
        "Run the MCP server. stdio: the API key comes from --api-key or MCP_API_KEY; http: each request's bearer key."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--transport", choices=("stdio", "http"), default="stdio")
        parser.add_argument("--api-key", default=os.environ.get("MCP_API_KEY", ""), help="key.secret (stdio)")
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8765)

    def handle(self, *args: Any, **options: Any) -> None:
        if options["transport"] == "stdio":
            team = api_key_team(options["api_key"]) if options["api_key"] else None
            if team is None:
                raise CommandError("a valid API key is needed: --api-key key_….secret or MCP_API_KEY")
            team_pk = team.pk
            # Nothing may be written to stdout but the protocol.
            build_server(lambda: Team.objects.get(pk=team_pk)).run("stdio")
            return
        from mcp.server.auth.middleware.auth_context import get_access_token

        def current_team() -> Team:
            token = get_access_token()
            if token is None:
                raise CommandError("unauthenticated request")
            return Team.objects.get(public_id=token.client_id)

        base_url = f"http://{options['host']}:{options['port']}"
        self.stderr.write(f"MCP server on {base_url}/mcp (streamable HTTP); authenticate with Bearer key.secret")
        build_server(current_team, http=True, base_url=base_url).run(
            "streamable-http", host=options["host"], port=options["port"]
        )
