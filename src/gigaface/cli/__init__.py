"""The `gigaface` command: scan, faces, find, blur, demo, tokens, governance, serve.

One module per command group; app.py puts them together. Nothing else in gigaface imports
this package: it is a front end, like the service."""
from gigaface.cli.app import app, main

__all__ = ["app", "main"]
