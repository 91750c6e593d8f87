"""Embeddings at rest: sealed with AES-256-GCM under a library key that is not in the library.

Face templates are biometric data, so the SQLite file holds them only encrypted; a copied
library without its key can still be listed (captures, boxes, quality) but not searched.

Where the key comes from, first found wins:
    1. `gigaface --key-file PATH ...` (sets GIGAFACE_KEY_FILE for this process and its workers)
    2. GIGAFACE_KEY: the key itself, 32 bytes in URL-safe base64
    3. GIGAFACE_KEY_FILE: a file holding that text
    4. LIBRARY.key beside the library file: made (mode 0600) when a library is created
       without a key, so that encryption is the default, not an option
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import GigafaceError

ENV_KEY = "GIGAFACE_KEY"
ENV_KEY_FILE = "GIGAFACE_KEY_FILE"
NONCE = 12
# Binds a sealed value to what it is, so a consent template cannot be passed off as a face's.
PURPOSES = (b"face", b"consent")


def key_file_beside(db: str) -> str:
    return os.path.abspath(db) + ".key"


@dataclass(frozen=True)
class LibraryKey:
    secret: bytes
    origin: str      # where it was found, for error messages

    @property
    def check(self) -> str:
        """A value stored in the library that tells a wrong key from the right one without
        revealing the key."""
        return hmac.new(self.secret, b"gigaface library key check", hashlib.sha256).hexdigest()[:32]

    def seal(self, plain: bytes, purpose: bytes = b"face") -> bytes:
        nonce = secrets.token_bytes(NONCE)
        return nonce + AESGCM(self.secret).encrypt(nonce, plain, purpose)

    def unseal(self, sealed: bytes, purpose: bytes = b"face") -> bytes:
        try:
            return AESGCM(self.secret).decrypt(sealed[:NONCE], sealed[NONCE:], purpose)
        except InvalidTag:
            raise GigafaceError(f"an embedding does not open with the key from {self.origin}:"
                                " the library was altered or the key is wrong") from None


def parse_key(text: str, origin: str) -> LibraryKey:
    try:
        secret = base64.urlsafe_b64decode(text.strip().encode("ascii"))
    except (ValueError, binascii.Error, UnicodeEncodeError):
        secret = b""
    if len(secret) != 32:
        raise GigafaceError(f"{origin}: not a gigaface key (32 bytes in URL-safe base64)")
    return LibraryKey(secret, origin)


def read_key_file(path: str) -> LibraryKey:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read(1024)
    except OSError as exc:
        raise GigafaceError(f"{path}: cannot read the key file ({exc.strerror})") from None
    return parse_key(text, path)


def find_key(db: str) -> LibraryKey | None:
    """The key for the library at `db`, or None when none is given or beside it."""
    if os.environ.get(ENV_KEY):
        return parse_key(os.environ[ENV_KEY], f"${ENV_KEY}")
    if os.environ.get(ENV_KEY_FILE):
        return read_key_file(os.environ[ENV_KEY_FILE])
    beside = key_file_beside(db)
    return read_key_file(beside) if os.path.exists(beside) else None


def new_key_file(path: str) -> LibraryKey:
    """Write a fresh random key, readable by its owner only; never replaces a file."""
    text = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise GigafaceError(f"{path}: a key file is already there; not replacing it") from None
    except OSError as exc:
        raise GigafaceError(f"{path}: cannot write the key file ({exc.strerror})") from None
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())
    return LibraryKey(base64.urlsafe_b64decode(text), path)


def key_for_new_library(db: str) -> LibraryKey:
    """The key a library being created will use: the one given, or a new one beside it."""
    return find_key(db) or new_key_file(key_file_beside(db))
