"""A griffe extension of this site (mkdocs.yml, mkdocstrings ``extensions``; not a page).

The docstrings use a few Sphinx roles (``:class:`durably.Storage```,
``:mod:`~durably.sql```); Markdown shows them as literal text. This turns each into
inline code of the name it names (``~`` keeps the last component only, as Sphinx does).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|mod|meth|func|data|attr|exc|obj):`(~?)([^`]+)`")


def _plain(match: re.Match[str]) -> str:
    name = match.group(2)
    if match.group(1):
        name = name.rpartition(".")[2]
    return f"`{name}`"


class SphinxRoles(griffe.Extension):
    """Rewrites Sphinx roles in every docstring as inline code."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Called by griffe for each object it loads."""
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_plain, obj.docstring.value)
