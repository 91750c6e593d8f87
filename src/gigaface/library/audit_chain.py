"""The audit log's chain: each row of `searches` holds a keyed hash (HMAC-SHA256 under a key
derived from the library key) of the previous row's hash and its own content, and the
library's meta holds a keyed head (row count and last hash).

Triggers stop a careless UPDATE or DELETE, but anyone who can write the file can drop
them. Without the key, nobody can make hashes that verify: an edited, inserted or
removed row breaks the chain at that row, and a log cut short or wiped (rows and all)
no longer matches the head.

What it cannot see: a rollback of the whole file (log and head together) to an earlier
copy; a change by someone holding the key (keep the key apart from the library, see
sealing.py); searches made by a modified gigaface that skips the log.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import pwd
from dataclasses import dataclass

GENESIS = ""  # the "previous hash" of the first row
HEAD = "audit_head"  # the meta key holding {"count", "last", "mac"}


def local_user() -> str:
    """Who acts from this computer's command line or Python API, for the audit log: the
    account of the process's real uid (getpass trusts $LOGNAME and $USER, which anyone sets)."""
    uid = os.getuid()
    try:
        return f"local {pwd.getpwuid(uid).pw_name}"
    except KeyError:  # a uid without an account (containers)
        return f"local uid {uid}"


@dataclass(frozen=True)
class AuditVerdict:
    """Whether the log is whole: `row` is the id of the first row that does not verify
    (None when the break is in the head: rows missing at the end, or a wiped log)."""

    ok: bool
    rows: int
    problem: str | None = None
    row: int | None = None

    def to_dict(self) -> dict:
        return {"ok": self.ok, "rows": self.rows, "problem": self.problem, "row": self.row}


def content(row: tuple) -> bytes:
    """A row's content as hashed: (id, at, who, purpose, captures JSON, reference hash,
    results, matches), exactly as stored (a REAL reads back as the same float)."""
    return json.dumps(list(row), separators=(",", ":"), ensure_ascii=True).encode()


def row_mac(key: bytes, previous: str, row: tuple) -> str:
    return hmac.new(key, previous.encode() + b"\n" + content(row), hashlib.sha256).hexdigest()


def head_mac(key: bytes, count: int, last: str) -> str:
    return hmac.new(key, f"head\n{count}\n{last}".encode(), hashlib.sha256).hexdigest()


def make_head(key: bytes, count: int, last: str) -> str:
    return json.dumps({"count": count, "last": last, "mac": head_mac(key, count, last)})


def read_head(key: bytes, text: str | None) -> tuple[int, str] | None:
    """(count, last hash) of a head whose keyed hash verifies, else None."""
    try:
        head = json.loads(text) if text else None
        count, last, mac = int(head["count"]), str(head["last"]), str(head["mac"])
    except (ValueError, TypeError, KeyError):
        return None
    return (count, last) if hmac.compare_digest(mac, head_mac(key, count, last)) else None


def verify(key: bytes, rows: list[tuple], head_text: str | None) -> AuditVerdict:
    """Walk the chain: `rows` are (content columns..., chain) in id order."""
    previous = GENESIS
    for row in rows:
        *fields, chain = row
        if not chain or not hmac.compare_digest(str(chain), row_mac(key, previous, tuple(fields))):
            return AuditVerdict(False, len(rows), f"row {fields[0]} was changed, inserted, or follows removed rows",
                                fields[0])
        previous = chain
    head = read_head(key, head_text)
    if head is None:
        return AuditVerdict(False, len(rows), "the log's head is missing or was changed")
    count, last = head
    if count != len(rows):
        return AuditVerdict(False, len(rows), f"the log held {count} row(s) and now holds {len(rows)}:"
                            " rows were removed from its end, or it was wiped")
    if last != previous:
        return AuditVerdict(False, len(rows), "the log's last row is not the one its head names")
    return AuditVerdict(True, len(rows))
