"""Errors a user can fix. The CLI prints them as one line and exits with status 2."""


class UserError(Exception):
    """A problem with the user's config, paths or data: reported as one line, no traceback."""


class ConfigError(UserError):
    """A config key is unknown, has the wrong type, or an invalid value."""
