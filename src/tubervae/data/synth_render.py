"""One simulated tuber photo drawn from its factors (`render_tuber`), and the layers it is drawn on.

A photo is a lit conveyor belt, a soft contact shadow and a shaded tuber with its
skin texture and defects (greening, rot, black spots), plus sensor noise. The
factors (:mod:`.synth_factors`) fix what is scored; the image's own generator
supplies the rest (outline wobble, texture offsets, belt position, where each
defect sits).

Everything stays inside the pipeline's centre crop (288×288 around the image
centre for crop_fraction 0.6), and the tuber fills most of it, as in the thesis's
photos: |x| + length/2 · 1.06 ≤ 40 + 103.8 < 144. Defects are sized to survive a
32×32 downscale of that crop (9 px of photo per pixel): the smallest spot layout
is 3 spots of radius 10 px.

The belt, light field, noise and skin textures are deterministic (fixed seeds)
and built once per process (`warm_caches`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache

import numpy as np
from scipy.ndimage import gaussian_filter

from tubervae.data.synth_factors import spot_layout, validate_factors

WIDTH, HEIGHT = 640, 480
CROP_FRACTION = 0.6
CROP_SIDE = CROP_FRACTION * HEIGHT  # 288 px: the square the pipeline keeps

# Albedo colours (RGB, 0–255) before lighting.
_SKIN_PALE = np.array([214.0, 188.0, 128.0], dtype=np.float32)
_SKIN_RUSSET = np.array([158.0, 108.0, 64.0], dtype=np.float32)
_GREEN = np.array([104.0, 132.0, 52.0], dtype=np.float32)
_ROT = np.array([88.0, 54.0, 30.0], dtype=np.float32)
_SPOT = np.array([24.0, 20.0, 17.0], dtype=np.float32)
_BELT = np.array([58.0, 63.0, 70.0], dtype=np.float32)
_RAIL = np.array([150.0, 152.0, 155.0], dtype=np.float32)

_LIGHT = np.array([-0.42, -0.52, 0.74], dtype=np.float32)
_LIGHT /= np.linalg.norm(_LIGHT)
_HALF = _LIGHT + np.array([0.0, 0.0, 1.0], dtype=np.float32)
_HALF /= np.linalg.norm(_HALF)
_AMBIENT, _DIFFUSE, _SPECULAR = 0.28, 0.78, 0.10
_THICKNESS = 0.75  # tuber depth / width: how flat the shading ellipsoid is
_OUTLINE_MAX = 0.06  # the outline wobbles by at most ±6 % of the radius
_SHADOW_SHIFT = (12, 9)  # (down, right) px: the light comes from the upper left
_SHADOW_REACH = 1.12  # the shadow fades out at this many tuber radii (before the shift)
_MARGIN = 16  # px beyond the shadow's reach kept in the bounding box

_TABLE = 720  # angular resolution of the outline look-up tables
_BELT_PAD = 256  # the belt texture is wider than the frame: it moves between photos
_BELT_FRAMES = 8
_NOISE_PAD = 64
_SKIN_TEX = 640


# ------------------------------------------------------------ precomputed layers
# Deterministic constants (fixed seeds), built once per process: they carry the
# expensive smooth noise, so each photo only shifts and scales them.


@lru_cache(maxsize=1)
def _belt_texture() -> np.ndarray:
    """Conveyor albedo (H, W + pad, 3): woven noise, transverse ridges, steel rails."""
    rng = np.random.default_rng(20_201)
    h, w = HEIGHT, WIDTH + _BELT_PAD
    fine = gaussian_filter(rng.standard_normal((h, w)), 1.0)
    coarse = gaussian_filter(rng.standard_normal((h, w)), 14.0)
    fine /= fine.std()
    coarse /= coarse.std()
    xs = np.arange(w)
    ridges = 0.5 + 0.5 * np.cos(2 * np.pi * xs / 22.0)
    shade = 1.0 + 0.05 * fine + 0.06 * coarse - 0.07 * ridges[None, :] ** 4
    tex = shade[..., None] * _BELT
    ys = np.arange(h)[:, None]
    for top, bottom in ((0, 30), (h - 30, h)):  # rails, outside the centre crop
        band = (ys >= top) & (ys < bottom)
        tex = np.where(band[..., None], _RAIL * (0.93 + 0.03 * fine[..., None]), tex)
    for edge in (30, h - 31):  # the dark gap between rail and belt
        tex[edge - 1 : edge + 2] *= 0.45
    return tex.astype(np.float32)


@lru_cache(maxsize=1)
def _light_field() -> np.ndarray:
    """Illumination (H, W): brighter towards the upper left, vignetted corners."""
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    u = (xs - WIDTH / 2) / (WIDTH / 2)
    v = (ys - HEIGHT / 2) / (HEIGHT / 2)
    field = (1.0 - 0.10 * u - 0.08 * v) * (1.0 - 0.18 * (u**2 + v**2) / 2)
    return field.astype(np.float32)


@lru_cache(maxsize=1)
def _lit_belts() -> np.ndarray:
    """`_BELT_FRAMES` lit belt photos (k, H, W, 3): the belt stopped at different places.

    Lighting them once here leaves one multiply (brightness) per photo.
    """
    belt, light = _belt_texture(), _light_field()[..., None]
    shifts = np.linspace(0, _BELT_PAD, _BELT_FRAMES).astype(int)
    return np.stack([belt[:, s : s + WIDTH] * light for s in shifts]).astype(np.float32)


@lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """Sensor noise (σ ≈ 2.5 grey levels) plus the 0.5 that makes truncation round."""
    rng = np.random.default_rng(20_202)
    noise = 2.5 * rng.standard_normal((HEIGHT + _NOISE_PAD, WIDTH + _NOISE_PAD, 3)) + 0.5
    return noise.astype(np.float32)


@lru_cache(maxsize=1)
def _skin_texture() -> np.ndarray:
    """Skin albedo multiplier around 1: mottling, net-like russeting and lenticels."""
    rng = np.random.default_rng(20_203)
    s = _SKIN_TEX
    mottle = gaussian_filter(rng.standard_normal((s, s)), 6.0)
    grain = gaussian_filter(rng.standard_normal((s, s)), 1.2)
    lenticels = gaussian_filter((rng.random((s, s)) < 0.0035).astype(np.float64), 1.1)
    mottle /= mottle.std()
    grain /= grain.std()
    lenticels /= lenticels.max()
    tex = 1.0 + 0.06 * mottle + 0.05 * grain - 0.35 * np.clip(3 * lenticels, 0, 1)
    return tex.astype(np.float32)


@lru_cache(maxsize=1)
def _table_angles() -> np.ndarray:
    return np.linspace(-np.pi, np.pi, _TABLE, endpoint=False)


def warm_caches() -> None:
    """Build the simulator's lookup tables (lit belts, light field, noise bank, skin texture) now.

    The first photo of a process would otherwise pay for them; `generate` calls this before it
    forks its workers, so that they inherit the tables, and a benchmark calls it to keep the
    one-off cost out of its timing.
    """
    _lit_belts(), _light_field(), _noise_bank(), _skin_texture(), _table_angles()


# -------------------------------------------------------------------- rendering


def _wobble_table(rng: np.random.Generator, amplitude: float, orders=(2, 3, 4, 5)) -> np.ndarray:
    """Radius multiplier R(φ) on `_TABLE` angles: low-frequency radial perturbation."""
    phi = _table_angles()
    weights = rng.uniform(0.4, 1.0, len(orders)) / np.arange(1, len(orders) + 1)
    weights *= amplitude / weights.sum()
    phases = rng.uniform(0, 2 * np.pi, len(orders))
    r = np.ones_like(phi)
    for k, wgt, ph in zip(orders, weights, phases):
        r += wgt * np.cos(k * phi + ph)
    return r.astype(np.float32)


def _lookup(table: np.ndarray, angle: np.ndarray) -> np.ndarray:
    idx = ((angle + np.pi) * (_TABLE / (2 * np.pi))).astype(np.intp)
    np.clip(idx, 0, _TABLE - 1, out=idx)
    return table[idx]


def _blob(dx: np.ndarray, dy: np.ndarray, radius: float, wobble: np.ndarray, soft: float) -> np.ndarray:
    """Mask of an irregular disc, 1 inside, falling to 0 over `soft` px at the edge."""
    dist = np.sqrt(dx * dx + dy * dy)
    edge = radius * _lookup(wobble, np.arctan2(dy, dx))
    return np.clip((edge - dist) / soft + 0.5, 0.0, 1.0)


def _local_to_image(u: float, v: float, cos_t: float, sin_t: float) -> tuple[float, float]:
    return u * cos_t - v * sin_t, u * sin_t + v * cos_t


def _patch_centre(rng, a, b, cos_t, sin_t, reach=(0.25, 0.55)) -> tuple[float, float]:
    """A patch centre inside the tuber, off-centre (defects sit towards an end or side)."""
    ang = rng.uniform(0, 2 * np.pi)
    rad = rng.uniform(*reach)
    return _local_to_image(rad * a * math.cos(ang), rad * b * math.sin(ang), cos_t, sin_t)


def _spot_centres(rng, count, radius, a, b, cos_t, sin_t) -> list[tuple[float, float]]:
    """Spot centres on the tuber's face, as far apart as a few tries allow."""
    centres: list[tuple[float, float]] = []
    limit = max(0.2, 0.8 - 0.5 * radius / b)  # keep most of each spot on the tuber
    for _ in range(count):
        best, best_gap = (0.0, 0.0), -1.0
        for _attempt in range(24):
            ang = rng.uniform(0, 2 * np.pi)
            rad = limit * math.sqrt(rng.uniform())
            c = _local_to_image(rad * a * math.cos(ang), rad * b * math.sin(ang), cos_t, sin_t)
            gap = min((math.hypot(c[0] - o[0], c[1] - o[1]) for o in centres), default=math.inf)
            if gap > best_gap:
                best, best_gap = c, gap
            if gap > 2.3 * radius:
                break
        centres.append(best)
    return centres


def render_tuber(factors: Mapping[str, float], rng: np.random.Generator) -> np.ndarray:
    """Draw one 640×480 photo (uint8, (480, 640, 3)) of a tuber with the given factors.

    `rng` supplies what the factors leave open (outline wobble, texture offsets,
    where the defects sit), so one factor row can be drawn many ways.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    f = validate_factors(factors)
    belts, light, noise, skin = _lit_belts(), _light_field(), _noise_bank(), _skin_texture()

    # Draw every random number in a fixed order, so each layer is reproducible.
    belt_frame = int(rng.integers(0, _BELT_FRAMES))
    noise_dy, noise_dx = (int(v) for v in rng.integers(0, _NOISE_PAD + 1, 2))
    outline = _wobble_table(rng, _OUTLINE_MAX)
    a = 0.5 * f["size"] * CROP_SIDE  # semi-major axis, px
    b = a / f["elongation"]
    theta = math.radians(f["rotation"])
    cos_t, sin_t = math.cos(theta), math.sin(theta)
    cx, cy = WIDTH / 2 + f["x"], HEIGHT / 2 + f["y"]

    # The tuber, its defects and its shadow are drawn on a bounding box only,
    # channel-first so every per-pixel operation runs over long contiguous rows.
    half = int(math.ceil(a * (1 + _OUTLINE_MAX) * _SHADOW_REACH)) + max(_SHADOW_SHIFT) + _MARGIN
    x0, x1 = max(0, int(cx) - half), min(WIDTH, int(cx) + half + 1)
    y0, y1 = max(0, int(cy) - half), min(HEIGHT, int(cy) + half + 1)
    bh, bw = y1 - y0, x1 - x0
    tex_y, tex_x = (int(v) for v in rng.integers(0, _SKIN_TEX - 2 * half - 2, 2))

    # Unit-disc coordinates of the tuber (d < 1 inside).
    dx = (np.arange(x0, x1, dtype=np.float32) - np.float32(cx))[None, :]
    dy = (np.arange(y0, y1, dtype=np.float32) - np.float32(cy))[:, None]
    p = dx * np.float32(cos_t / a) + dy * np.float32(sin_t / a)
    q = dy * np.float32(cos_t / b) - dx * np.float32(sin_t / b)
    wob = _lookup(outline, np.arctan2(q, p))
    X, Y = p / wob, q / wob
    d2 = X * X + Y * Y
    d = np.sqrt(d2)
    dist_px = np.sqrt(dx * dx + dy * dy)
    alpha = np.clip(0.5 + dist_px * (1.0 - d) / np.maximum(d, 1e-3), 0.0, 1.0)

    # Lambertian shading of a flattened ellipsoid, darker towards the rim.
    Z = np.sqrt(np.clip(1.0 - d2, 0.0, 1.0))
    nxl, nyl, nz = X * np.float32(1 / a), Y * np.float32(1 / b), Z * np.float32(1 / (_THICKNESS * b))
    nx = nxl * np.float32(cos_t) - nyl * np.float32(sin_t)
    ny = nxl * np.float32(sin_t) + nyl * np.float32(cos_t)
    inv_norm = 1.0 / (np.sqrt(nx * nx + ny * ny + nz * nz) + 1e-12)
    lam = np.clip((nx * _LIGHT[0] + ny * _LIGHT[1] + nz * _LIGHT[2]) * inv_norm, 0.0, 1.0)
    spec = np.clip((nx * _HALF[0] + ny * _HALF[1] + nz * _HALF[2]) * inv_norm, 0.0, 1.0)
    for _ in range(5):
        spec *= spec  # ^32: a faint, tight highlight on the waxy skin
    shade = (_AMBIENT + _DIFFUSE * lam + _SPECULAR * spec) * (0.78 + 0.22 * np.sqrt(Z))

    # Skin albedo, (3, bh, bw).
    skin_colour = _SKIN_PALE + np.float32(f["tone"]) * (_SKIN_RUSSET - _SKIN_PALE)
    tex = skin[tex_y : tex_y + bh, tex_x : tex_x + bw]
    albedo = skin_colour[:, None, None] * tex

    if f["greening"] > 0:
        gx, gy = _patch_centre(rng, a, b, cos_t, sin_t)
        radius = math.sqrt(f["greening"] * a * b)
        mask = _blob(dx - gx, dy - gy, radius, _wobble_table(rng, 0.18), 0.35 * radius)
        albedo += (_GREEN[:, None, None] * tex - albedo) * (0.80 * mask)

    if f["rot"] > 0:
        rx, ry = _patch_centre(rng, a, b, cos_t, sin_t)
        radius = math.sqrt(f["rot"] * a * b)
        ox, oy = (int(v) for v in rng.integers(0, _SKIN_TEX - 2 * half - 2, 2))
        rot_tex = skin[oy : oy + bh, ox : ox + bw]
        mask = _blob(dx - rx, dy - ry, radius, _wobble_table(rng, 0.22), 0.12 * radius)
        mottled = _ROT[:, None, None] * (0.55 + 0.45 * rot_tex * rot_tex)
        albedo += (mottled - albedo) * (0.92 * mask)
        # Sunken: the patch floor is shaded and its rim casts a dark ring.
        ring = mask * (1.0 - mask) * 4.0
        shade *= 1.0 - 0.22 * mask - 0.30 * ring

    count, spot_r = spot_layout(f["spot_area"])
    if count:
        radii = spot_r * rng.uniform(0.85, 1.15, count)
        for (sx, sy), r in zip(_spot_centres(rng, count, spot_r, a, b, cos_t, sin_t), radii):
            # Each spot is drawn only on its own small box.
            ext = r * 1.25 + 2
            i0 = max(0, int(cy + sy - ext) - y0)
            i1 = min(bh, int(cy + sy + ext) + 2 - y0)
            j0 = max(0, int(cx + sx - ext) - x0)
            j1 = min(bw, int(cx + sx + ext) + 2 - x0)
            if i0 >= i1 or j0 >= j1:
                continue
            mask = _blob(dx[:, j0:j1] - sx, dy[i0:i1] - sy, r, _wobble_table(rng, 0.2), 1.6)
            sub = albedo[:, i0:i1, j0:j1]
            sub += (_SPOT[:, None, None] * tex[i0:i1, j0:j1] - sub) * (0.95 * mask)

    # Compose: lit belt, soft contact shadow, lit tuber, sensor noise.
    brightness = np.float32(f["brightness"])
    frame = belts[belt_frame] * brightness
    sdy, sdx = _SHADOW_SHIFT
    shadow = np.zeros((bh, bw), dtype=np.float32)
    shadow[sdy:, sdx:] = np.clip((_SHADOW_REACH - d[: bh - sdy, : bw - sdx]) / 0.3, 0.0, 1.0)
    keep = (1.0 - 0.55 * shadow) * (1.0 - alpha)
    tuber = albedo * (shade * light[y0:y1, x0:x1] * brightness * alpha)
    region = frame[y0:y1, x0:x1]
    region *= keep[..., None]
    region += tuber.transpose(1, 2, 0)
    frame += noise[noise_dy : noise_dy + HEIGHT, noise_dx : noise_dx + WIDTH]
    np.clip(frame, 0.0, 255.0, out=frame)
    return frame.astype(np.uint8)
