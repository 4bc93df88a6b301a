"""Flag values that are lists, parsed once for every command: `8,64`, `0,1,2`, `0-9`, and view pairs `0,6`."""
from __future__ import annotations

from typing import Optional

from mmtm.loaders.errors import UserError


def int_list(text: str, flag: str, least: int = 0) -> list[int]:
    """Comma-separated integers or inclusive ranges (`0-4,7`), each at least `least`, at least one and none twice;
    else one error line."""
    values: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            first, dash, last = part.partition("-")
            if dash and first.strip():  # a range; a leading "-" is a negative number, refused below
                low, high = int(first), int(last)
                if high < low:
                    raise ValueError
                values += range(low, high + 1)
            else:
                values.append(int(part))
    except ValueError:
        raise UserError(f"{flag} takes comma-separated integers or ranges like 0,1 or 0-9, got {text!r}") from None
    if not values or len(set(values)) != len(values) or min(values) < least:
        raise UserError(f"{flag} must list at least one integer of at least {least}, none twice, got {text!r}")
    return values


def view_pair(text: Optional[str], flag: str = "--views") -> Optional[tuple[int, int]]:
    """Two view indices written as every command writes them, `0,6`; None when not given."""
    if text is None:
        return None
    try:
        views = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"{flag} takes two view indices like 0,6, got {text!r}") from None
    if len(views) != 2:
        raise UserError(f"{flag} takes two view indices like 0,6, got {text!r}")
    return views  # type: ignore[return-value]
