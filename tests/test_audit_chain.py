"""The audit log cannot be forged, edited, cut short or wiped unseen, and names the real user.

These drive a real library file and the real `gigaface audit`; the rows are appended by
`Library.record_search`, the one way every search, erasure and consent change logs itself.
"""
from __future__ import annotations

import os
import pwd
import sqlite3

import numpy as np
import pytest

from gigaface.library import audit_chain
from gigaface.library.store import Library
from gigaface.library.audit_chain import local_user
from bench.harness import run_cli

BROKEN = 3  # gigaface audit's exit code for a broken chain


@pytest.fixture
def logged(tmp_path):
    """A library whose log has three entries."""
    db = tmp_path / "lib.db"
    library = Library(str(db), create=True)
    for k in range(3):
        library.audit.record_search(f"local user{k}", "search", [1], np.full(128, k, np.float32), 5, k)
    library.close()
    return db


def tamper(db, *statements: str) -> None:
    """What anyone who can write the file can do: drop the triggers and change rows."""
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("DROP TRIGGER IF EXISTS searches_append_only_update")
    con.execute("DROP TRIGGER IF EXISTS searches_append_only_delete")
    for statement in statements:
        con.execute(statement)
    con.close()


def audit_fails(db, *needles: str) -> str:
    proc = run_cli("audit", db)
    assert proc.returncode == BROKEN, (proc.returncode, proc.stdout, proc.stderr)
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("gigaface: audit log BROKEN: "), proc.stderr
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def test_an_untouched_log_verifies(logged):
    proc = run_cli("audit", logged)
    assert proc.returncode == 0, proc.stderr
    assert "3 search(es)" in proc.stdout and "chain verified" in proc.stderr
    log = Library(str(logged)).audit.log()
    assert [e.who for e in log] == ["local user0", "local user1", "local user2"]
    assert log.verdict.ok and log.verdict.rows == 3


def test_a_wiped_log_is_detected(logged):
    tamper(logged, "DELETE FROM searches")
    audit_fails(logged, "held 3 row(s) and now holds 0")
    assert not Library(str(logged)).audit.log().verdict.ok  # what GET /api/audit reads


def test_an_edited_row_is_named(logged):
    tamper(logged, "UPDATE searches SET who = 'local nobody' WHERE id = 2")
    audit_fails(logged, "row 2")
    assert Library(str(logged)).audit.log().verdict.row == 2


def test_a_row_removed_from_the_middle_is_found_at_the_next(logged):
    tamper(logged, "DELETE FROM searches WHERE id = 2")
    audit_fails(logged, "row 3")


def test_a_log_cut_short_is_detected(logged):
    tamper(logged, "DELETE FROM searches WHERE id = 3")
    audit_fails(logged, "held 3 row(s) and now holds 2")


def test_a_row_forged_without_the_key_is_found(logged):
    # the forger knows the algorithm and the previous link, but not the key
    con = sqlite3.connect(logged)
    previous = con.execute("SELECT chain FROM searches WHERE id = 3").fetchone()[0]
    row = (4, 1.0, "local alibi", "search", "[1]", "0" * 64, 1, 0)
    forged = audit_chain.row_mac(os.urandom(32), previous, row)
    con.execute("INSERT INTO searches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (*row, forged))
    con.commit()
    con.close()
    audit_fails(logged, "row 4")


def test_a_removed_head_is_detected(logged):
    tamper(logged, "DELETE FROM meta WHERE key = 'audit_head'")
    audit_fails(logged, "head is missing")


def test_searching_on_after_a_break_does_not_heal_it(logged):
    tamper(logged, "DELETE FROM searches WHERE id = 3")
    library = Library(str(logged))
    library.audit.record_search("local later", "search", [1], np.zeros(128, np.float32), 1, 0)
    library.audit.record_search("local later", "search", [1], np.zeros(128, np.float32), 1, 0)
    assert not library.audit.log().verdict.ok
    audit_fails(logged)


def test_without_the_key_the_log_cannot_be_checked(logged):
    os.rename(str(logged) + ".key", str(logged) + ".elsewhere")
    proc = run_cli("audit", logged)
    assert proc.returncode == 2 and "no key was given" in proc.stderr
    assert not Library(str(logged)).audit.log().verdict.ok


def test_the_log_names_the_account_not_the_environment(monkeypatch):
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.setenv(name, "mallory")
    assert local_user() == f"local {pwd.getpwuid(os.getuid()).pw_name}"
