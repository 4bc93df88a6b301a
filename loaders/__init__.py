"""Data in and out: dataset preparation (`prep`) and the two-view loaders (DALI and a torch twin)."""
from __future__ import annotations

__all__ = ["Batch", "two_view_loader"]


def __getattr__(name: str):
    # Lazy, so `loaders.dataset` users (prep) do not pay for importing torch.
    if name in __all__:
        from loaders import two_view
        return getattr(two_view, name)
    raise AttributeError(f"module 'loaders' has no attribute {name!r}")
