"""A procedural ModelNet-like set in two variants, chosen by how its two default views (0: front, 6: rear) differ.

Every object is a z-up body drawn from class-independent families (box, cylinder, prism, domed box) with random
proportions and optional handles/knob, so the body itself says nothing about the class. The class is written on
it twice:
- the **front mark** (on the -Y face, seen by view 0): the class's glyph, large and clear;
- the **rear mark** (on the +Y face, seen by view 6), by variant (`VARIANTS`):
  - `information` (the default): a small glyph shared by a pair of classes, and in `REAR_NOISE` of the objects
    replaced by a random class pair's glyph. View 6 alone cannot tell the two classes of a pair apart and is
    sometimes wrong: its best attainable accuracy is about 0.40 with 10 classes (`view_accuracy_limits`; on a
    finite split, `best_view_accuracy`), while view 0 alone can reach 1. The views differ in how much they say.
    The renderer scales and centres each mesh by its extent, so a front mark that stood out further would
    shrink or shift the whole object in view 6 as well: eight invisible anchor vertices (`ANCHOR_MARGIN`) fix the
    extent from the body alone, and view 6 shows nothing of the front mark.
  - `ease`: the class's own glyph, every time, so view 6 alone can reach 1 like view 0; but it is harder to learn:
    smaller (`EASE_REAR_SCALE` of the face against the front's `FRONT_SCALE`), in lower relief, placed more loosely,
    among `EASE_CLUTTER` class-independent distractor studs. The views say the same; they differ in how easily
    it is learnt.
  - `shortcut`: the roles of `ease` swapped, and the rear made a shortcut. The front mark is the class's glyph drawn
    as `ease` draws its rear mark (small, shallow, loose, among studs): view 0 alone can reach 1 but learns it
    slowly. The rear mark is large, in deep relief, and one of the glyphs most unlike each other at low resolution
    (`SHORTCUT_GLYPHS`, each standing for one class); it names a class that agrees with the label on a fraction
    `agreement` (default 1) of the train and validation objects (otherwise another class, drawn at random) and is
    drawn at random, whatever the label, for every test object: view 6 alone is right in training and at chance at
    test. Anchors (`SHORTCUT_ANCHOR_MARGIN`) keep the rear mark out of view 0's scale and centre, and the front
    mark out of view 6's. The views differ in whether what they say holds at test.
Each object is rotated by at most ±`YAW_JITTER_DEG` about the upright axis, so the front stays the front.
Everything derives from (seed, class, object, variant), so a set is reproducible byte for byte and independent of
how work is split over processes.
"""
from __future__ import annotations

import numpy as np

DEFAULT_CLASSES = 10
DEFAULT_PER_CLASS = 200   # `mmtm prep synthetic` with defaults: 2,000 objects, well under a minute on 2 cores
DEFAULT_IMAGE_SIZE = 64
# Fraction of objects whose rear mark belongs to a random class pair (the "noisy" part of view 6).
REAR_NOISE = 0.25
YAW_JITTER_DEG = 20.0
FRONT_SCALE = 0.9    # glyph size relative to the smaller side of the front face
# Flat parts lean back by this much so they face the sky: a part parallel to its face would be shaded exactly
# like the face and only its thin edges would show.
TILT_DEG = 40.0
REAR_SCALE = 0.65
VARIANTS = ("information", "ease", "shortcut")
SHORTCUT_AGREEMENT = 1.0   # `shortcut`: fraction of train/val objects whose rear mark names their class
# `information`: how far the anchors lie beyond the body, per axis (x, y, z), in units of the mark size: beyond the
# farthest any mark reaches (measured: 0.51 in front, 0.40 behind, 0.07 below; `_anchored` checks it). The objects
# are drawn about a third smaller than without anchors.
ANCHOR_MARGIN = (0.1, 0.6, 0.1)
# `shortcut`: below and above the body per axis (measured: its marks reach 0.36 in front, 0.76 behind, 0.09 below;
# they stay within the faces' width).
SHORTCUT_ANCHOR_MARGIN = ((0.0, 0.4, 0.1), (0.0, 0.8, 0.0))
# The `ease` rear mark: smaller, shallower and looser than the front one, among distractor studs.
EASE_REAR_SCALE = 0.7
EASE_RELIEF = 0.8      # its relief depth relative to a normal mark's
EASE_JITTER = 0.12     # its position jitter, a fraction of the face
EASE_CLUTTER = 3       # distractor studs on the rear face

# A glyph is a list of parts in face coordinates (u along the face's width, v up), unit = glyph size:
# ("block", u, v, width, height[, angle°]) | ("disc", u, v, radius) | ("ring", u, v, radius, thickness)
# | ("spike", u, v, radius, height, +1 up/-1 down) | ("dome", u, v, radius)
GLYPHS: dict[str, list[tuple]] = {
    "block": [("block", 0, 0, 0.6, 0.6)],
    "disc": [("disc", 0, 0, 0.35)],
    "ring": [("ring", 0, 0, 0.32, 0.07)],
    "spike_up": [("spike", 0, -0.3, 0.3, 0.7, 1)],
    "hbar": [("block", 0, 0, 0.9, 0.2)],
    "vbar": [("block", 0, 0, 0.2, 0.9)],
    "plus": [("block", 0, 0, 0.85, 0.2), ("block", 0, 0, 0.2, 0.85)],
    "cross": [("block", 0, 0, 0.95, 0.18, 45), ("block", 0, 0, 0.95, 0.18, -45)],
    "two_discs": [("disc", -0.28, 0, 0.18), ("disc", 0.28, 0, 0.18)],
    "two_vbars": [("block", -0.3, 0, 0.18, 0.85), ("block", 0.3, 0, 0.18, 0.85)],
    "ell": [("block", -0.32, 0.05, 0.2, 0.8), ("block", 0.02, -0.35, 0.7, 0.2)],
    "tee": [("block", 0, 0.35, 0.9, 0.2), ("block", 0, -0.05, 0.2, 0.75)],
    "dots_diag": [("block", -0.3, -0.3, 0.22, 0.22), ("block", 0, 0, 0.22, 0.22), ("block", 0.3, 0.3, 0.22, 0.22)],
    "target": [("ring", 0, 0, 0.38, 0.06), ("disc", 0, 0, 0.13)],
    "dome": [("dome", 0, 0, 0.38)],
    "spike_down": [("spike", 0, 0.3, 0.3, 0.7, -1)],
    "equals": [("block", 0, 0.2, 0.85, 0.18), ("block", 0, -0.2, 0.85, 0.18)],
    "four_dots": [("disc", u, v, 0.13) for u in (-0.25, 0.25) for v in (-0.25, 0.25)],
    "cup": [("block", -0.35, 0.05, 0.18, 0.75), ("block", 0.35, 0.05, 0.18, 0.75), ("block", 0, -0.35, 0.88, 0.18)],
    "disc_over_bar": [("disc", 0, 0.22, 0.2), ("block", 0, -0.3, 0.8, 0.18)],
}
MAX_CLASSES = len(GLYPHS)
_GLYPH_NAMES = list(GLYPHS)
# `shortcut`: the rear glyphs, those most unlike each other at a low resolution first (bars of two orientations,
# a solid square, a ring, two bars), so that the rear mark is learnt first and fully.
SHORTCUT_GLYPHS = ["hbar", "vbar", "block", "ring", "two_vbars"] + [
    g for g in _GLYPH_NAMES if g not in ("hbar", "vbar", "block", "ring", "two_vbars")]
SHORTCUT_SCALE = 1.0    # of the smaller side of the rear face
SHORTCUT_RELIEF = 1.6   # relief depth relative to a normal mark's: the deeper, the sooner it is learnt


def class_names(classes: int) -> list[str]:
    """The first `classes` glyph names; labels are positions in the sorted list, as for real data."""
    if not 2 <= classes <= MAX_CLASSES:
        raise ValueError(f"synthetic classes must be 2..{MAX_CLASSES}, not {classes}")
    return _GLYPH_NAMES[:classes]


def variant_parameters(views_differ: str, agreement: float = SHORTCUT_AGREEMENT) -> dict:
    """What `dataset.json` records of a variant: its name and the parameters of its rear mark."""
    if views_differ == "shortcut":
        return {"views_differ": views_differ, "front_mark": "glyph of the class, hard to learn",
                "front_scale": EASE_REAR_SCALE, "front_relief": EASE_RELIEF, "front_jitter": EASE_JITTER,
                "front_clutter": EASE_CLUTTER, "rear_mark": "glyph standing for the shortcut class",
                "rear_glyphs": SHORTCUT_GLYPHS, "rear_scale": SHORTCUT_SCALE, "rear_relief": SHORTCUT_RELIEF,
                "shortcut_agreement": agreement, "shortcut_at_test": "uniform over the classes"}
    if views_differ == "information":
        return {"views_differ": views_differ, "rear_mark": "glyph of the class pair", "rear_scale": REAR_SCALE,
                "rear_noise": REAR_NOISE}
    return {"views_differ": views_differ, "rear_mark": "glyph of the class", "rear_scale": EASE_REAR_SCALE,
            "rear_relief": EASE_RELIEF, "rear_jitter": EASE_JITTER, "rear_clutter": EASE_CLUTTER}


def view_accuracy_limits(views_differ: str, classes: int) -> dict[str, float | None]:
    """The best accuracy a classifier of one view can reach on an infinite sample (the Bayes accuracy of the
    design), per view index; None for views the design does not aim at a mark (their limit is not derived).
    `information`, view 6: the rear glyph names the pair (k, k+1) with chance 1 − REAR_NOISE + REAR_NOISE/P
    (P = pairs), otherwise a random pair; the best guess is a class of the seen pair, right with chance
    max_c P(c | pair seen) averaged over what is seen."""
    limits: dict[str, float | None] = {str(v): None for v in range(12)}
    limits["0"] = 1.0
    if views_differ == "shortcut":  # at test the rear mark is independent of the class
        limits["6"] = 1 / classes
        return limits
    if views_differ == "ease":
        limits["6"] = 1.0
        return limits
    pairs = (classes + 1) // 2
    right_pair = 1 - REAR_NOISE + REAR_NOISE / pairs
    # P(seen pair q, class c) = 1/classes · (right_pair if c is in q else REAR_NOISE/pairs); for each q the best c
    # is one of its members, with P = right_pair/classes.
    limits["6"] = pairs * right_pair / classes
    return limits


def shortcut_limits_by_split(classes: int, agreement: float) -> dict[str, dict[str, float | None]]:
    """`shortcut`: each view's attainable accuracy per split (see `view_accuracy_limits`). In train and validation
    the rear mark names the class with chance `agreement`, else one of the other classes uniformly: the best guess
    from it is the class it names if agreement ≥ (1 − agreement)/(classes − 1)."""
    test = view_accuracy_limits("shortcut", classes)
    fitted = dict(test, **{"6": max(agreement, (1 - agreement) / (classes - 1))})
    return {"train": fitted, "val": fitted, "test": test}


def shortcut_class(class_index: int, classes: int, object_index: int, seed: int, *, test: bool,
                   agreement: float = SHORTCUT_AGREEMENT) -> int:
    """`shortcut`: the class whose glyph the object's rear mark shows. Its own random stream, so an object's shape
    does not depend on its split or on `agreement`."""
    rng = np.random.default_rng([seed, class_index, object_index, 3])
    if test:
        return int(rng.integers(classes))
    if rng.random() < agreement:
        return class_index
    other = int(rng.integers(classes - 1))
    return other + (other >= class_index)


def best_view_accuracy(views_differ: str, classes: int, objects: list[tuple[int, int]],
                       seed: int) -> dict[str, float | None]:
    """The accuracy on `objects` ((class index, object index) pairs) of the best classifier of what each view's
    mark says, per view index, like `view_accuracy_limits` but for this finite sample: it knows every object's
    marks, so for the `information` rear it predicts, for each rear glyph, the class most of its objects carry.
    A network given one view cannot beat this on these objects unless the view shows more than its mark."""
    limits: dict[str, float | None] = {str(v): None for v in range(12)}
    limits["0"] = limits["6"] = 1.0
    if views_differ == "information":
        counts: dict[tuple[int, int], int] = {}
        for c, o in objects:
            key = (rear_pair(c, classes, o, seed), c)
            counts[key] = counts.get(key, 0) + 1
        best: dict[int, int] = {}
        for (pair, _), n in counts.items():
            best[pair] = max(best.get(pair, 0), n)
        limits["6"] = sum(best.values()) / len(objects)
    return limits


def rear_pair(class_index: int, classes: int, object_index: int, seed: int) -> int:
    """`information`: the class pair (2k, 2k+1) whose glyph the rear carries, the object's own or, in REAR_NOISE
    of the objects, a random pair's; from its own random stream, so it is known without building the mesh."""
    rng = np.random.default_rng([seed, class_index, object_index, 2])
    return class_index // 2 if rng.random() >= REAR_NOISE else int(rng.integers((classes + 1) // 2))


def make_mesh(class_index: int, classes: int, object_index: int, seed: int,
              views_differ: str = "information", **shortcut) -> tuple[np.ndarray, np.ndarray]:
    """Object `object_index` of class `class_index` (position in `class_names(classes)`): vertices, faces.
    `shortcut`: test and agreement of `shortcut_class` (variant `shortcut` only)."""
    mesh, _ = _make(class_index, classes, object_index, seed, views_differ, **shortcut)
    return np.asarray(mesh.vertices, dtype=np.float32), np.asarray(mesh.faces, dtype=np.int64)


def marks(class_index: int, classes: int, object_index: int, seed: int,
          views_differ: str = "information", **shortcut) -> tuple[str, str]:
    """The glyphs written on the object's front and rear faces: what views 0 and 6 can read."""
    return _make(class_index, classes, object_index, seed, views_differ, **shortcut)[1]


def _make(class_index: int, classes: int, object_index: int, seed: int, views_differ: str, **shortcut):
    import trimesh

    if views_differ not in VARIANTS:
        raise ValueError(f"views_differ must be one of {', '.join(VARIANTS)}, not {views_differ!r}")
    if views_differ == "shortcut":
        return _make_shortcut(class_index, classes, object_index, seed, **shortcut)
    rng = np.random.default_rng([seed, class_index, object_index] + ([] if views_differ == "information" else [1]))
    parts, body, front_y, rear_y, face_width, size, centre_v = _body(rng)

    front = _GLYPH_NAMES[class_index]
    parts += _glyph(front, FRONT_SCALE * size * rng.uniform(0.85, 1.1),
                    rng.uniform(-0.06, 0.06), centre_v + rng.uniform(-0.06, 0.06), front_y, side=-1, rng=rng)

    if views_differ == "information":
        # Rear: the glyph of the class pair (2k, 2k+1), sometimes a random pair's instead.
        pair = rear_pair(class_index, classes, object_index, seed)
        rear_u, rear_v = rng.uniform(-0.15, 0.15) * face_width, centre_v + rng.uniform(-0.15, 0.15) * size
        rear = _GLYPH_NAMES[2 * pair]
        parts += _glyph(rear, REAR_SCALE * size * rng.uniform(0.8, 1.2), rear_u, rear_v, rear_y, side=1, rng=rng)
    else:
        # Rear: the class's own glyph, small, shallow and loosely placed, among distractor studs.
        rear_u = rng.uniform(-EASE_JITTER, EASE_JITTER) * face_width
        rear_v = centre_v + rng.uniform(-EASE_JITTER, EASE_JITTER) * size
        rear = front
        parts += _glyph(rear, EASE_REAR_SCALE * size * rng.uniform(0.85, 1.15), rear_u, rear_v, rear_y, side=1,
                        rng=rng, relief=EASE_RELIEF)
        parts += _studs(EASE_CLUTTER, face_width, centre_v, size, rear_y, rng)

    mesh = trimesh.util.concatenate(parts)
    if views_differ == "information":
        mesh = _anchored(mesh, *body, size)
    yaw = np.radians(rng.uniform(-YAW_JITTER_DEG, YAW_JITTER_DEG))
    mesh.apply_transform(trimesh.transformations.rotation_matrix(yaw, [0, 0, 1]))
    return mesh, (front, rear)


def _make_shortcut(class_index: int, classes: int, object_index: int, seed: int, *, test: bool,
                   agreement: float = SHORTCUT_AGREEMENT):
    """`shortcut`: the class's glyph on the front as `ease` draws its rear mark, among studs; a large, clear rear
    mark of `shortcut_class`."""
    import trimesh

    rng = np.random.default_rng([seed, class_index, object_index, 2])
    parts, body, front_y, rear_y, face_width, size, centre_v = _body(rng)
    front = _GLYPH_NAMES[class_index]
    parts += _glyph(front, EASE_REAR_SCALE * size * rng.uniform(0.85, 1.15),
                    rng.uniform(-EASE_JITTER, EASE_JITTER) * face_width,
                    centre_v + rng.uniform(-EASE_JITTER, EASE_JITTER) * size, front_y, side=-1, rng=rng,
                    relief=EASE_RELIEF)
    parts += _studs(EASE_CLUTTER, face_width, centre_v, size, front_y, rng)
    rear = SHORTCUT_GLYPHS[shortcut_class(class_index, classes, object_index, seed, test=test, agreement=agreement)]
    parts += _glyph(rear, SHORTCUT_SCALE * size * rng.uniform(0.85, 1.1),
                    rng.uniform(-0.06, 0.06), centre_v + rng.uniform(-0.06, 0.06), rear_y, side=1, rng=rng,
                    relief=SHORTCUT_RELIEF)
    mesh = _anchored(trimesh.util.concatenate(parts), *body, size, margin=SHORTCUT_ANCHOR_MARGIN)
    yaw = np.radians(rng.uniform(-YAW_JITTER_DEG, YAW_JITTER_DEG))
    mesh.apply_transform(trimesh.transformations.rotation_matrix(yaw, [0, 0, 1]))
    return mesh, (front, rear)


def _body(rng: np.random.Generator) -> tuple[list, tuple, float, float, float, float, float]:
    """A class-independent body; returns its parts, their extent (low, high corners), the front/rear face planes (y)
    and the markable face region: its width, the mark size (its smaller side) and its centre height."""
    from trimesh import creation
    from trimesh.transformations import translation_matrix

    width, depth, height = rng.uniform(0.9, 1.4), rng.uniform(0.5, 0.9), rng.uniform(0.9, 1.5)
    family = rng.integers(4)
    if family == 0:
        parts = [creation.box(extents=[width, depth, height])]
        half_depth, face_width = depth / 2, width
    elif family in (1, 2):  # cylinder, octagonal prism
        radius = width / 2
        parts = [creation.cylinder(radius=radius, height=height, sections=32 if family == 1 else 8)]
        half_depth, face_width = radius, radius * 1.4
    else:  # box with a dome on top
        parts = [creation.box(extents=[width, depth, height]),
                 creation.icosphere(subdivisions=2, radius=min(width, depth) / 2)
                 .apply_transform(translation_matrix([0, 0, height / 2]))]
        half_depth, face_width = depth / 2, width
    if rng.random() < 0.5:  # side handles
        for x in (-1, 1):
            parts.append(creation.cylinder(radius=0.06, height=height * 0.5, sections=12)
                         .apply_transform(translation_matrix([x * (width / 2 + 0.08), 0, 0])))
    if rng.random() < 0.5:  # top knob
        parts.append(creation.cylinder(radius=0.1, height=0.25, sections=16)
                     .apply_transform(translation_matrix([rng.uniform(-0.2, 0.2) * width, 0, height / 2 + 0.1])))
    # Marks stay 0.2 below the top edge so the elevated camera on the other side cannot see over it.
    face_width, face_bottom, face_top = face_width * 0.9, -height / 2 + 0.05, height / 2 - 0.2
    extent = np.min([p.bounds[0] for p in parts], axis=0), np.max([p.bounds[1] for p in parts], axis=0)
    return (parts, extent, -half_depth, half_depth, face_width, min(face_width, face_top - face_bottom),
            (face_bottom + face_top) / 2)


def _anchored(mesh, body_low: np.ndarray, body_high: np.ndarray, size: float, margin=None):
    """`mesh` plus the 8 corners of the body's box grown by ANCHOR_MARGIN·size, each as a zero-area face: nothing
    is drawn, but the renderer's extent (and so its scale and centre) becomes the body's, whatever the marks."""
    import trimesh

    margin = ANCHOR_MARGIN if margin is None else margin  # one (x, y, z), or (below, above)
    margin = np.broadcast_to(np.asarray(margin, dtype=float), (2, 3)) * size
    low, high = body_low - margin[0], body_high + margin[1]
    if (mesh.bounds[0] < low).any() or (mesh.bounds[1] > high).any():
        raise ValueError("a mark reaches beyond the anchors; ANCHOR_MARGIN is too small")
    corners = np.array([[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])])
    n = len(mesh.vertices)
    return trimesh.Trimesh(np.vstack([mesh.vertices, corners]),
                           np.vstack([mesh.faces, np.repeat(n + np.arange(8)[:, None], 3, axis=1)]), process=False)


def _studs(count: int, face_width: float, centre_v: float, size: float, face_y: float,
           rng: np.random.Generator) -> list:
    """`count` small hemispheres scattered over the rear face: clutter that says nothing about the class."""
    from trimesh import creation
    from trimesh.transformations import translation_matrix

    out = []
    for _ in range(count):
        radius = size * rng.uniform(0.05, 0.09)
        x = rng.uniform(-0.45, 0.45) * face_width
        z = centre_v + rng.uniform(-0.45, 0.45) * size
        stud = creation.icosphere(subdivisions=1, radius=radius)
        out.append(stud.apply_transform(translation_matrix([x, face_y, z])))
    return out


def _glyph(name: str, size: float, u0: float, v0: float, face_y: float, *, side: int,
           rng: np.random.Generator, relief: float = 1.0) -> list:
    """Parts of glyph `name` standing out of the face plane y = face_y on `side` (-1 front, +1 rear); `relief`
    scales how far they stand out."""
    from trimesh import creation
    from trimesh.transformations import rotation_matrix, translation_matrix

    depth = size * rng.uniform(0.2, 0.3) * relief
    embed = 0.15  # sink each part into the body so it stays attached on curved faces
    out = []
    for part in GLYPHS[name]:
        kind, u, v = part[0], part[1] * size, part[2] * size
        # u runs along +x seen from the front (-Y), along -x seen from the rear, so glyphs never read mirrored.
        x, z = u0 - side * u, v0 + v
        y_mid = face_y + side * (depth - embed) / 2
        place = translation_matrix([x, y_mid, z]) @ rotation_matrix(side * np.radians(TILT_DEG), [1, 0, 0])
        if kind == "block":
            angle = np.radians(part[5]) if len(part) > 5 else 0.0
            m = creation.box(extents=[part[3] * size, depth + embed, part[4] * size],
                             transform=place @ rotation_matrix(angle, [0, 1, 0]))
        elif kind == "disc":
            m = creation.cylinder(radius=part[3] * size, height=depth + embed, sections=24,
                                  transform=place @ rotation_matrix(np.pi / 2, [1, 0, 0]))
        elif kind == "ring":
            m = creation.torus(major_radius=part[3] * size, minor_radius=part[4] * size, major_sections=32,
                               minor_sections=8)
            m.apply_transform(translation_matrix([x, face_y + side * part[4] * size, z])
                              @ rotation_matrix(np.pi / 2 + side * np.radians(TILT_DEG), [1, 0, 0]))
        elif kind == "spike":
            radius, height, direction = part[3] * size, part[4] * size, part[5]
            m = creation.cone(radius=radius, height=height, sections=24)
            m.apply_transform(translation_matrix([x, face_y + side * radius * 0.5, z])
                              @ rotation_matrix(0.0 if direction > 0 else np.pi, [1, 0, 0]))
        elif kind == "dome":
            m = creation.icosphere(subdivisions=2, radius=part[3] * size)
            m.apply_transform(translation_matrix([x, face_y, z]))
        else:
            raise ValueError(f"unknown glyph part {kind!r}")
        out.append(m)
    return out
