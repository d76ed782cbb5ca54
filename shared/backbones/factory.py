"""``timm.create_model`` with an unknown architecture name as one clear error (timm raises a bare RuntimeError)."""

from __future__ import annotations

import difflib

import timm
from torch import nn


def create_timm_model(name: str, what: str, **kwargs) -> nn.Module:
    """``timm.create_model(name, **kwargs)``; a name timm does not know is a ValueError naming ``what`` (the flag
    or builder) and the closest known names. A name with a source prefix (``hf-hub:...``) goes to timm as it is."""
    if ":" not in name and not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise ValueError(f"{what}: {name!r} is not a timm architecture"
                         + (f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"))
    return timm.create_model(name, **kwargs)
