"""API tokens with roles, hashed at rest, and the audit log.

Tokens are 256-bit random strings, so a plain SHA-256 is a sufficient at-rest hash (no
password stretching needed); the plaintext is shown once when the token is made.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet_server.exceptions import InvalidRequestError
from fleet_server.tables import ApiToken, AuditRecord, utcnow

ROLES = ("viewer", "operator", "publisher", "admin")

# Which roles may do what. Reading is open to every role.
PERMISSIONS: dict[str, frozenset[str]] = {
    "read": frozenset(ROLES),
    "publish": frozenset({"publisher", "admin"}),
    "deploy": frozenset({"operator", "admin"}),
    "enroll": frozenset({"operator", "admin"}),
    "revoke": frozenset({"operator", "admin"}),
    "admin": frozenset({"admin"}),
}

TOKEN_PREFIX = "eft_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_secret(prefix: str = TOKEN_PREFIX) -> str:
    return prefix + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Actor:
    token_id: int
    name: str
    role: str

    def may(self, permission: str) -> bool:
        return self.role in PERMISSIONS[permission]


def create_token(
    session: Session, name: str, role: str, *, ttl: timedelta | None = None
) -> tuple[ApiToken, str]:
    if role not in ROLES:
        raise InvalidRequestError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    plaintext = new_secret()
    row = ApiToken(
        name=name,
        role=role,
        token_hash=hash_token(plaintext),
        expires_at=(utcnow() + ttl) if ttl else None,
    )
    session.add(row)
    session.flush()
    return row, plaintext


def authenticate(session: Session, token: str) -> Actor | None:
    """Return the actor for a presented token, or None if unknown, expired or revoked."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
    if row is None or row.revoked_at is not None:
        return None
    if row.expires_at is not None and _aware(row.expires_at) <= datetime.now(timezone.utc):
        return None
    return Actor(row.id, row.name, row.role)


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def audit(
    session: Session, actor: str, action: str, obj: str, remote: str = "", **detail: Any
) -> None:
    session.add(AuditRecord(actor=actor, action=action, target=obj, remote=remote, detail=detail))
