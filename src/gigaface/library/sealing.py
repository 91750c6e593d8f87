"""Biometric data at rest: sealed with AES-256-GCM under a library key that is not in the library.

Face templates and face crops are biometric data (a crop re-embeds into a working
template), so the SQLite file holds both only encrypted; a copied library without its key
can still be listed (captures, boxes, quality) but not searched, and shows no face. The
key also keys the audit log's chain (library/audit_chain.py), so its rows cannot be rewritten unseen.

Where the key comes from, first found wins:
    1. `gigaface --key-file PATH ...` (sets GIGAFACE_KEY_FILE for this process and its workers)
    2. GIGAFACE_KEY: the key itself, 32 bytes in URL-safe base64
    3. GIGAFACE_KEY_FILE: a file holding that text
    4. LIBRARY.key beside the library file: made (mode 0600) when a library is created
       without a key, so that encryption is the default, not an option

A key file readable by others is used, with a warning.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import stat
import warnings
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gigaface.errors import GigafaceError
from gigaface.paths import folder_of, link_new_file, os_reason, require_regular_file

ENV_KEY = "GIGAFACE_KEY"
ENV_KEY_FILE = "GIGAFACE_KEY_FILE"
NONCE = 12
# Binds a sealed value to what it is, so a consent template cannot be passed off as a face's.
PURPOSES = (b"face", b"consent", b"crop")


class KeyFileWarning(UserWarning):
    """A key file that other users of the computer can read."""


_warned: set[str] = set()  # key files already warned about: once per process is enough


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

    @property
    def audit_key(self) -> bytes:
        """The HMAC key of the audit log's chain: derived, so the sealing key itself is used
        for one thing only."""
        return hmac.new(self.secret, b"gigaface audit chain", hashlib.sha256).digest()

    def seal(self, plain: bytes, purpose: bytes = b"face") -> bytes:
        nonce = secrets.token_bytes(NONCE)
        return nonce + AESGCM(self.secret).encrypt(nonce, plain, purpose)

    def unseal(self, sealed: bytes, purpose: bytes = b"face") -> bytes:
        try:
            return AESGCM(self.secret).decrypt(sealed[:NONCE], sealed[NONCE:], purpose)
        except InvalidTag:
            what = {b"crop": "a face crop", b"consent": "a consent's embedding"}.get(purpose, "an embedding")
            raise GigafaceError(f"{what} does not open with the key from {self.origin}:"
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
    st = require_regular_file(path, "key file")  # a FIFO would block the open forever
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read(1024)
    except OSError as exc:
        raise GigafaceError(f"{path}: cannot read the key file ({exc.strerror})") from None
    key = parse_key(text, path)
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO) and os.path.realpath(path) not in _warned:
        _warned.add(os.path.realpath(path))
        warnings.warn(f"{path}: the key file can be read by other users; make it private: chmod 600 {path}",
                      KeyFileWarning, stacklevel=2)
    return key


def find_key(db: str) -> LibraryKey | None:
    """The key for the library at `db`, or None when none is given or beside it."""
    if os.environ.get(ENV_KEY):
        return parse_key(os.environ[ENV_KEY], f"${ENV_KEY}")
    if os.environ.get(ENV_KEY_FILE):
        return read_key_file(os.environ[ENV_KEY_FILE])
    beside = key_file_beside(db)
    return read_key_file(beside) if os.path.exists(beside) else None


def new_key_file(path: str) -> tuple[LibraryKey, bool]:
    """A fresh random key at `path`, readable by its owner only, and whether this call made
    it. The key is written aside and linked into place, so a reader never sees half a key
    file, and a link never replaces a file: when another process made one first (two scans
    creating one library), its key is the one returned."""
    text = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii")

    def write(aside: str) -> None:
        with open(aside, "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())

    try:
        made = link_new_file(path, write)
    except OSError as exc:
        raise GigafaceError(f"{path}: cannot write the key file: {os_reason(exc, folder_of(path))}") from None
    if not made:
        return read_key_file(path), False
    return LibraryKey(base64.urlsafe_b64decode(text), path), True


def key_for_new_library(db: str) -> tuple[LibraryKey, bool]:
    """The key a library being created will use: the one given, or the one beside it (made
    now when missing); and whether this call made a key file."""
    found = find_key(db)
    return (found, False) if found is not None else new_key_file(key_file_beside(db))
