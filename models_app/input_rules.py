"""The rules every input meets, whatever door it came in by (REST, seed 003, the tool, MCP, admin, commands).

One home for each: what characters text may hold, how long each kind of string may be, how deep a
JSON document may nest, what an outbound URL may point at, and which server paths may be named.
The API's parsers and middleware, the MCP server and the services all call these functions; none
of them restates a rule.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import SplitResult, urlsplit

# Shared with the parameter table, which the engine reads too; re-exported for the domain's callers.
from contract.parameters import LIST_MAX as LIST_MAX
from contract.parameters import PATH_MAX as PATH_MAX
from contract.parameters import PROMPT_MAX as PROMPT_MAX
from contract.parameters import URL_MAX as URL_MAX
from models_app.errors import InvalidInput

# Longest accepted strings, by kind. Column lengths where a column bounds them; otherwise caps that
# no honest caller reaches (a caption is read as 77 to 512 tokens; a description is a paragraph).
ID_MAX = 100
NAME_MAX = 200
TRIGGER_WORD_MAX = 100
FILE_NAME_MAX = 255
ORIGIN_MAX = 100
DESCRIPTION_MAX = 5_000
CAPTION_MAX = 2_000
INSTRUCTION_MAX = 2_000
QUERY_VALUE_MAX = 2_000
JSON_MAX_DEPTH = 32

# C0 controls, DEL, and unpaired surrogates (which no database text column or JSON store accepts).
# Multi-line text keeps tab, line feed and carriage return; nothing else keeps any.
_CONTROL = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
_CONTROL_IN_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")

# Cloud metadata services answer on these names as well as on their link-local addresses.
METADATA_HOSTS = frozenset({"metadata", "metadata.google.internal", "metadata.goog", "instance-data"})


def control_character(value: str, *, multiline: bool = False) -> str | None:
    """The first forbidden character of `value`, named for a message ("a control character (U+0000)");
    None if there is none."""
    found = (_CONTROL_IN_TEXT if multiline else _CONTROL).search(value)
    if found is None:
        return None
    code = ord(found.group())
    return f"an unpaired surrogate (U+{code:04X})" if code >= 0xD800 else f"a control character (U+{code:04X})"


def text_check(
    value: Any,
    *,
    field: str,
    max_length: int,
    multiline: bool = False,
    allow_blank: bool = True,
    label: str = "",
) -> str:
    """A string with no control characters and at most `max_length` characters; InvalidInput otherwise.
    `label` names the value in the message when it differs from the field's path."""
    label = label or field
    if not isinstance(value, str):
        raise InvalidInput(f"{label} must be a string, not {json_type(value)}", field=field)
    bad = control_character(value, multiline=multiline)
    if bad:
        raise InvalidInput(f"{label} contains {bad}, which is not allowed", field=field)
    if len(value) > max_length:
        raise InvalidInput(f"{label} must be at most {max_length} characters long; got {len(value)}", field=field)
    if not allow_blank and not value.strip():
        raise InvalidInput(f"{label} cannot be empty", field=field)
    return value


def json_type(value: Any) -> str:
    """The JSON name of a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


@dataclass(frozen=True)
class StructureProblem:
    path: tuple[str | int, ...]
    message: str
    code: str

    @property
    def field(self) -> str:
        return field_name(self.path)


def field_name(path: Iterable[str | int]) -> str:
    """`("parameters", "sample_prompts", 0)` as `parameters.sample_prompts[0]`."""
    name = ""
    for part in path:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name


def structure_problem(data: Any, *, max_depth: int = JSON_MAX_DEPTH) -> StructureProblem | None:
    """The first thing wrong with a decoded document as a whole: nesting too deep, or a control character
    in a key or a string (tab and line breaks excepted in strings). Walks without recursion."""
    stack: list[tuple[Any, tuple[str | int, ...], int]] = [(data, (), 1)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, dict | list) and depth > max_depth:
            return StructureProblem(path, f"nested deeper than {max_depth} levels", "too_deep")
        if isinstance(value, dict):
            for key, item in value.items():
                key_text = str(key)
                bad = control_character(key_text)
                if bad:
                    shown = key_text.encode("unicode_escape").decode()
                    return StructureProblem(path, f"the key {shown!r} contains {bad}", "invalid_characters")
                stack.append((item, (*path, key_text), depth + 1))
        elif isinstance(value, list):
            stack.extend((item, (*path, index), depth + 1) for index, item in enumerate(value))
        elif isinstance(value, str):
            bad = control_character(value, multiline=True)
            if bad:
                return StructureProblem(path, f"contains {bad}, which is not allowed", "invalid_characters")
    return None


def structure_check(data: Any, *, field: str = "") -> None:
    """InvalidInput naming the place of the first structure problem of `data`, if it has one."""
    problem = structure_problem(data)
    if problem is not None:
        where = field_name([field, *problem.path] if field else problem.path)
        raise InvalidInput(f"{where}: {problem.message}" if where else problem.message, field=where or None)


# URLs


def _address_refused(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def _literal_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host names literally, including the legacy IPv4 spellings (`127.1`, `0x7f000001`)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def url_check(value: Any, *, field: str, allow_private: bool, must_resolve: bool) -> SplitResult:
    """An http(s) URL, parsed in full (scheme, host, port), whose host is not private, loopback,
    link-local or a metadata service unless `allow_private`.

    A host name is resolved and every address it resolves to is checked. `must_resolve=False` (a URL
    stored for later, such as a webhook) accepts a name that does not resolve now; whoever uses the
    URL checks it again.
    """
    url = text_check(value, field=field, max_length=URL_MAX, allow_blank=False)
    if any(char.isspace() for char in url):
        raise InvalidInput(f"{field} {url!r} contains white space", field=field)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(f"{field} {url!r} is not a valid URL ({exc})", field=field) from exc
    if parts.scheme not in ("http", "https"):
        raise InvalidInput(f"{field} {url!r}: only http and https URLs are accepted", field=field)
    host = parts.hostname
    if not host:
        raise InvalidInput(f"{field} {url!r} has no host", field=field)
    if port == 0:
        raise InvalidInput(f"{field} {url!r}: port 0 is not a valid port", field=field)
    try:
        host.encode("idna")
    except UnicodeError as exc:
        raise InvalidInput(f"{field} {url!r}: the host {host!r} is not a valid host name", field=field) from exc
    if allow_private:
        return parts
    refused = InvalidInput(
        f"{field} {url!r}: the host resolves to a private, loopback or link-local address (or a metadata service), which is not allowed",
        field=field,
    )
    name = host.rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost") or name in METADATA_HOSTS:
        raise refused
    literal = _literal_address(host)
    if literal is not None:
        if _address_refused(literal):
            raise refused
        return parts
    try:
        infos = socket.getaddrinfo(host, port or (443 if parts.scheme == "https" else 80))
    except (socket.gaierror, UnicodeError, OSError) as exc:
        if must_resolve:
            raise InvalidInput(f"{field} {url!r}: the host {host!r} cannot be resolved", field=field) from exc
        return parts
    for info in infos:
        if _address_refused(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])):
            raise refused
    return parts


# Server paths


def path_inside_roots(value: Any, *, field: str, roots: Iterable[Path], what: str) -> Path:
    """A server path confined to `roots`: no `~`, no `..`, no control characters; relative paths are
    taken from the first root. Returns it resolved (symbolic links followed). `what` names the roots
    in the message ("import folders")."""
    text = text_check(value, field=field, max_length=PATH_MAX, allow_blank=False).strip()
    roots = [Path(root).resolve() for root in roots]
    if text.startswith("~"):
        raise InvalidInput(f"{field} {text!r}: home-directory paths (~) are not accepted", field=field)
    if ".." in PurePosixPath(text).parts:
        raise InvalidInput(f"{field} {text!r}: '..' is not allowed in a path", field=field)
    candidate = Path(text)
    if not roots:
        raise InvalidInput(f"{field} {text!r}: this server reads no {what}", field=field)
    resolved = (candidate if candidate.is_absolute() else roots[0] / candidate).resolve()
    if not any(resolved == root or root in resolved.parents for root in roots):
        raise InvalidInput(
            f"{field} {text!r} is outside the {what} this server reads ({', '.join(map(str, roots))})", field=field
        )
    return resolved


def public_id_plausible(value: Any) -> bool:
    """Whether `value` could be an id at all: a short string with no control characters. Lookups of
    anything else answer "not found" without asking the database (which may refuse a NUL outright)."""
    return isinstance(value, str) and 0 < len(value) <= ID_MAX and control_character(value) is None


def arguments_check(arguments: Any, accepted: Iterable[str], *, what: str = "the tool") -> dict[str, Any]:
    """A tool call's arguments: an object with no argument the tool does not take (a misspelt `dryRun`
    must never be silently dropped), well-formed as a whole (`structure_check`)."""
    if not isinstance(arguments, dict):
        raise InvalidInput(f"{what}'s arguments must be an object", field="arguments")
    names = list(accepted)
    unknown = sorted(set(map(str, arguments)) - set(names))
    if unknown:
        raise InvalidInput(f"unknown argument {unknown[0]!r}; {what} takes: {', '.join(names)}", field=unknown[0])
    structure_check(arguments)
    return arguments


def json_document(text: str, *, field: str) -> Any:
    """A JSON text typed into a form or a command line, decoded and held to `structure_check`."""
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{field} is not valid JSON ({exc.msg} at character {exc.pos})", field=field) from exc
    except (RecursionError, ValueError) as exc:
        raise InvalidInput(f"{field} is not valid JSON ({exc})", field=field) from exc
    structure_check(value, field=field)
    return value


def shown_id(value: Any) -> str:
    """An id as a message shows it: as given, or escaped and cut short when it could not be an id."""
    return value if public_id_plausible(value) else repr(value)[:ID_MAX] + ("…" if len(repr(value)) > ID_MAX else "")
