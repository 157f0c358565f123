"""Synthetic photographs of the signs of :mod:`qlib.signs`, in tracks like GTSRB's.

Every image gets random perspective, rotation, scale and position, a cluttered background,
colour fading, occlusion, blur, a lower capture resolution, lighting and Gaussian noise, and
is resized to ``size`` with antialiasing.

Images come in *tracks* of ``TRACK_LEN`` frames: one physical sign instance (same design
jitter, background, lighting, occluder) seen from a slowly approaching camera. A track's
random generator is seeded from (seed, cls, track), so results do not depend on generation
order, and ``groups`` holds the track id of each image, so a track-grouped split works on
synthetic data exactly as on GTSRB.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .signs import NUM_CLASSES, check_args, face

TRACK_LEN = 10  # frames per track (one physical sign instance)


# natural scene colours: sky, overcast, foliage, dark foliage, asphalt, concrete, brick, sand, night
_SCENE = np.array([(120, 160, 210), (190, 195, 200), (70, 110, 50), (35, 60, 30), (90, 90, 95),
                   (170, 165, 155), (150, 80, 60), (200, 180, 140), (25, 30, 40)], np.float32)


def _scene_colour(rng):
    if rng.random() < 0.15:  # a saturated distractor (a car, an advert, another sign)
        return rng.uniform(0, 255, 3)
    return _SCENE[rng.integers(len(_SCENE))] + rng.normal(0, 20, 3)


def _background(rng, b: int) -> np.ndarray:
    """A b x b float32 scene: gradient, random shapes (clutter) and a low-frequency texture."""
    c0, c1 = _scene_colour(rng), _scene_colour(rng)
    t = np.linspace(0, 1, b, dtype=np.float32)[:, None, None]
    img = Image.fromarray(np.broadcast_to(np.clip(c0 * (1 - t) + c1 * t, 0, 255), (b, b, 3)).astype(np.uint8))
    draw, style = ImageDraw.Draw(img), rng.integers(3)
    for _ in range(rng.integers(4, 14) if style else rng.integers(0, 4)):
        c = tuple(int(v) for v in np.clip(_scene_colour(rng), 0, 255))
        x0, y0, x1, y1 = (rng.uniform(-0.2, 1.2, 4) * b).tolist()
        kind = rng.integers(4)
        if kind == 0:
            draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=c)
        elif kind == 1:
            draw.ellipse([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=c)
        elif kind == 2:
            draw.line([x0, y0, x1, y1], fill=c, width=int(rng.integers(1, max(2, b // 10))))
        else:
            draw.polygon([tuple(p) for p in rng.uniform(-0.1, 1.1, (3, 2)) * b], fill=c)
    if rng.random() < 0.6:  # out of focus
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 3.0)))
    out = np.asarray(img, dtype=np.float32)
    if style == 2 or rng.random() < 0.4:  # foliage / wall texture, mostly luminance
        k = int(rng.integers(4, 32))
        tex = rng.normal(0, 1, (k, k, 1)) + rng.normal(0, 0.3, (k, k, 3))
        tex = Image.fromarray(np.clip(128 + 40 * tex, 0, 255).astype(np.uint8)).resize((b, b), Image.BILINEAR)
        out = out + (np.asarray(tex, np.float32) - 128) * rng.uniform(0.3, 1.0)
    return out


def _persp(dst, src):
    """PIL PERSPECTIVE coefficients mapping the output quad ``dst`` to the input quad ``src``."""
    a = []
    for (x, y), (u, v) in zip(dst, src):
        a += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
    return np.linalg.solve(np.array(a), np.array(src, dtype=float).ravel()).tolist()


def _render_track(cls: int, track: int, n: int, size: int, seed: int) -> np.ndarray:
    """n consecutive frames of one sign instance; frame i does not depend on n."""
    rng = np.random.default_rng([seed, cls, track])
    w, margin = 2 * size, size // 4
    sign = face(cls, size)
    src = [(0, 0), (w, 0), (w, w), (0, w)]
    # one physical sign instance, camera and light
    scale, grow = rng.uniform(0.5, 0.88), rng.uniform(0.0, 0.2)
    pos, drift = rng.uniform(-0.12, 0.12, 2), rng.normal(0, 0.008, 2)
    angle, corners = np.clip(rng.normal(0, 5), -12, 12), rng.uniform(-1, 1, (4, 2)) * rng.uniform(0, 0.12)
    fade, gain = rng.uniform(0, 0.35) ** 2, rng.normal(1, 0.06, 3)
    bright, contrast = math.exp(rng.uniform(math.log(0.35), math.log(1.3))), rng.uniform(0.45, 1.05)
    cast, shade = rng.normal(1, 0.07, 3), rng.uniform(-0.4, 0.4, 2)
    blur, res, sigma = rng.uniform(0, 0.9), rng.uniform(0.35, 1.0), rng.uniform(2, 14)
    occ = rng.random() < 0.35
    occ_kind, occ_dir, occ_r = rng.integers(4), rng.uniform(0, 2 * np.pi), rng.uniform(0.25, 0.55)
    occ_col = tuple(int(v) for v in rng.integers(0, 200, 3)) if occ_kind < 3 else (255, 255, 250)
    occ_poly = rng.uniform(-1, 1, (5, 2))
    bg = Image.fromarray(np.clip(_background(rng, w + 2 * margin), 0, 255).astype(np.uint8))
    bg_step = rng.uniform(-1.5, 1.5, 2)
    yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j].astype(np.float32)
    light = (1 + shade[0] * xx + shade[1] * yy)[..., None] * (bright * cast).astype(np.float32)
    # this instance's faded paint (premultiplied: fade towards a pale grey where alpha > 0)
    pm = np.asarray(sign, dtype=np.float32)
    pm[..., :3] = pm[..., :3] * (gain * (1 - fade)) + pm[..., 3:] * (fade * 190 / 255)
    sign = Image.frombytes("RGBa", sign.size, np.clip(pm, 0, 255).astype(np.uint8).tobytes())
    low = max(12, round(size * res))
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        s = min(0.97, scale * (1 + grow * i / TRACK_LEN) * rng.uniform(0.98, 1.02)) * w / 2
        c = w / 2 + (pos + drift * i + rng.normal(0, 0.006, 2)) * w
        a = np.radians(angle + rng.normal(0, 0.8))
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        unit = np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)]) + corners + rng.normal(0, 0.01, (4, 2))
        quad = c + s * unit @ rot.T
        warped = sign.transform((w, w), Image.PERSPECTIVE, _persp(quad, src), Image.BILINEAR)
        warped = warped.convert("RGBA")
        ox, oy = (int(v) for v in np.clip(np.round(margin + bg_step * i), 0, 2 * margin))
        img = bg.crop((ox, oy, ox + w, oy + w))
        img.paste(warped, (0, 0), warped)
        if occ:
            m = Image.new("L", (w, w), 0)
            d, oc = ImageDraw.Draw(m), c + s * (0.9 * np.array([np.cos(occ_dir), np.sin(occ_dir)])
                                                + rng.normal(0, 0.03, 2))
            r = occ_r * s
            if occ_kind == 0:  # a pole or branch crossing the sign
                e = 2 * w * np.array([np.cos(occ_dir + 1.3), np.sin(occ_dir + 1.3)])
                d.line([tuple(oc - e), tuple(oc + e)], fill=255, width=max(2, int(r * 0.8)))
            elif occ_kind == 1:  # foliage / sticker blob
                d.ellipse([oc[0] - r, oc[1] - r * 0.8, oc[0] + r, oc[1] + r * 0.8], fill=255)
            else:  # an irregular patch, or glare (white, soft)
                d.polygon([tuple(p) for p in oc + r * occ_poly], fill=190 if occ_kind == 3 else 255)
            if occ_kind == 3:
                m = m.filter(ImageFilter.GaussianBlur(r / 3))
            img.paste(occ_col, (0, 0), m)
        # capture: optics blur and a sensor of ``low`` pixels, then resized to ``size``
        img = img.resize((low, low), Image.LANCZOS)
        img = img.filter(ImageFilter.GaussianBlur((blur + rng.uniform(0, 0.3)) * low / size))
        if low != size:
            img = img.resize((size, size), Image.BILINEAR)
        x = np.asarray(img, dtype=np.float32)
        mean = x.mean()
        x = ((x - mean) * contrast + mean) * light * rng.uniform(0.93, 1.07)
        noise = rng.standard_normal((size, size, 4), dtype=np.float32) * sigma  # luma + chroma
        x += noise[..., :1] + 0.5 * noise[..., 1:]
        out[i] = np.clip(x, 0, 255).astype(np.uint8)
    return out


# ----------------------------------------------------------------------------- API
def generate(n_per_class: int, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``n_per_class`` images of each class, ordered by class, in tracks of ``TRACK_LEN``.

    Returns images uint8 [N, size, size, 3], labels int64 [N] and one group id per image,
    ``f"syn_{cls:05d}_{track:05d}"``: the images of a group show one sign instance.
    """
    check_args(n_per_class=n_per_class, size=size, seed=seed)
    n = NUM_CLASSES * n_per_class
    images = np.empty((n, size, size, 3), np.uint8)
    labels = np.repeat(np.arange(NUM_CLASSES, dtype=np.int64), n_per_class)
    groups, k = [], 0
    for cls in range(NUM_CLASSES):
        for track in range(math.ceil(n_per_class / TRACK_LEN)):
            m = min(TRACK_LEN, n_per_class - track * TRACK_LEN)
            images[k:k + m] = _render_track(cls, track, m, size, seed)
            groups += [f"syn_{cls:05d}_{track:05d}"] * m
            k += m
    return images, labels, groups


def variations(cls: int, n: int = 8, size: int = 64, seed: int = 0) -> np.ndarray:
    """n randomised renderings of class ``cls`` (the first frames of its first n tracks)."""
    check_args(cls=cls, n=n, size=size, seed=seed)
    return np.stack([_render_track(cls, t, 1, size, seed)[0] for t in range(n)])
