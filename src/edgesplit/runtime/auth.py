"""Bearer tokens: where the server and the client read them, and how a request's header is checked.

A token file is refused when other users may read it (group or world permissions), as ssh refuses a private key:
the token is the server's only secret. The scheme in ``Authorization: Bearer <token>`` is case-insensitive
(RFC 7235); the token itself is compared in constant time.
"""

from __future__ import annotations

import hmac
import os
import stat
from pathlib import Path

from edgesplit.errors import EdgesplitError

__all__ = ["TOKEN_ENV", "TokenError", "bearer_matches", "checked_token", "read_token_file", "token_from"]

TOKEN_ENV = "EDGESPLIT_TOKEN"


class TokenError(EdgesplitError):
    """A token that cannot be used: unreadable or unprotected file, empty, too short."""


def read_token_file(path: Path) -> str:
    """The first line of ``path``, stripped; refused when the file is readable by group or others."""
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as error:
        raise TokenError(f"cannot read the token file {path} ({error.strerror}); check the path") from error
    except UnicodeDecodeError as error:
        raise TokenError(f"the token file {path} is not text; put the token on its first line") from error
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TokenError(f"the token file {path} is accessible by other users (mode {stat.S_IMODE(mode):04o}); "
                         f"run `chmod 600 {path}` — a token others can read is no secret")
    lines = text.strip().splitlines()
    if not lines or not lines[0].strip():
        raise TokenError(f"the token file {path} is empty; put the token on its first line")
    return lines[0].strip()


def checked_token(token: str, what: str) -> str:
    """``token`` if a server may use it: at least 16 printable ASCII characters without spaces."""
    if len(token) < 16 or not token.isascii() or not token.isprintable() or " " in token:
        raise TokenError(f"{what} is {len(token)} characters; use at least 16 random printable ASCII characters "
                         "without spaces (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))' > token "
                         "&& chmod 600 token`)")
    return token


def token_from(token_file: Path | None) -> tuple[str | None, str]:
    """The token from ``token_file``, else $EDGESPLIT_TOKEN, else none; and where it came from.

    The one way a token is read: `edgesplit serve` and `edgesplit infer` (``infer.read_token``) both come here, so
    a token one end accepts the other does too. Either source is checked (``checked_token``); a file also must not
    be readable by others (``read_token_file``).
    """
    if token_file is not None:
        return checked_token(read_token_file(Path(token_file)), f"the token in {token_file}"), str(token_file)
    if os.environ.get(TOKEN_ENV, "").strip():
        return checked_token(os.environ[TOKEN_ENV].strip(), f"${TOKEN_ENV}"), f"${TOKEN_ENV}"
    return None, "none"


def bearer_matches(authorization: str, token: str) -> bool:
    """Whether an Authorization header carries ``token`` (scheme ``Bearer`` in any case; constant-time compare)."""
    scheme, _, credentials = authorization.strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), token.encode())
