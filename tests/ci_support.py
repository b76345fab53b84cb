"""One rule for "are we in CI": there a missing server or tool fails the test that
needs it; on a developer's machine the test is skipped with the reason."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """``CI`` set to anything but empty, ``0``, ``false`` or ``no``."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> NoReturn:
    """Fail (in CI) or skip (locally) the calling test: ``reason`` says what to install."""
    if in_ci():
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)
