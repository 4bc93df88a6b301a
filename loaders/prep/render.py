"""The MVCNN 12-view renderer (docs/science.md §6) on a headless moderngl context (EGL; Mesa llvmpipe on a CPU).

Protocol: the mesh is centred (bounding-box centre) and scaled into the unit sphere, both measured on the vertices
its faces use (ModelNet has stray unused vertices far from the object); 12 perspective cameras sit
every 30° around the upright axis, elevated 30°, all looking at the centre. View 0 looks from the -Y side of a
z-up mesh (the mesh's "front"), views turn counter-clockwise seen from above, so view 6 is the rear.
Faces are shaded grey (Lambert, two-sided: ModelNet's face winding is inconsistent) by a light fixed relative to
the camera, so every view is lit alike; the background is black; edges are antialiased by supersampling.
"""
from __future__ import annotations

import io
import math

import numpy as np

from mmtm.loaders.dataset import NUM_VIEWS

UP_AXES = ("x", "y", "z")
VIEW_STEP_DEG = 30.0
ELEVATION_DEG = 30.0
CAMERA_DISTANCE = 2.5
JPEG_QUALITY = 90

# Rotations that bring each upright axis onto +z, the renderer's own up.
_TO_Z_UP = {
    "x": np.array([[0, 0, -1], [0, 1, 0], [1, 0, 0]], dtype=np.float64),
    "y": np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=np.float64),
    "z": np.eye(3),
}

_VERTEX_SHADER = """
#version 330
uniform mat4 mvp;
uniform mat3 view_rot;
in vec3 in_position;
in vec3 in_normal;
out vec3 normal_eye;
void main() {
    gl_Position = mvp * vec4(in_position, 1.0);
    normal_eye = view_rot * in_normal;
}
"""

_FRAGMENT_SHADER = """
#version 330
in vec3 normal_eye;
out vec4 color;
// Light from over the camera's right shoulder, in eye space, so it turns with the camera.
const vec3 light = normalize(vec3(0.4, 0.5, 1.0));
void main() {
    float lambert = abs(dot(normalize(normal_eye), light));
    float grey = 0.15 + 0.85 * lambert;
    color = vec4(grey, grey, grey, 1.0);
}
"""


def fit_unit_sphere(vertices: np.ndarray, up: str = "z") -> np.ndarray:
    """Rotate `up` onto +z, centre the bounding box at the origin, scale the farthest vertex to radius 1."""
    if up not in UP_AXES:
        raise ValueError(f"up axis must be one of {UP_AXES}, not {up!r}")
    v = np.asarray(vertices, dtype=np.float64) @ _TO_Z_UP[up].T
    v = v - (v.min(axis=0) + v.max(axis=0)) / 2
    radius = np.linalg.norm(v, axis=1).max()
    return (v / radius if radius > 0 else v).astype(np.float32)


def camera_positions(distance: float = CAMERA_DISTANCE) -> np.ndarray:
    """[12,3] camera centres in the z-up frame; view 0 on the -Y side, then every 30° counter-clockwise."""
    elev = math.radians(ELEVATION_DEG)
    azim = np.radians(-90.0 + VIEW_STEP_DEG * np.arange(NUM_VIEWS))
    return distance * np.stack([math.cos(elev) * np.cos(azim), math.cos(elev) * np.sin(azim),
                                np.full(NUM_VIEWS, math.sin(elev))], axis=1)


def _look_at(eye: np.ndarray) -> np.ndarray:
    forward = -eye / np.linalg.norm(eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    view = np.eye(4)
    view[0, :3], view[1, :3], view[2, :3] = right, up, -forward
    view[:3, 3] = -view[:3, :3] @ eye
    return view


def _perspective(distance: float) -> np.ndarray:
    # Field of view just wide enough for the unit sphere, with a 5% margin.
    half = math.asin(1.0 / distance) * 1.05
    f = 1.0 / math.tan(half)
    near, far = distance - 1.1, distance + 1.1
    return np.array([[f, 0, 0, 0], [0, f, 0, 0],
                     [0, 0, (far + near) / (near - far), 2 * far * near / (near - far)],
                     [0, 0, -1, 0]], dtype=np.float64)


def _face_normals(tris: np.ndarray) -> np.ndarray:
    n = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
    length = np.linalg.norm(n, axis=1, keepdims=True)
    return n / np.where(length > 0, length, 1.0)


def gl_context():
    """A headless moderngl context on EGL (Mesa llvmpipe on a CPU)."""
    import moderngl

    return moderngl.create_standalone_context(backend="egl")


class Renderer:
    """One GL context and framebuffer per process, reused for every mesh.

    Antialiasing is 2×2 supersampling (render at twice the size, box-filter down): on llvmpipe it costs a
    fraction of 4× multisampling, whose resolve alone is about a millisecond per view. Each view is drawn and
    read on its own: llvmpipe was slower drawing the 12 views into one large atlas."""

    SUPERSAMPLE = 2

    def __init__(self, image_size: int, *, distance: float = CAMERA_DISTANCE):
        import moderngl

        self.image_size = int(image_size)
        self.ctx = gl_context()
        self.ctx.enable(moderngl.DEPTH_TEST)
        self.program = self.ctx.program(vertex_shader=_VERTEX_SHADER, fragment_shader=_FRAGMENT_SHADER)
        self.size = self.image_size * self.SUPERSAMPLE
        self.fbo = self.ctx.framebuffer(self.ctx.renderbuffer((self.size, self.size)),
                                        self.ctx.depth_renderbuffer((self.size, self.size)))
        projection = _perspective(distance)
        views = [_look_at(eye) for eye in camera_positions(distance)]
        # GLSL matrices are column-major: upload transposes.
        self.mvps = [(projection @ v).T.astype("f4").tobytes() for v in views]
        self.rots = [v[:3, :3].T.astype("f4").tobytes() for v in views]

    def render(self, vertices: np.ndarray, faces: np.ndarray, up: str = "z") -> np.ndarray:
        """The 12 MVCNN views of a raw mesh: uint8 grey [12, H, W]. Vertices no face uses are dropped first."""
        used, faces = np.unique(np.asarray(faces), return_inverse=True)
        return self.render_normalized(fit_unit_sphere(np.asarray(vertices)[used], up), faces.reshape(-1, 3))

    def render_normalized(self, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
        """The 12 views of a mesh already z-up and inside the unit sphere: uint8 grey [12, H, W]."""
        from PIL import Image

        tris = np.asarray(vertices, dtype=np.float32)[np.asarray(faces)]  # [F,3,3], flat-shaded
        normals = np.repeat(_face_normals(tris), 3, axis=0)
        data = np.concatenate([tris.reshape(-1, 3), normals], axis=1).astype("f4")
        vbo = self.ctx.buffer(data.tobytes())
        vao = self.ctx.vertex_array(self.program, [(vbo, "3f 3f", "in_position", "in_normal")])
        views = np.empty((NUM_VIEWS, self.image_size, self.image_size), dtype=np.uint8)
        try:
            self.fbo.use()
            for k in range(NUM_VIEWS):
                self.fbo.clear(0.0, 0.0, 0.0, 1.0)
                self.program["mvp"].write(self.mvps[k])
                self.program["view_rot"].write(self.rots[k])
                vao.render()
                raw = self.fbo.read(components=1, alignment=1)
                # GL rows run bottom-up: the -1 stride flips them while Pillow wraps the buffer.
                full = Image.frombuffer("L", (self.size, self.size), raw, "raw", "L", 0, -1)
                views[k] = np.asarray(full.reduce(self.SUPERSAMPLE))
        finally:
            vao.release()
            vbo.release()
        return views

    def release(self) -> None:
        self.ctx.release()


def encode(image: np.ndarray, encoding: str) -> bytes:
    """One grey [H,W] or RGB [H,W,3] uint8 image as JPEG (quality 90) or PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    im = Image.fromarray(image)
    if encoding == "jpeg":
        im.save(buf, format="JPEG", quality=JPEG_QUALITY)
    elif encoding == "png":
        im.save(buf, format="PNG")
    else:
        raise ValueError(f"unknown encoding {encoding!r}")
    return buf.getvalue()


_shared: Renderer | None = None


def shared_renderer(image_size: int) -> Renderer:
    """This process's renderer: GL contexts are expensive, so one per process, rebuilt only on a size change."""
    global _shared
    if _shared is None or _shared.image_size != image_size:
        if _shared is not None:
            _shared.release()
        _shared = Renderer(image_size)
    return _shared
