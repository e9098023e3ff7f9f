"""Errors that name a user's bad config value or option; every layer raises them, so they sit at the bottom."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value that cannot work, reported before training starts."""
