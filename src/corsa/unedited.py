"""The unedited model: a model with its adapter switched off.

Kept apart from :mod:`corsa.adapter` (creating, loading and saving the adapter), which needs
the model loaders and the editors: scoring, scoping, preservation and evaluation only need
to switch the adapter off.
"""

from __future__ import annotations

import contextlib


def adapter_off(model, disabled: bool = True):
    """Context in which `model` answers as the unedited base: its adapter switched off.

    A plain model (no adapter attached yet) is the base already; so is everything when
    `disabled` is False, which lets a caller choose with a flag.
    """
    if disabled and hasattr(model, "disable_adapter"):
        return model.disable_adapter()
    return contextlib.nullcontext()
