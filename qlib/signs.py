"""Synthetic traffic signs drawn with Pillow, the study's offline default data source: what
each sign looks like.

Each of the 29 classes has a sign design in the style of the German/UK signs (shape,
colours, border, pictogram or text). ``face`` draws a clean sign once per class and size at
4x the target size, downsamples it to 2x and caches it; :mod:`qlib.scenes` puts it into
photographs. ``render_clean`` shows the sign itself.

Text uses matplotlib's bundled DejaVu Sans Bold, never a system font.
"""
from __future__ import annotations

import functools
import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

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
def face(cls: int, size: int) -> Image.Image:
    """Cached clean sign: drawn at 4*size, downsampled to 2*size, premultiplied alpha."""
    return _draw_sign(cls, 4 * size).convert("RGBa").resize((2 * size, 2 * size), Image.LANCZOS)


# ----------------------------------------------------------------------------- API
_LIMITS = {"cls": (0, NUM_CLASSES - 1), "n": (1, None), "n_per_class": (1, None),
           "size": (16, None), "seed": (0, None)}


def check_args(**args):
    """Raise a ValueError naming the argument, its value and the allowed range."""
    for name, v in args.items():
        lo, hi = _LIMITS[name]
        ok = isinstance(v, (int, np.integer)) and not isinstance(v, bool)
        if not ok or v < lo or (hi is not None and v > hi):
            allowed = f"in {lo}..{hi}" if hi is not None else f">= {lo}"
            raise ValueError(f"{name}={v!r}: expected an integer {allowed}")


def render_clean(cls: int, size: int = 64) -> np.ndarray:
    """The un-randomised sign of class ``cls``, centred on a neutral grey background."""
    check_args(cls=cls, size=size)
    canvas = Image.new("RGB", (2 * size, 2 * size), (160, 160, 160))
    sign = face(cls, size).resize((round(1.8 * size),) * 2, Image.LANCZOS).convert("RGBA")
    off = (2 * size - sign.size[0]) // 2
    canvas.paste(sign, (off, off), sign)
    return np.array(canvas.resize((size, size), Image.LANCZOS))
