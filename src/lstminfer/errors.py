"""Errors a user can cause. The CLI prints them as one line and exits 2; anything else is our bug."""


class UserError(Exception):
    """Bad input: names the problem and the fix in one line (`str(err)`). Exit code 2."""


class BackendUnavailable(UserError):
    """A backend was asked for by name but cannot run here (package or device missing)."""
