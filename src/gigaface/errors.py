"""Errors a user can cause and fix; the CLI prints them as one line and exits with 2."""


class GigafaceError(Exception):
    """A problem with the user's input or environment, with a message that says what to do."""
