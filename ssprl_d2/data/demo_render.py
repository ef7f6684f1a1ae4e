"""Procedural renderer of the demo dataset: scene planning, backgrounds, shapes, occlusion-aware
polygons and textures (:mod:`.demo` writes the images and COCO files).

Each image shows 1-4 textured shapes on a procedural background. Every category has its own
shape, colour and texture (:data:`CATEGORY_SPECS`), so both shape and colour carry the class.

Every background is a fresh draw from ONE stationary distribution (smooth mid-grey noise with
fixed parameters), so two crops of an image share nothing but their objects. The nuisances
left (object position, scale, rotation, small colour and brightness shifts, JPEG noise) are the
ones that the pre-training's crops and flips remove.

The masks match the pixels exactly: the visible part of every object is traced into polygons,
the polygons are rasterised the way pycocotools (and Detectron2) rasterise them, and the object
is painted on exactly those pixels. Masks of different objects never overlap. All randomness
comes from the ``numpy.random.Generator`` passed in.
"""
from typing import List, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
from scipy import ndimage
from skimage import measure

__all__ = ["CATEGORY_SPECS", "plan_split", "render_image"]

# (name, shape, base RGB colour, texture); the index + 1 is the COCO category id.
CATEGORY_SPECS = (
    ("circle", "circle", (220, 40, 40), "solid"),
    ("square", "square", (40, 80, 230), "stripes"),
    ("triangle", "triangle", (40, 185, 60), "checker"),
    ("star", "star", (245, 210, 40), "dots"),
    ("crescent", "crescent", (205, 50, 205), "rings"),
    ("cross", "cross", (40, 210, 215), "grid"),
    ("ellipse", "ellipse", (250, 130, 20), "speckle"),
    ("hexagon", "hexagon", (235, 235, 235), "gradient"),
)

# The background distribution, the same for every image: grey level, then the standard
# deviations of coarse / medium blobs (cells of the given size in px), of the per-channel tint of
# the blobs, and of the pixel grain.
_BACKGROUND_GREY = 118.0
_BACKGROUND_OCTAVES = ((48, 16.0), (12, 9.0))
_BACKGROUND_CHROMA = 0.25
_BACKGROUND_GRAIN = 5.0
_IMAGE_SIZE_RANGE = (160, 256)  # per side, inclusive
_MAX_OBJECTS = 4
_MIN_VISIBLE_PIXELS = 64  # of an object's mask after occlusion
_MIN_VISIBLE_FRACTION = 0.5  # of the object's unoccluded area
_MIN_PART_PIXELS = 24  # every connected piece of a visible mask
_OBJECT_SCALE_RANGE = (0.14, 0.62)  # object size / shorter image side, log-uniform
_PLACEMENT_TRIES = 25


def plan_split(num_images: int, seed: int, split_id: int) -> List[List[int]]:
    """Categories of every image: 1-4 objects each, drawn from shuffled decks (balanced classes)."""
    rng = np.random.default_rng([seed, split_id, 0])
    counts = rng.integers(1, _MAX_OBJECTS + 1, size=num_images)
    num_decks = max(1, -(-int(counts.sum()) // len(CATEGORY_SPECS)))
    deck = np.concatenate([rng.permutation(len(CATEGORY_SPECS)) for _ in range(num_decks)])
    starts = np.concatenate([[0], np.cumsum(counts)])
    return [deck[starts[i] : starts[i + 1]].tolist() for i in range(num_images)]


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """(H, W, 3) float32 background: a new draw of the one stationary noise distribution."""
    pixels = np.full((height, width, 3), _BACKGROUND_GREY, dtype=np.float32)
    for cell, std in _BACKGROUND_OCTAVES:
        gh, gw = -(-height // cell) + 1, -(-width // cell) + 1
        grey = rng.normal(0.0, 1.0, size=(gh, gw, 1))
        tint = rng.normal(0.0, _BACKGROUND_CHROMA, size=(gh, gw, 3))
        coarse = (grey + tint).astype(np.float32) * std
        # Bilinear upsampling of the cell grid (order-1 spline: exact and deterministic).
        zoom = ((height + cell) / gh, (width + cell) / gw, 1)
        smooth = ndimage.zoom(coarse, zoom, order=1, mode="nearest", grid_mode=False)
        pixels += smooth[:height, :width]
    pixels += rng.normal(0.0, _BACKGROUND_GRAIN, size=pixels.shape).astype(np.float32)
    return pixels


def render_image(rng: np.random.Generator, categories: Sequence[int]):
    """Returns (uint8 HxWx3 image, [(category, polygons, visible mask)] bottom to top)."""
    low, high = _IMAGE_SIZE_RANGE
    width, height = (int(v) for v in rng.integers(low, high + 1, 2))
    pixels = _background(rng, width, height)
    placed: List[Tuple[int, list, np.ndarray]] = []  # (category, full polygons, full mask)
    finals: List[Tuple[list, np.ndarray]] = []
    for category in categories:
        for _ in range(_PLACEMENT_TRIES):
            polygons = _shape_polygons(rng, CATEGORY_SPECS[category][1], width, height)
            full = _rasterize(polygons, height, width)
            candidate = _visible_polygons(placed + [(category, polygons, full)])
            if candidate is not None:
                placed.append((category, polygons, full))
                finals = candidate
                break
        # An object that finds no valid place after the tries is left out of the image.
    for (category, _, _), (_, mask) in zip(placed, finals):
        ys, xs = np.nonzero(mask)
        texture = _texture(rng, category, xs.astype(np.float32), ys.astype(np.float32))
        pixels[ys, xs] = texture
    image = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return image, [(c, polys, mask) for (c, _, _), (polys, mask) in zip(placed, finals)]


def _visible_polygons(stack: List[Tuple[int, list, np.ndarray]]):
    """Final (polygons, mask) of every object of ``stack`` (bottom to top), or None if invalid.

    Works top-down: an object's visible region is its mask minus the final masks above it. An
    unoccluded object keeps its drawn polygons; an occluded one has its visible region traced into
    polygons, and the rasterised polygons become its final mask. A mask must not spill onto a mask
    above it, must keep enough of its area and must have no holes (COCO polygons cannot).
    """
    height, width = stack[0][2].shape
    occupied = np.zeros((height, width), dtype=bool)
    finals = []
    for _, polygons, full in reversed(stack):
        ys, xs = np.nonzero(full)
        y0, x0 = max(int(ys.min()) - 2, 0), max(int(xs.min()) - 2, 0)
        box = (slice(y0, int(ys.max()) + 3), slice(x0, int(xs.max()) + 3))
        min_area = max(_MIN_VISIBLE_PIXELS, _MIN_VISIBLE_FRACTION * len(ys))
        if not (full[box] & occupied[box]).any():
            mask = full
        else:
            visible = full[box] & ~occupied[box]
            if visible.sum() < min_area:
                return None
            if not np.array_equal(ndimage.binary_fill_holes(visible), visible):
                return None
            labels, num_parts = ndimage.label(visible)
            if num_parts > 1 and np.bincount(labels.ravel())[1:].min() < _MIN_PART_PIXELS:
                return None
            for _ in range(3):
                polygons = _trace_polygons(visible, x0, y0)
                mask = _rasterize(polygons, height, width) if polygons else occupied & False
                spill = (mask & occupied)[box]
                if not spill.any():
                    break
                # Move the outline off the spilled pixels and trace again.
                visible &= ~ndimage.binary_dilation(spill)
            else:
                return None
            if mask.sum() < min_area:
                return None
        occupied |= mask
        finals.append((polygons, mask))
    return finals[::-1]


def _trace_polygons(mask: np.ndarray, x0: int = 0, y0: int = 0) -> List[List[float]]:
    """COCO polygons ([x0, y0, x1, y1, ...]) outlining a hole-free mask whose corner is (x0, y0)."""
    padded = np.pad(mask.astype(np.float32), 1)
    polygons = []
    for contour in measure.find_contours(padded, 0.5):
        contour = measure.approximate_polygon(contour, tolerance=0.35)
        # find_contours gives (row, col) of pixel centres of the padded mask; COCO puts pixel
        # centres at +0.5, so the -1 of the padding and the +0.5 combine to -0.5.
        xy = np.round(contour[:, ::-1] + (x0 - 0.5, y0 - 0.5), 2)
        if len(xy) > 1 and np.array_equal(xy[0], xy[-1]):
            xy = xy[:-1]
        if len(xy) >= 3:
            polygons.append([float(v) for v in xy.ravel()])
    return polygons


def _rasterize(polygons: List[List[float]], height: int, width: int) -> np.ndarray:
    rles = mask_util.frPyObjects(polygons, height, width)
    return mask_util.decode(mask_util.merge(rles)).astype(bool)


def _shape_polygons(rng: np.random.Generator, shape: str, width: int, height: int) -> List[list]:
    """COCO polygons of one randomly scaled, rotated and placed shape, inside the image."""
    lo, hi = np.log(_OBJECT_SCALE_RANGE[0]), np.log(_OBJECT_SCALE_RANGE[1])
    radius = 0.5 * min(width, height) * float(np.exp(rng.uniform(lo, hi)))
    margin = radius + 2
    cx = float(rng.uniform(margin, width - margin))
    cy = float(rng.uniform(margin, height - margin))
    angle = float(rng.uniform(0, 2 * np.pi))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    xy = _unit_outline(shape, rng) * radius @ rot.T + (cx, cy)
    return [[float(v) for v in np.round(xy, 2).ravel()]]


def _regular(n: int, phase: float = 0.0, radii: Sequence[float] = (1.0,)) -> np.ndarray:
    t = phase + 2 * np.pi * np.arange(n) / n
    r = np.resize(np.asarray(radii, dtype=np.float64), n)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _unit_outline(shape: str, rng: np.random.Generator) -> np.ndarray:
    """(N, 2) outline of a shape of radius about 1 centred on the origin."""
    if shape == "circle":
        return _regular(40)
    if shape == "ellipse":
        return _regular(40) * (1.0, rng.uniform(0.45, 0.65))
    if shape == "square":
        return _regular(4, np.pi / 4) * 0.95
    if shape == "triangle":
        return _regular(3, -np.pi / 2) + (0, 0.2)
    if shape == "hexagon":
        return _regular(6)
    if shape == "star":
        return _regular(10, -np.pi / 2, radii=(1.0, 0.45))
    if shape == "cross":
        a, b = 1.0, 0.33
        quarter = np.array([[a, -b], [a, b], [b, b]])
        turn = np.array([[0.0, 1.0], [-1.0, 0.0]])  # 90 degrees
        return np.concatenate([quarter @ np.linalg.matrix_power(turn, k) for k in range(4)])
    if shape == "crescent":
        return _crescent(rng.uniform(0.35, 0.55), 0.85)
    raise ValueError(f"Unknown demo shape {shape!r}")


def _crescent(shift: float, inner: float, n: int = 24) -> np.ndarray:
    """Unit disc minus the disc of radius ``inner`` centred at (shift, 0), as one polygon."""
    x = (1 + shift**2 - inner**2) / (2 * shift)  # where the two circles cross
    theta = np.arccos(x)
    phi = np.arctan2(np.sin(theta), x - shift)
    outer = np.linspace(theta, 2 * np.pi - theta, 2 * n)
    back = np.linspace(2 * np.pi - phi, phi, n)[1:-1]
    return np.concatenate(
        [
            np.stack([np.cos(outer), np.sin(outer)], axis=1),
            np.stack([shift + inner * np.cos(back), inner * np.sin(back)], axis=1),
        ]
    )


def _texture(
    rng: np.random.Generator, category: int, xs: np.ndarray, ys: np.ndarray
) -> np.ndarray:
    """(N, 3) float colours of the category's colour and texture at the pixels (xs, ys)."""
    _, _, base, texture = CATEGORY_SPECS[category]
    colour = np.asarray(base, dtype=np.float32) * rng.uniform(0.8, 1.0) + rng.uniform(-18, 18, 3)
    dark = colour * rng.uniform(0.35, 0.55)
    period = float(rng.uniform(5.0, 9.0))
    ox, oy = rng.uniform(0, period, 2)
    x, y = xs + ox, ys + oy
    if texture == "solid":
        weight = np.zeros_like(xs)
    elif texture == "stripes":
        weight = ((y // (period / 2)) % 2).astype(np.float32)
    elif texture == "checker":
        weight = ((x // period + y // period) % 2).astype(np.float32)
    elif texture == "dots":
        dx, dy = (x % period) - period / 2, (y % period) - period / 2
        weight = (dx * dx + dy * dy < (0.3 * period) ** 2).astype(np.float32)
    elif texture == "rings":
        cx, cy = np.array([xs.mean(), ys.mean()]) + rng.uniform(-20, 20, 2)
        weight = ((np.hypot(xs - cx, ys - cy) // (period / 2)) % 2).astype(np.float32)
    elif texture == "grid":
        weight = (((x % period) < 1.6) | ((y % period) < 1.6)).astype(np.float32)
    elif texture == "speckle":
        weight = (rng.random(xs.shape) < 0.3).astype(np.float32)
    elif texture == "gradient":
        t = rng.uniform(0, 2 * np.pi)
        ramp = xs * np.cos(t) + ys * np.sin(t)
        weight = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    else:
        raise ValueError(f"Unknown demo texture {texture!r}")
    return colour * (1 - weight[:, None]) + dark * weight[:, None]
