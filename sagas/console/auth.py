"""Who may use the console: one shared token, or users with passwords from a file.

With a token (``sagas console --token``, or ``$SAGALOG_CONSOLE_TOKEN``, or one made up at start
and printed), anyone who has it logs in under the name they give; the name is what the
operator actions they take are journaled with (the ``by`` of an ``OperatorAction``).

With a users file (``--users FILE``), each line is ``name:hash``, the hash made by
``hash_password`` (``sagas console --add-user NAME --users FILE`` appends one): scrypt with a
salt of its own, so the file holds no password. Blank lines and ``#`` comments are skipped.

Pure: no web framework here; ``sagas.console.web`` keeps the logged-in name in a signed cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from pathlib import Path

#: scrypt's cost (n, r, p): about 50 ms and 16 MiB a check, as OWASP suggests for scrypt.
_N, _R, _P = 2**14, 8, 1
_SCHEME = "scrypt"


class AuthError(ValueError):
    """A users file that cannot be read, or a name that cannot be used."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 2**20)


def hash_password(password: str) -> str:
    """``scrypt$n$r$p$salt$hash`` (base64) of ``password``, with a new random salt."""
    salt = secrets.token_bytes(16)
    digest = _derive(password, salt, _N, _R, _P)
    return f"{_SCHEME}${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def password_matches(password: str, stored: str) -> bool:
    """Whether ``password`` is the one ``stored`` (from ``hash_password``) was made from."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != _SCHEME:
            return False
        found = _derive(password, base64.b64decode(salt), int(n), int(r), int(p))
        return hmac.compare_digest(found, base64.b64decode(digest))
    except ValueError:  # a malformed line never matches
        return False


def valid_name(name: str) -> str:
    """The name, stripped; raises ``AuthError`` when it is empty or holds a ``:``."""
    name = name.strip()
    if not name or ":" in name or "\n" in name:
        raise AuthError("a name is needed, without ':'")
    return name


def read_users(path: Path) -> dict[str, str]:
    """``name -> hash`` from a users file."""
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise AuthError(f"cannot read users file {path}: {error}") from None
    users: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, stored = line.partition(":")
        if not colon or not name.strip() or not stored.startswith(f"{_SCHEME}$"):
            raise AuthError(f"{path}:{number}: not name:{_SCHEME}$... (see --add-user)")
        users[name.strip()] = stored
    if not users:
        raise AuthError(f"{path} names no user (add one with --add-user)")
    return users


def user_line(name: str, password: str) -> str:
    """The users-file line of ``name`` with ``password``."""
    return f"{valid_name(name)}:{hash_password(password)}\n"


@dataclass(frozen=True)
class Gate:
    """Checks a login: ``token`` (anyone with it, under any name) or ``users`` (name and
    password); exactly one is set."""

    token: str | None = None
    users: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.token is None) == (not self.users):
            raise AuthError("a console needs either a token or a users file")

    @classmethod
    def from_options(cls, token: str | None, users_file: Path | None) -> Gate:
        if users_file is not None:
            if token is not None:
                raise AuthError("give a token or a users file, not both")
            return cls(users=read_users(users_file))
        return cls(token=token or secrets.token_urlsafe(18))

    def login(self, name: str, secret: str) -> str | None:
        """The name to record the user's actions under, or None when the login is refused."""
        try:
            name = valid_name(name)
        except AuthError:
            return None
        if self.token is not None:
            return name if hmac.compare_digest(secret.encode(), self.token.encode()) else None
        stored = self.users.get(name)
        return name if stored is not None and password_matches(secret, stored) else None
