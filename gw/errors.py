"""The error tree: every error gw reports to a person derives from GwError; cli.main maps them to exit codes."""

from __future__ import annotations


class GwError(Exception):
    """gw failed."""

    exit_code = 1

    def __init__(self, msg: str | None = None) -> None:
        super().__init__(msg or self.__doc__)


class ConfigError(GwError):
    """The configuration is invalid."""

    exit_code = 2


class UsageError(GwError):
    """The command line is invalid."""

    exit_code = 2


class TunError(GwError, OSError):
    """The TUN device failed."""

    def __init__(self, msg: str, err: int | None = None) -> None:
        if err is None:
            OSError.__init__(self, msg)
        else:
            OSError.__init__(self, err, msg)
