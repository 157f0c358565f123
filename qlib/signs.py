"""Synthetic traffic signs drawn with Pillow: the study's offline default data source.

Each of the 29 classes has a sign design in the style of the German/UK signs (shape,
colours, border, pictogram or text). A clean sign is drawn once per class and size at
4x the target size, downsampled to 2x, and cached; every image then gets random
perspective, rotation, scale and position, a cluttered background, colour fading,
occlusion, blur, a lower capture resolution, lighting and Gaussian noise, and is
resized to ``size`` with antialiasing.

Images come in *tracks* of ``TRACK_LEN`` frames, like GTSRB: one physical sign
instance (same design jitter, background, lighting, occluder) seen from a slowly
approaching camera. A track's random generator is seeded from (seed, cls, track), so
results do not depend on generation order, and ``groups`` holds the track id of each
image, so a track-grouped split works on synthetic data exactly as on GTSRB.

Text uses matplotlib's bundled DejaVu Sans Bold, never a system font.
"""
from __future__ import annotations

import functools
import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

CLASS_NAMES = [
    "Road narrows on right", "Speed limit 50", "Attention please", "Beware of children",
    "Cycle route ahead warning", "Dangerous left curve ahead", "Dangerous right curve ahead",
    "End of all speed and passing limits", "Give way", "Go straight or turn right",
    "Go straight or turn left", "Keep left", "Keep right", "Left zig zag traffic", "No entry",
    "No overtaking", "Overtaking by trucks is prohibited", "Pedestrian crossing", "Roundabout",
    "Slippery road ahead", "Speed limit 20", "Speed limit 30", "Stop", "Straight ahead only",
    "Traffic signal", "Truck traffic is prohibited", "Turn left ahead", "Turn right ahead",
    "Uneven road",
]
NUM_CLASSES = len(CLASS_NAMES)
TRACK_LEN = 10  # frames per track (one physical sign instance)

RED, BLUE, WHITE = (200, 25, 35), (25, 75, 170), (245, 245, 240)
BLACK, GREY, AMBER, GREEN = (25, 25, 25), (90, 90, 90), (240, 170, 20), (30, 160, 70)


# ----------------------------------------------------------------------------- drawing
@functools.lru_cache(maxsize=None)
def _font(px: int) -> ImageFont.FreeTypeFont:
    import matplotlib
    path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans-Bold.ttf")
    return ImageFont.truetype(path, max(px, 1))


def _bez(p0, p1, p2, p3, n=16):
    """Points of a cubic Bezier curve."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    pts = ((1 - t) ** 3 * np.array(p0) + 3 * (1 - t) ** 2 * t * np.array(p1)
           + 3 * (1 - t) * t ** 2 * np.array(p2) + t ** 3 * np.array(p3))
    return [tuple(p) for p in pts]


class _Pen:
    """Draws in unit coordinates: (-1, -1) is the canvas' top-left, (1, 1) its bottom-right.

    ``place`` sets a local frame (centre, scale, horizontal mirror) for pictograms.
    """

    def __init__(self, img: Image.Image):
        self.draw, self.s = ImageDraw.Draw(img), img.size[0] / 2
        self.place()

    def place(self, cx=0.0, cy=0.0, k=1.0, mirror=False):
        self.cx, self.cy, self.k, self.mx = cx, cy, k, (-1 if mirror else 1)

    def p(self, x, y):
        return ((self.cx + self.k * self.mx * x + 1) * self.s, (self.cy + self.k * y + 1) * self.s)

    def w(self, t):
        return max(1, round(t * self.k * self.s))

    def poly(self, pts, fill):
        self.draw.polygon([self.p(*q) for q in pts], fill=fill)

    def rect(self, x0, y0, x1, y1, fill):
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], fill)

    def line(self, pts, width, fill):
        self.draw.line([self.p(*q) for q in pts], fill=fill, width=self.w(width), joint="curve")

    def disc(self, x, y, r, fill=None, outline=None, width=0.0):
        (x0, y0), (x1, y1) = self.p(x - r, y - r), self.p(x + r, y + r)
        self.draw.ellipse([min(x0, x1), y0, max(x0, x1), y1], fill=fill, outline=outline,
                          width=self.w(width) if width else 0)

    def arrow(self, pts, width, fill, head=2.0):
        """A thick polyline ending in a triangular head beyond its last point."""
        self.line(pts, width, fill)
        (x0, y0), (x1, y1) = pts[-2], pts[-1]
        d = math.hypot(x1 - x0, y1 - y0)
        ux, uy, hl, hw = (x1 - x0) / d, (y1 - y0) / d, head * width * 0.9, head * width * 0.8
        self.poly([(x1 + ux * hl, y1 + uy * hl), (x1 - uy * hw, y1 + ux * hw),
                   (x1 + uy * hw, y1 - ux * hw)], fill)

    def text(self, t, h, maxw, fill, x=0.0, y=0.0):
        """Text centred on (x, y), at most ``h`` high and ``maxw`` wide (local units)."""
        l, tp, r, b = self.draw.textbbox((0, 0), t, font=_font(100))
        px = int(100 * min(h * self.k * self.s / (b - tp), maxw * self.k * self.s / (r - l)))
        font = _font(px)
        l, tp, r, b = self.draw.textbbox((0, 0), t, font=font)
        cx, cy = self.p(x, y)
        self.draw.text((cx - (l + r) / 2, cy - (tp + b) / 2), t, font=font, fill=fill)


# Pictograms, drawn in the local frame [-1, 1]^2; "left" versions, mirrored for "right".
def _figure(pen, x, y, h, ink):
    """A walking person with feet at (x, y) and height h."""
    pen.disc(x + 0.05 * h, y - 0.88 * h, 0.11 * h, fill=ink)
    hip, sh = (x - 0.02 * h, y - 0.4 * h), (x + 0.03 * h, y - 0.72 * h)
    pen.line([sh, hip], 0.17 * h, ink)
    pen.line([(x + 0.25 * h, y), (x + 0.08 * h, y - 0.22 * h), hip, (x - 0.25 * h, y)], 0.12 * h, ink)
    pen.line([(x - 0.22 * h, y - 0.45 * h), sh, (x + 0.22 * h, y - 0.48 * h)], 0.09 * h, ink)


def _vehicle_rear(pen, x, y, w, ink, truck=False):
    """A car (or a box truck) seen from behind, wheels at y + 0.45 w."""
    if truck:
        pen.rect(x - 0.5 * w, y - 0.85 * w, x + 0.5 * w, y + 0.25 * w, ink)
        pen.rect(x - 0.38 * w, y - 0.72 * w, x + 0.38 * w, y - 0.55 * w, WHITE)
    else:
        pen.rect(x - 0.5 * w, y - 0.15 * w, x + 0.5 * w, y + 0.25 * w, ink)
        for c, a, b, t in ((ink, 0.4, 0.28, 0.55), (WHITE, 0.3, 0.22, 0.47)):  # cabin, window
            pen.poly([(x - a * w, y - 0.12 * w), (x - b * w, y - t * w), (x + b * w, y - t * w),
                      (x + a * w, y - 0.12 * w)], c)
    for sx in (-1, 1):
        pen.rect(x + sx * 0.46 * w, y + 0.2 * w, x + sx * 0.25 * w, y + 0.45 * w, ink)


def _truck_side(pen, ink):
    pen.rect(-0.9, -0.55, 0.3, 0.3, ink)
    pen.poly([(0.38, -0.3), (0.7, -0.3), (0.9, 0.0), (0.9, 0.3), (0.38, 0.3)], ink)
    pen.poly([(0.48, -0.22), (0.66, -0.22), (0.8, -0.02), (0.48, -0.02)], WHITE)
    for cx in (-0.6, -0.3, 0.62):
        pen.disc(cx, 0.38, 0.16, fill=ink, outline=WHITE, width=0.04)


def _narrows(pen, ink):
    pen.line([(-0.45, 0.9), (-0.45, -0.9)], 0.2, ink)
    pen.line([(0.45, 0.9), (0.45, 0.15), (0.1, -0.3), (0.1, -0.9)], 0.2, ink)


def _attention(pen, ink):
    pen.poly([(-0.16, -0.9), (0.16, -0.9), (0.08, 0.35), (-0.08, 0.35)], ink)
    pen.disc(0, 0.68, 0.15, fill=ink)


def _bicycle(pen, ink):
    for cx in (-0.55, 0.55):
        pen.disc(cx, 0.35, 0.38, outline=ink, width=0.1)
    r, c, s, h, f = (-0.55, 0.35), (0.0, 0.35), (-0.2, -0.2), (0.38, -0.2), (0.55, 0.35)
    pen.line([r, c, s, r], 0.09, ink)  # chain stay, seat tube, seat stay
    pen.line([(0.25, -0.45), h, f], 0.09, ink)  # handlebar, fork
    pen.line([s, h, c], 0.09, ink)
    pen.line([(-0.38, -0.3), (-0.05, -0.3)], 0.12, ink)  # saddle


def _zigzag(pen, ink):
    pts = (_bez((0.25, 0.95), (0.25, 0.45), (-0.35, 0.45), (-0.35, 0.05))
           + _bez((-0.35, 0.05), (-0.35, -0.3), (0.25, -0.25), (0.25, -0.55))[1:])
    pen.arrow(pts, 0.2, ink, 1.8)


def _end_limits(pen, ink):
    for o in np.arange(-2, 3) * 0.14 / math.sqrt(2):  # five diagonal stripes
        h = math.sqrt(0.8 ** 2 - 2 * o ** 2) * 0.95 / math.sqrt(2)
        pen.line([(o + h, o - h), (o - h, o + h)], 0.07, BLACK)


def _straight_or_left(pen, ink):
    pen.arrow([(0.2, 0.9), (0.2, -0.4)], 0.24, ink)
    pen.arrow(_bez((0.2, 0.45), (0.2, 0.05), (0.05, -0.05), (-0.35, -0.05), 8), 0.24, ink)


def _roundabout(pen, ink):
    for i in range(3):
        a = np.radians(np.linspace(90 + 120 * i + 15, 90 + 120 * i - 70, 10))
        pen.arrow(list(zip(0.55 * np.cos(a), 0.55 * np.sin(a))), 0.2, ink, 1.6)


def _slippery(pen, ink):
    pen.rect(-0.7, -0.45, 0.7, -0.05, ink)
    pen.poly([(-0.4, -0.4), (-0.25, -0.8), (0.3, -0.8), (0.45, -0.4)], ink)
    for dx in (-0.35, 0.35):
        pen.disc(1.2 * dx, -0.02, 0.17, fill=ink)
        pen.line(_bez((dx - 0.15, 0.25), (dx + 0.35, 0.45), (dx - 0.45, 0.6), (dx + 0.05, 0.95)),
                 0.09, ink)


def _traffic_light(pen, ink):
    pen.rect(-0.4, -0.95, 0.4, 0.95, BLACK)
    for y, c in ((-0.6, RED), (0.0, AMBER), (0.6, GREEN)):
        pen.disc(0, y, 0.26, fill=c)


def _bumps(pen, ink):
    x = np.linspace(-0.9, 0.9, 41)
    y = 0.45 - 0.6 * np.maximum(0, np.sin(np.pi * (np.abs(x) - 0.05) / 0.8)) * (np.abs(x) > 0.05)
    pen.poly(list(zip(x, y)) + [(0.9, 0.75), (-0.9, 0.75)], ink)


def _curve_left(pen, ink):
    pen.arrow(_bez((0.3, 0.9), (0.3, -0.15), (0.15, -0.45), (-0.35, -0.45)), 0.24, ink, 1.8)


def _keep_left(pen, ink):
    pen.arrow([(0.5, -0.5), (-0.1, 0.1)], 0.26, ink)


def _turn_left(pen, ink):
    pen.arrow([(0.3, 0.9)] + _bez((0.3, 0.1), (0.3, -0.25), (0.15, -0.3), (-0.3, -0.3), 10), 0.24, ink)


def _digits(t):
    return lambda pen, ink: pen.text(t, 1.0, 1.7, ink)


# (shape, pictogram(pen, ink) or None, mirror the pictogram), in CLASS_NAMES order
_DESIGNS = [
    ("warn", _narrows, False),  # Road narrows on right
    ("prohib", _digits("50"), False),
    ("warn", _attention, False),
    ("warn", lambda p, ink: [_figure(p, -0.35, 0.9, 1.75, ink), _figure(p, 0.42, 0.9, 1.3, ink)], False),
    ("warn", _bicycle, False),
    ("warn", _curve_left, False),
    ("warn", _curve_left, True),  # Dangerous right curve ahead
    ("end", _end_limits, False),
    ("giveway", None, False),
    ("blue", _straight_or_left, True),  # Go straight or turn right
    ("blue", _straight_or_left, False),
    ("blue", _keep_left, False),
    ("blue", _keep_left, True),  # Keep right
    ("warn", _zigzag, False),
    ("noentry", lambda p, ink: p.rect(-0.62, -0.16, 0.62, 0.16, WHITE), False),
    ("prohib", lambda p, ink: [_vehicle_rear(p, -0.45, 0.15, 0.75, RED),
                               _vehicle_rear(p, 0.45, 0.15, 0.75, BLACK)], False),  # No overtaking
    ("prohib", lambda p, ink: [_vehicle_rear(p, -0.45, 0.3, 0.75, RED, truck=True),
                               _vehicle_rear(p, 0.45, 0.3, 0.75, BLACK)], False),
    ("warn", lambda p, ink: _figure(p, 0.0, 0.95, 1.9, ink), False),  # Pedestrian crossing
    ("blue", _roundabout, False),
    ("warn", _slippery, False),
    ("prohib", _digits("20"), False),
    ("prohib", _digits("30"), False),
    ("stop", lambda p, ink: p.text("STOP", 0.55, 1.4, WHITE), False),
    ("blue", lambda p, ink: p.arrow([(0.0, 0.9), (0.0, -0.4)], 0.26, ink), False),  # Straight ahead
    ("rect", _traffic_light, False),
    ("prohib", _truck_side, False),  # Truck traffic is prohibited
    ("blue", _turn_left, False),
    ("blue", _turn_left, True),  # Turn right ahead
    ("warn", _bumps, False),  # Uneven road
]
_TRI = [(0.0, -0.94), (0.98, 0.78), (-0.98, 0.78)]


def _scaled(pts, k, c):
    return [(c[0] + k * (x - c[0]), c[1] + k * (y - c[1])) for x, y in pts]


def _draw_sign(cls: int, res: int) -> Image.Image:
    """The clean sign of class ``cls`` as an RGBA image of res x res, transparent outside."""
    shape, picto, mirror = _DESIGNS[cls]
    img, mask = Image.new("RGB", (res, res), WHITE), Image.new("L", (res, res), 0)
    pen, mpen = _Pen(img), _Pen(mask)
    ink, place = BLACK, (0.0, 0.0, 0.62)
    if shape in ("prohib", "end", "noentry", "blue"):
        mpen.disc(0, 0, 0.96, fill=255)
        outer, rim, inner = {"prohib": (RED, 0.75, WHITE), "end": (GREY, 0.91, WHITE),
                             "noentry": (RED, 0.0, RED), "blue": (WHITE, 0.92, BLUE)}[shape]
        pen.disc(0, 0, 0.96, fill=outer)
        pen.disc(0, 0, rim, fill=inner)
        if shape == "blue":
            ink, place = WHITE, (0.0, 0.0, 0.66)
        place = (0.0, 0.0, 1.0) if shape in ("end", "noentry") else place
    elif shape in ("warn", "giveway"):
        tri = _TRI if shape == "warn" else [(x, -y) for x, y in _TRI]
        c = (0.0, sum(y for _, y in tri) / 3)
        mpen.poly(tri, 255)
        pen.poly(tri, RED)
        pen.poly(_scaled(tri, 0.68 if shape == "warn" else 0.6, c), WHITE)
        place = (0.0, 0.2, 0.47) if shape == "warn" else place
    elif shape == "stop":
        octa = [(math.cos(a), math.sin(a)) for a in np.radians(22.5 + 45 * np.arange(8))]
        mpen.poly(_scaled(octa, 0.97, (0, 0)), 255)
        pen.poly(_scaled(octa, 0.97, (0, 0)), WHITE)
        pen.poly(_scaled(octa, 0.91, (0, 0)), RED)
        place = (0.0, 0.0, 1.0)
    else:  # "rect"
        mpen.rect(-0.62, -0.96, 0.62, 0.96, 255)
        pen.rect(-0.62, -0.96, 0.62, 0.96, BLACK)
        pen.rect(-0.56, -0.9, 0.56, 0.9, WHITE)
        place = (0.0, 0.0, 0.8)
    if picto is not None:
        pen.place(*place, mirror=mirror)
        picto(pen, ink)
    img.putalpha(mask)
    return img


@functools.lru_cache(maxsize=None)
def _sign(cls: int, size: int) -> Image.Image:
    """Cached clean sign: drawn at 4*size, downsampled to 2*size, premultiplied alpha."""
    return _draw_sign(cls, 4 * size).convert("RGBa").resize((2 * size, 2 * size), Image.LANCZOS)


# ----------------------------------------------------------------------------- randomisation
_LIMITS = {"cls": (0, NUM_CLASSES - 1), "n": (1, None), "n_per_class": (1, None),
           "size": (16, None), "seed": (0, None)}


def _check(**args):
    """Raise a ValueError naming the argument, its value and the allowed range."""
    for name, v in args.items():
        lo, hi = _LIMITS[name]
        ok = isinstance(v, (int, np.integer)) and not isinstance(v, bool)
        if not ok or v < lo or (hi is not None and v > hi):
            allowed = f"in {lo}..{hi}" if hi is not None else f">= {lo}"
            raise ValueError(f"{name}={v!r}: expected an integer {allowed}")


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
    sign = _sign(cls, size)
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
    _check(n_per_class=n_per_class, size=size, seed=seed)
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
    _check(cls=cls, n=n, size=size, seed=seed)
    return np.stack([_render_track(cls, t, 1, size, seed)[0] for t in range(n)])


def render_clean(cls: int, size: int = 64) -> np.ndarray:
    """The un-randomised sign of class ``cls``, centred on a neutral grey background."""
    _check(cls=cls, size=size)
    canvas = Image.new("RGB", (2 * size, 2 * size), (160, 160, 160))
    sign = _sign(cls, size).resize((round(1.8 * size),) * 2, Image.LANCZOS).convert("RGBA")
    off = (2 * size - sign.size[0]) // 2
    canvas.paste(sign, (off, off), sign)
    return np.array(canvas.resize((size, size), Image.LANCZOS))
