"""Public identifiers: a type prefix and 22 random base62 characters (`asset_GTrL3mq4SXWyMxkOHRxlpw`)."""

from __future__ import annotations

import secrets
import string

ALPHABET = string.ascii_letters + string.digits
RANDOM_LENGTH = 22  # ~131 bits, as much as a UUID


def new_public_id(prefix: str) -> str:
    return f"{prefix}_{''.join(secrets.choice(ALPHABET) for _ in range(RANDOM_LENGTH))}"


# Named functions, not lambdas, so migrations can refer to them.
def new_team_id() -> str:
    return new_public_id("team")


def new_project_id() -> str:
    return new_public_id("proj")


def new_model_id() -> str:
    return new_public_id("model")


def new_asset_id() -> str:
    return new_public_id("asset")


def new_api_key_id() -> str:
    return new_public_id("key")


def new_job_id() -> str:
    return new_public_id("job")


def new_secret() -> str:
    return secrets.token_hex(32)
