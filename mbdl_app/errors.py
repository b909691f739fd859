"""The application's exception family: every message names the input and what is wrong."""


class AppError(Exception):
    """Base of every error raised by mbdl_app/."""


class ConfigError(AppError):
    """A session config file or option is malformed: names the file/option and the problem."""


class SessionError(AppError):
    """A session cannot be built or run as configured (e.g. an engine on the wrong stream)."""
