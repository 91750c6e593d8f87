"""The `gigaface` command: the typer app, the options every command shares, and the one
place where errors become a line on stderr and an exit code."""
from __future__ import annotations

import os
import sqlite3
import sys
import warnings
from typing import Optional

import typer
from typer import rich_utils

from gigaface import process
from gigaface.cli import blur, demo, doctor, find, governance, listing, scan, serve, tokens
from gigaface.errors import GigafaceError
from gigaface.paths import FULL, NOT_WRITABLE, folder_of, os_reason, sqlite_write_problem

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Find every face in a gigapixel crowd image, and find one person among them.")

# Registration order is the order `gigaface --help` lists them in (groups come after).
for command in (scan.scan, listing.captures, listing.faces, find.find, blur.blur, demo.demo):
    app.command()(command)
app.add_typer(tokens.token_app, name="token")
app.add_typer(governance.consent_app, name="consent")
for command in (governance.forget, governance.audit, governance.purge, governance.retention,
                serve.serve, serve.view, doctor.doctor):
    app.command()(command)


def _print_version(wanted: bool) -> None:
    if wanted:
        from gigaface import __version__
        from gigaface.engine.runtime import choose

        print(f"gigaface {__version__} (models run on {choose()}; `gigaface doctor` says more)")
        raise typer.Exit()


@app.callback()
def options(key_file: Optional[str] = typer.Option(
        None, "--key-file", help="The key that encrypts the library's embeddings (default: $GIGAFACE_KEY,"
        " $GIGAFACE_KEY_FILE, or LIBRARY.key beside the library, made when the library is created)."),
        version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                     help="Print the version and the inference runtime, then exit.")) -> None:
    """Find every face in a gigapixel crowd image, and find one person among them."""
    process.configure_process()  # the one place a command sets up its process
    if key_file is not None:
        from gigaface.library.sealing import ENV_KEY, ENV_KEY_FILE, read_key_file

        read_key_file(key_file)  # a bad key file is one clear error now, not a failure mid-scan
        os.environ[ENV_KEY_FILE] = os.path.abspath(key_file)  # job workers inherit it
        os.environ.pop(ENV_KEY, None)


def _warn_in_one_line(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"gigaface: warning: {message}", file=sys.stderr)


def main() -> None:
    warnings.showwarning = _warn_in_one_line  # e.g. a key file others can read
    try:
        code = app(prog_name="gigaface", standalone_mode=False)  # errors come here, to be one line
    except USAGE_ERROR as exc:  # a misspelt option, a missing one, a value of the wrong type
        if type(exc).__name__ == "NoArgsIsHelpError":  # `gigaface` or a group alone: its help
            rich_utils.rich_format_error(exc)
            sys.exit(exc.exit_code)
        _fail(usage_error_line(exc))
    except CLICK_ERROR as exc:
        _fail(exc.format_message())
    except typer.Abort:  # what typer makes of an EOFError
        _fail("aborted")
    except GigafaceError as exc:
        _fail(str(exc))
    except sqlite3.DatabaseError as exc:  # found mid-command
        problem = sqlite_write_problem(exc)
        if problem:  # the disk, not the file: what was committed is intact
            _fail(f"could not write to the library: {problem}; every finished step is kept:"
                  " make room and run the command again (a scan with --resume)")
        _fail(f"the library file is damaged ({exc}); restore it or scan into a new one")
    except OSError as exc:
        if exc.errno not in FULL + NOT_WRITABLE:
            raise
        where = exc.filename or "a file"
        _fail(f"cannot write {where}: {os_reason(exc, folder_of(str(where)))}")
    sys.exit(code if isinstance(code, int) else 0)  # `--help`, `--version` and typer.Exit give a code


def usage_error_line(exc: Exception) -> str:
    """Click's message, lowercased like ours, and where to read how the command is used."""
    message = " ".join(exc.format_message().split()).rstrip(".")
    message = message[:1].lower() + message[1:]
    path = exc.ctx.command_path if exc.ctx is not None else "gigaface"
    return f"{message}; see `{path} --help`"


# Click's error classes, wherever this typer takes click from (newer ones carry their own copy).
USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _fail(message: str) -> None:
    print(f"gigaface: error: {message}", file=sys.stderr)
    sys.exit(2)
