"""URL helpers shared by every transport."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

__all__ = ["redact", "redact_text"]

_SECRET_QUERY_KEYS = ("password", "token", "nkeys_seed", "creds", "api_key", "secret")


def redact(url: str) -> str:
    """``url`` with its password (and secret-looking query values) replaced by ``***``: URLs are
    printed in errors, logs and ``Server.urls``, credentials never are."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        # a bare userinfo is a token for NATS (nats://TOKEN@host): hide it too
        netloc = f"{user}:***@{hosts}" if sep else f"***@{hosts}"
    query = parts.query
    if query:
        pieces = []
        for piece in query.split("&"):
            key, eq, _value = piece.partition("=")
            pieces.append(f"{key}=***" if eq and key.lower() in _SECRET_QUERY_KEYS else piece)
        query = "&".join(pieces)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<userinfo>[^@/\s]+)@", re.IGNORECASE)


def redact_text(text: str) -> str:
    """``text`` with the credentials of any URL in it hidden (for error messages from libraries)."""

    def hide(match: re.Match[str]) -> str:
        user, sep, _ = match.group("userinfo").partition(":")
        return f"{match.group('scheme')}{user}:***@" if sep else f"{match.group('scheme')}***@"

    return _URL_CREDENTIALS.sub(hide, text)
