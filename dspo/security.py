"""Password hashing (argon2) and API tokens (random, stored as sha256: they have full entropy)."""

import hashlib
import secrets
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


@cache
def _decoy_hash() -> str:
    return _hasher.hash(secrets.token_urlsafe(16))


def verify_password_or_decoy(password_hash: str | None, password: str) -> bool:
    """Like verify_password, but a missing user (None) costs the same argon2 work and fails, so that
    the time of an answer does not tell whether a user name exists."""
    matches = verify_password(password_hash or _decoy_hash(), password)
    return matches and password_hash is not None


def new_token() -> tuple[str, str]:
    """Return (token for the client, hash to store)."""
    token = secrets.token_urlsafe(32)
    return token, hash_token(token)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
