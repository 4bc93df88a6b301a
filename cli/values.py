"""Flag values that are lists, parsed once for every command: `8,64`, `0,1,2`."""
from __future__ import annotations

from loaders.errors import UserError


def int_list(text: str, flag: str, least: int = 0) -> list[int]:
    """Comma-separated integers, each at least `least`, at least one and none twice; else one error line."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} takes comma-separated integers like 0,1, got {text!r}") from None
    if not values or len(set(values)) != len(values) or min(values) < least:
        raise UserError(f"{flag} must list at least one integer of at least {least}, none twice, got {text!r}")
    return values
