"""Sub-commands beyond edit/ask/demo, each defined next to the code it drives."""

from __future__ import annotations


def register(sub) -> None:
    """Add every extra sub-command to the `corsa` parser."""
