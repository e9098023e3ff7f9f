"""Errors that name a user's bad input; every layer raises them, so they sit at the bottom.

:class:`UserError` is the base of every error whose message is all a user needs (bad data, config or
checkpoint, a failed export, a full disk): the command line prints the message without a traceback
(``hrexp.cli``; ``HYDRA_FULL_ERROR=1`` shows it). The subclasses keep their other bases
(``ValueError``, ``RuntimeError``), so ``except ValueError`` still catches them.
"""

from __future__ import annotations

from hydra.errors import InstantiationException


class UserError(Exception):
    """Bad input named in the message (file, row, field or option, and what was expected); not a bug."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work, reported before training starts."""


def user_error(err: BaseException | None) -> UserError | None:
    """The :class:`UserError` that ``err`` is, or that Hydra's ``instantiate`` wrapped (an object's constructor
    raised it: ``InstantiationException`` from it); None for any other error (a bug shows its traceback)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, UserError):
            return err
        if not isinstance(err, InstantiationException):
            return None
        seen.add(id(err))
        err = err.__cause__
    return None
