"""Webhook secrets at rest: AES-256-GCM, with a key from the configuration or next to the SQLite file.

A subscription's secret signs every delivery (HMAC), so it must be recoverable, not hashed: it is sealed with
a 32-byte key before it is written and opened only by the delivery worker, just before it signs a body.

Where the key comes from (:func:`resolve_box`), first match wins:

1. the key given by the caller (``alerting.secret_key`` of the configuration);
2. the environment variable ``SENTINEL_ALERTING__SECRET_KEY`` (the same key, set the usual way);
3. SQLite file database (the embedded default): the file ``<database>.key`` beside it, created with mode 0600
   on first use. The key then lives where the data lives, so whoever can read the database can read the key:
   this protects against the database file alone leaking (a copy, a backup, a support bundle);
4. in-memory SQLite: a random key for the life of the engine (the data lives no longer);
5. PostgreSQL without a key: none. Storing a secret then fails with :class:`SecretKeyError` naming the
   setting; a production database is not silently given a key that only one replica's disk knows.

A key is base64 of 32 random bytes, e.g. ``head -c 32 /dev/urandom | base64``.

Sealed form: ``aesgcm1:<key id>:<urlsafe base64 of nonce | ciphertext | tag>``. The key id (8 hex digits of a
hash of the key) lets a wrong key be reported as such instead of as a corrupt value.

>>> box = SecretBox(bytes(32))
>>> token = box.seal("s3cret")
>>> token.startswith("aesgcm1:") and "s3cret" not in token
True
>>> box.open(token)
's3cret'
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import secrets
import weakref
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Engine

__all__ = [
    "KEY_FILE_SUFFIX",
    "SEALED_PREFIX",
    "SECRET_KEY_ENV",
    "SECRET_KEY_SETTING",
    "SecretBox",
    "SecretKeyError",
    "generate_key",
    "key_file_for",
    "parse_key",
    "resolve_box",
]

SECRET_KEY_SETTING = "alerting.secret_key"
SECRET_KEY_ENV = "SENTINEL_ALERTING__SECRET_KEY"
KEY_FILE_SUFFIX = ".key"
SEALED_PREFIX = "aesgcm1:"
KEY_BYTES = 32
_NONCE_BYTES = 12
# Binds a sealed value to its use: a ciphertext made for something else with the same key does not open here.
_ASSOCIATED_DATA = b"sentinel/webhook-subscription-secret/v1"

# In-memory SQLite: one key per engine, shared by every store on it, gone with it.
_EPHEMERAL: weakref.WeakKeyDictionary[Engine, bytes] = weakref.WeakKeyDictionary()


class SecretKeyError(ValueError):
    """The key for webhook secrets is missing or malformed, or is not the key a secret was sealed with."""


def generate_key() -> str:
    """A new key as base64 text (what ``alerting.secret_key`` takes)."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def parse_key(text: str | bytes, source: str = SECRET_KEY_SETTING) -> bytes:
    """The 32 key bytes from base64 text (standard or URL-safe alphabet); ``source`` names it in errors."""
    raw = text.decode() if isinstance(text, bytes) else text
    cleaned = raw.strip()
    try:
        key = base64.b64decode(cleaned.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise SecretKeyError(
            f"{source} must be base64 of {KEY_BYTES} random bytes (head -c 32 /dev/urandom | base64)"
        ) from None
    if len(key) != KEY_BYTES:
        raise SecretKeyError(f"{source} must be base64 of {KEY_BYTES} random bytes, got {len(key)} bytes")
    return key


class SecretBox:
    """Seals and opens short secrets with AES-256-GCM and a random 96-bit nonce per value.

    Parameters
    ----------
    key
        The 32 key bytes.
    source
        Where the key came from, for error messages (never the key itself).
    """

    def __init__(self, key: bytes, source: str = SECRET_KEY_SETTING) -> None:
        if len(key) != KEY_BYTES:
            raise SecretKeyError(f"{source} must be {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self.key_id = hashlib.sha256(b"sentinel-key-id\x00" + key).hexdigest()[:8]
        self.source = source

    def __repr__(self) -> str:
        return f"SecretBox(key_id={self.key_id!r}, source={self.source!r})"

    @staticmethod
    def is_sealed(value: str) -> bool:
        """Whether ``value`` is in the sealed form (as opposed to a plain-text secret of an old schema)."""
        return value.startswith(SEALED_PREFIX)

    def seal(self, plaintext: str) -> str:
        """The sealed form of ``plaintext``; a new nonce each time, so equal secrets seal differently."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode("utf-8"), _ASSOCIATED_DATA)
        payload = base64.urlsafe_b64encode(nonce + sealed).decode()
        return f"{SEALED_PREFIX}{self.key_id}:{payload}"

    def open(self, token: str) -> str:
        """The plain text of a sealed value; :class:`SecretKeyError` if it was sealed with another key or
        was altered."""
        if not self.is_sealed(token):
            raise SecretKeyError("the stored secret is not sealed (run `sentinel migrate` to encrypt it)")
        key_id, _, payload = token[len(SEALED_PREFIX) :].partition(":")
        if key_id != self.key_id:
            raise SecretKeyError(
                f"the secret was sealed with key {key_id}, but the key in use ({self.source}) is "
                f"{self.key_id}: set {SECRET_KEY_SETTING} ({SECRET_KEY_ENV}) to the key they were stored with"
            )
        try:
            blob = base64.urlsafe_b64decode(payload.encode())
            plain = self._aead.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], _ASSOCIATED_DATA)
        except (binascii.Error, ValueError, InvalidTag):
            raise SecretKeyError(
                f"the stored secret does not open with key {self.key_id} ({self.source}): it was altered"
            ) from None
        return plain.decode("utf-8")

    def matches(self, token: str | None, plaintext: str | None) -> bool:
        """Whether the sealed ``token`` holds ``plaintext`` (None matches None). A token that does not open
        with this key does not match."""
        if token is None or plaintext is None:
            return token is None and plaintext is None
        try:
            return secrets.compare_digest(self.open(token).encode(), plaintext.encode())
        except SecretKeyError:
            return False


def key_file_for(engine: Engine) -> Path | None:
    """Where the key of a SQLite file database lives (``<database>.key``); None for other databases."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(f"{url.database}{KEY_FILE_SUFFIX}")


def resolve_box(
    engine: Engine, configured: str | bytes | None = None, *, environ: Mapping[str, str] | None = None
) -> SecretBox | None:
    """The :class:`SecretBox` for ``engine``'s database (see the module docstring for the order), or None
    when there is no key (PostgreSQL without ``alerting.secret_key``)."""
    if configured:
        return SecretBox(parse_key(configured, SECRET_KEY_SETTING), SECRET_KEY_SETTING)
    env = (os.environ if environ is None else environ).get(SECRET_KEY_ENV, "").strip()
    if env:
        return SecretBox(parse_key(env, SECRET_KEY_ENV), SECRET_KEY_ENV)
    if engine.url.get_backend_name() != "sqlite":
        return None
    path = key_file_for(engine)
    if path is None:
        key = _EPHEMERAL.setdefault(engine, secrets.token_bytes(KEY_BYTES))
        return SecretBox(key, "in-memory key of this SQLite engine")
    return SecretBox(_load_or_create_key_file(path), f"key file {path}")


def _load_or_create_key_file(path: Path) -> bytes:
    """Read the key file, or create it (0600) if absent. Two processes starting together end up with the one
    that was linked into place first: the file appears with its content complete or not at all."""
    try:
        return parse_key(path.read_text(encoding="ascii"), f"key file {path}")
    except FileNotFoundError:
        pass
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(generate_key() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        # If another process won the race, its key is the one: ours is dropped.
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return parse_key(path.read_text(encoding="ascii"), f"key file {path}")
