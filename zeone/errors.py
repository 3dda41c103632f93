"""Exceptions the kernel raises on purpose.

Every error a user can cause (a bad flag, a broken file, a hostile peer) is one of these, so the CLI
can print one clear line instead of a traceback.
"""

from __future__ import annotations


class ZeoneError(Exception):
    """Base class: an expected failure with a message meant for people."""

    exit_code = 1


class ConfigError(ZeoneError):
    """The configuration (file, environment or flags) is invalid.

    ``problems`` lists ``(dotted key, message)`` pairs when the error came from validation, so
    callers can merge several validations into one report.
    """

    exit_code = 2

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class IdentityError(ZeoneError):
    """The node's key file is missing, corrupt or readable by others."""

    exit_code = 2


class PluginError(ZeoneError):
    """A plugin is unknown, broken, incompatible or missing a dependency."""

    exit_code = 2


class ApiUnavailable(ZeoneError):
    """No node answers on the configured local API address."""

    exit_code = 1


class ProtocolError(ZeoneError):
    """A peer sent something the wire protocol does not allow; its connection is closed."""
