"""A gigaface library: one SQLite file holding captures, their scan progress and their
faces, and what governs them (consents, the audit log, jobs, tokens).

`Library` opens (or creates, or migrates) the file and holds its connection and key; each
concern is a store of its own, reached as an attribute: `library.captures`, `library.faces`,
`library.consents`, `library.audit`, `library.jobs`, `library.tokens`.
"""
from __future__ import annotations

import hmac
import os
import sqlite3

from gigaface.errors import GigafaceError
from gigaface.library import schema
from gigaface.library.audit import AuditStore
from gigaface.library.captures import CaptureStore
from gigaface.library.consents import ConsentStore
from gigaface.library.faces import EMBEDDING_DIM, FaceStore
from gigaface.library.jobs import JobStore
from gigaface.library.records import AuditEntry, AuditLog, CaptureRecord, Consent, Face, Job, Token
from gigaface.engine.frames import Frame
from gigaface.library.schema import APPLICATION, SCHEMA_VERSION
from gigaface.library.sealing import ENV_KEY_FILE, LibraryKey, find_key, key_file_beside, key_for_new_library
from gigaface.library.tokens import TokenStore
from gigaface.paths import folder_of, link_new_file, os_reason, sqlite_write_problem

# The records were defined here before library/records.py; callers may still name them here.
__all__ = ["Library", "AuditEntry", "AuditLog", "CaptureRecord", "Consent", "Face", "Frame", "Job", "Token",
           "EMBEDDING_DIM", "SCHEMA_VERSION"]


class Library:
    """A gigaface library file. Each capture is scanned by one process at a time (locks.py)."""

    def __init__(self, path: str, create: bool = False):
        self.path = path
        self._key: LibraryKey | None = None
        self.made: list[str] = []  # the files this object created (the library, its key file)
        self.captures = CaptureStore(self)
        self.faces = FaceStore(self)
        self.consents = ConsentStore(self)
        self.audit = AuditStore(self)
        self.jobs = JobStore(self)
        self.tokens = TokenStore(self)
        if not os.path.exists(path) and not create:
            raise GigafaceError(f"{path}: no such library (scan an image into it first)")
        if os.path.isdir(path):
            raise GigafaceError(f"{path}: is a directory, not a library file")
        if os.path.exists(path) and not os.path.isfile(path):  # a FIFO would block SQLite's open
            raise GigafaceError(f"{path}: not a regular file (a pipe or a device), not a library file")
        if not os.path.exists(path):
            self.made = _create_file(path)
        try:
            self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
            self.db.execute("PRAGMA foreign_keys = ON")
            tables = self._tables()
        except sqlite3.DatabaseError as exc:
            if sqlite_write_problem(exc):
                raise _cannot_open(path, exc) from None
            raise GigafaceError(f"{path}: not a gigaface library ({exc})") from None
        if not tables:
            if not create:
                raise GigafaceError(f"{path}: empty file, not a gigaface library")
            self._create_in_place()
        elif "meta" not in tables or self.meta("application") != APPLICATION:
            raise GigafaceError(f"{path}: an SQLite file of another program, not a gigaface library")
        elif not str(self.meta("schema") or 0).isdecimal():
            raise GigafaceError(f"{path}: a damaged gigaface library (schema {self.meta('schema')!r})")
        elif int(self.meta("schema") or 0) > SCHEMA_VERSION:
            raise GigafaceError(f"{path}: made by a newer gigaface (schema {self.meta('schema')})")
        elif not {"captures", "faces"} <= tables:
            raise GigafaceError(f"{path}: a damaged gigaface library (no captures or faces table)")
        try:
            # A new library is made in WAL mode already: switching needs an exclusive lock that,
            # when many processes open the file at once, fails at once instead of waiting.
            if self.db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                self.db.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as exc:
            raise _cannot_open(path, exc) from None
        self.db.execute("PRAGMA synchronous = NORMAL")
        # Erased and expired templates must not linger in free pages of the file.
        self.db.execute("PRAGMA secure_delete = ON")
        if int(self.meta("schema") or 0) < SCHEMA_VERSION:
            self._migrate()

    def _tables(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}

    def meta(self, key: str) -> str | None:
        """A value of the meta table (None: missing, or a file too damaged to tell)."""
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.DatabaseError:
            return None
        return row[0] if row else None

    def _create_in_place(self) -> None:
        """Make the schema in an existing empty file. Under the write lock, and checking for
        tables inside it: two processes creating one library make it once."""
        key = None
        self.db.execute("BEGIN IMMEDIATE")
        try:
            if not self._tables():
                key, _ = key_for_new_library(self.path)
                schema.create(self.db, key)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        if key is not None:
            _make_private(self.path)

    def _migrate(self) -> None:
        """Bring an older library up to this schema in one transaction (schema.migrate's
        steps), then make its files private and its old plain pages gone."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            version = int(self.meta("schema") or 0)  # another process may have migrated it meanwhile
            if version < SCHEMA_VERSION:
                schema.migrate(self.db, version, self._migration_key(version))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        _make_private(self.path)  # made 0644 by older versions; it holds biometric data
        # The plain embeddings and crops just sealed stay in the main file until a checkpoint
        # replaces their pages: a copy of the file alone would still show them.
        self.flush_deleted()

    def _migration_key(self, version: int) -> LibraryKey:
        if version < 3:  # not sealed yet: the key given, or a new one beside the library
            return key_for_new_library(self.path)[0]
        if find_key(self.path) is None:
            raise GigafaceError(
                f"{self.path}: a library of schema {version}; this gigaface seals its templates in blocks"
                f"{', seals its face crops and chains its audit log' if version < 4 else ''}, which needs its key once"
                f" (the key file {key_file_beside(self.path)} is missing; use --key-file or ${ENV_KEY_FILE})")
        return self.key()

    # --- the key that seals embeddings ------------------------------------------------
    def key(self) -> LibraryKey:
        """The library's key, or a clear error: without it, faces can be listed, not searched."""
        if self._key is None:
            key = find_key(self.path)
            if key is None:
                raise GigafaceError(
                    f"{self.path}: its embeddings are encrypted and no key was given (the key file"
                    f" {key_file_beside(self.path)} is missing; use --key-file or ${ENV_KEY_FILE})")
            if not hmac.compare_digest(key.check, self.meta("key_check") or ""):
                raise GigafaceError(f"{self.path}: the key from {key.origin} is not this library's key")
            self._key = key
        return self._key

    def has_key(self) -> bool:
        try:
            self.key()
        except GigafaceError:
            return False
        return True

    def is_own_file(self, path: str) -> bool:
        """Whether `path` is this library's database, its WAL or its shared memory: opening
        and closing one of those in this process would drop SQLite's locks on it."""
        real = os.path.realpath(path)
        return any(real == os.path.realpath(self.path + suffix) for suffix in ("", "-wal", "-shm", "-journal"))

    def transaction(self):
        return _Transaction(self.db)

    def close(self) -> None:
        self.db.close()

    def flush_deleted(self) -> None:
        """Move the WAL, whose pages still hold what was just deleted, into the main file
        (where secure_delete has zeroed it) and empty it. Best effort while others read."""
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _create_file(path: str) -> list[str]:
    """A new library at `path`: made complete under a temporary name and linked into place,
    so no reader ever sees half a library, and a link never replaces a file (when two
    processes create one library, the first link wins and the other opens it). Owner-only:
    it holds biometric data. On failure (disk full, a folder we cannot write) nothing is
    left behind, not even the key file this call made. Returns the files this call made."""
    key, made_key = key_for_new_library(path)
    made = [key.origin] if made_key else []

    def write(aside: str) -> None:
        con = sqlite3.connect(aside, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode = MEMORY")  # no journal file beside the temporary
            con.execute("BEGIN")
            schema.create(con, key)
            con.execute("COMMIT")
            con.execute("PRAGMA journal_mode = WAL")  # kept in the file; its -wal goes on close
        finally:
            con.close()

    try:
        if link_new_file(path, write):  # else another process made it first: that one is the library
            made.append(path)
    except (OSError, sqlite3.Error) as exc:
        if made_key and not os.path.exists(path):
            try:
                os.remove(key.origin)
            except OSError:
                pass
        reason = os_reason(exc, folder_of(path)) if isinstance(exc, OSError) else sqlite_write_problem(exc) or str(exc)
        raise GigafaceError(f"{path}: cannot create the library: {reason}") from None
    return made


def _cannot_open(path: str, exc: sqlite3.Error) -> GigafaceError:
    folder = folder_of(path)
    if not os.access(folder, os.W_OK):
        return GigafaceError(f"{path}: cannot open the library: cannot write in {folder} (SQLite keeps the"
                             " library's -wal and -shm files beside it)")
    return GigafaceError(f"{path}: cannot open the library: {sqlite_write_problem(exc) or exc}")


def _make_private(path: str) -> None:
    """Owner-only permissions for the library and the files SQLite keeps beside it (it gives
    new ones the library's mode); best effort: the file may be someone else's."""
    for name in (path, path + "-wal", path + "-shm"):
        try:
            if os.path.exists(name):
                os.chmod(name, 0o600)
        except OSError:
            pass


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb):
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        return False
