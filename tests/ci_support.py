"""One rule for "are we in CI" (the nox crash session asks it), and one way for a
test to say that something it needs is not installed."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """``CI`` set to anything but empty, ``0``, ``false`` or ``no``."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> NoReturn:
    """Fail the calling test: ``reason`` says what to install. Never a skip — the
    suite skips nothing (``uv run nox -s tests`` installs everything first)."""
    pytest.fail(reason, pytrace=False)
