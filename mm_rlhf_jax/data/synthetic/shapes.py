"""Coloured shapes on a plain background: the pixels of the synthetic MM-RLHF task.

Pure numpy, deterministic given a numpy Generator. Sizes are (height, width).
"""

import dataclasses

import numpy as np

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 40),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUND = (245, 245, 245)
RADIUS = 5  # half-size in pixels: a shape is ~11 px wide, readable after a 32x32 squash


@dataclasses.dataclass(frozen=True)
class Shape:
    kind: str  # one of SHAPES
    colour: str  # key of COLOURS
    cy: float
    cx: float
    r: float = RADIUS


def shape_mask(s: Shape, size: tuple[int, int]) -> np.ndarray:
    """bool[H, W]: pixels covered by the shape."""
    yy, xx = np.mgrid[0:size[0], 0:size[1]].astype(np.float32) + 0.5
    dy, dx = yy - s.cy, xx - s.cx
    if s.kind == "circle":
        return dy * dy + dx * dx <= s.r * s.r
    if s.kind == "square":
        return (np.abs(dy) <= s.r * 0.9) & (np.abs(dx) <= s.r * 0.9)
    if s.kind == "triangle":  # apex up: the half-width grows linearly from the top to the base
        rel = (dy + s.r) / (2 * s.r)
        return (rel >= 0) & (rel <= 1) & (np.abs(dx) <= rel * s.r)
    raise ValueError(f"unknown shape {s.kind!r}; known: {SHAPES}")


def draw(shapes, size: tuple[int, int]) -> np.ndarray:
    """uint8[H, W, 3] image of `shapes` painted in order on the background."""
    img = np.empty((*size, 3), np.uint8)
    img[:] = BACKGROUND
    for s in shapes:
        img[shape_mask(s, size)] = COLOURS[s.colour]
    return img


def place(rng: np.random.Generator, n: int, size: tuple[int, int], *, x_range=None,
          fixed: tuple[tuple[float, float], ...] = (), r: float = RADIUS) -> list[tuple[float, float]]:
    """n centres (cy, cx) inside the image, at least 2r+2 apart from each other and from `fixed`.

    Args:
      x_range: optional (lo, hi) bounds for cx, e.g. the left third of the image.
    """
    h, w = size
    lo_x, hi_x = x_range if x_range is not None else (r + 1, w - r - 1)
    gap = 2 * r + 2
    for _ in range(1000):
        pts: list[tuple[float, float]] = []
        for _ in range(n):
            for _ in range(100):
                p = (float(rng.uniform(r + 1, h - r - 1)), float(rng.uniform(lo_x, hi_x)))
                if all((p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2 >= gap * gap for q in pts + list(fixed)):
                    pts.append(p)
                    break
        if len(pts) == n:
            return pts
    raise ValueError(f"cannot place {n} shapes of radius {r} in an image of size {size} with x_range={x_range}")
