"""Ingest an MVCNN 12-view render tree: `<class>/{train,test}/<class>_<NNNN>.obj.shaded_v<VVV>.png`.

Scanning groups files by object and checks that all 12 views are there; ingesting fully decodes every image
(a truncated PNG fails here, not in the middle of training), resizes it, and re-encodes it.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mmtm.loaders.dataset import NUM_VIEWS, DatasetError
from mmtm.loaders.prep.render import encode

RENDER_NAME = re.compile(r"^(?P<object>.+)\.obj\.shaded_v(?P<view>\d{3})\.png$")
RENDER_PATTERN = "<class>_<NNNN>.obj.shaded_v<VVV>.png"


def render_filename(obj: str, view: int) -> str:
    """The file of view `view` (0-based) of object `obj`; MVCNN numbers views 001..012."""
    return f"{obj}.obj.shaded_v{view + 1:03d}.png"


def group_views(split_dir: Path) -> tuple[dict[str, list[Path]], list[str]]:
    """Objects of one `<class>/<split>` folder → their 12 view files in view order, plus the problems found
    (one line each, naming the file): a badly named .png, a view number out of range, a missing view."""
    found: dict[str, dict[int, Path]] = {}
    problems: list[str] = []
    for path in sorted(split_dir.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() != ".png":
            continue
        m = RENDER_NAME.match(path.name)
        if m is None:
            problems.append(f"{path}: unexpected file name; expected {RENDER_PATTERN}")
            continue
        view = int(m["view"]) - 1
        if not 0 <= view < NUM_VIEWS:
            problems.append(f"{path}: view number {m['view']} is outside 001..{NUM_VIEWS:03d}")
            continue
        found.setdefault(m["object"], {})[view] = path
    objects: dict[str, list[Path]] = {}
    for obj, views in found.items():
        missing = [v for v in range(NUM_VIEWS) if v not in views]
        if missing:
            problems.append(f"{split_dir / render_filename(obj, missing[0])}: missing view "
                            f"({len(missing)} of {NUM_VIEWS} views of {obj} missing)")
        else:
            objects[obj] = [views[v] for v in range(NUM_VIEWS)]
    return objects, problems


def load_view(path: Path, image_size: int) -> np.ndarray:
    """Decode one render completely and bring it to `image_size`²: uint8 grey [H,W] when the image is grey
    (the MVCNN renders are), RGB [H,W,3] otherwise."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            im = _grey_or_rgb(im)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        reason = str(e).replace(f" '{path}'", "") or e.__class__.__name__  # Pillow repeats the path
        raise DatasetError(f"{path}: cannot decode image ({reason})") from None
    if im.size != (image_size, image_size):
        im = im.resize((image_size, image_size), Image.Resampling.LANCZOS)
    return np.asarray(im)


def _grey_or_rgb(im):
    from PIL import Image

    if "A" in im.getbands() or "transparency" in im.info:
        # Transparent background → the protocol's black background.
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    if im.mode in ("L", "1"):
        return im.convert("L")
    im = im.convert("RGB")
    a = np.asarray(im)
    # Grey renders saved as RGB: keep one channel; readers convert to RGB anyway.
    return im.convert("L") if (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all() else im


def ingest_object(paths: list[Path], image_size: int, encoding: str) -> list[bytes]:
    """The 12 views of one object, decoded, resized and re-encoded."""
    return [encode(load_view(p, image_size), encoding) for p in paths]
