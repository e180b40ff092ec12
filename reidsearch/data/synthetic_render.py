"""Appearance sampling and the vectorised renderer of synthetic person crops.

Why a module of its own: what a person, a camera and one shot look like, and how a batch of them
is painted into pixels, is independent of which on-disk layout the images are written in.
Identities differ in clothing colours, clothing pattern, front emblem, bags and body proportions;
cameras differ in colour cast, brightness, background, clutter, framing, blur and noise; every
image gets its own pose, viewpoint and occasional occluder.
"""

from __future__ import annotations

import numpy as np

from reidsearch.data.synthetic_layouts import Record

_PALETTE = np.array(
    [
        [200, 30, 35], [30, 60, 180], [35, 140, 60], [230, 200, 40], [25, 25, 30],
        [235, 235, 230], [130, 130, 135], [20, 30, 80], [110, 70, 40], [120, 40, 140],
        [240, 130, 30], [235, 130, 170], [190, 170, 120], [40, 160, 170],
    ],
    dtype=np.float32,
)  # fmt: skip
_SKIN = np.array(
    [[245, 205, 175], [225, 175, 140], [190, 135, 95], [140, 95, 65], [95, 65, 45]],
    dtype=np.float32,
)
_HAIR = np.array(
    [[20, 15, 10], [70, 45, 25], [150, 110, 60], [200, 180, 130], [120, 120, 120]], dtype=np.float32
)


# ----------------------------------------------------------------------------- appearance tables


def sample_persons(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Per-identity appearance: the cues that survive every camera and so can be learned."""

    def colour(size: int = n) -> np.ndarray:
        base = _PALETTE[rng.integers(0, len(_PALETTE), size)]
        return np.clip(base + rng.normal(0, 12, (size, 3)), 0, 255).astype(np.float32)

    return {
        "shirt": colour(),
        "shirt2": colour(),
        "pattern": rng.integers(0, 4, n),  # none, horizontal stripes, vertical stripes, checks
        "freq": rng.uniform(2.5, 6.0, n).astype(np.float32),
        "trousers": colour(),
        "shorts": rng.random(n) < 0.25,
        "long_sleeves": rng.random(n) < 0.6,
        "skin": _SKIN[rng.integers(0, len(_SKIN), n)],
        "hair": _HAIR[rng.integers(0, len(_HAIR), n)],
        "long_hair": rng.random(n) < 0.3,
        "shoes": colour(),
        "emblem": rng.random(n) < 0.5,
        "emblem_col": colour(),
        "bag": rng.integers(0, 3, n),  # none, backpack, side bag
        "bag_col": colour(),
        "height": rng.uniform(0.74, 0.92, n).astype(np.float32),
        "shoulder": rng.uniform(0.10, 0.17, n).astype(np.float32),
        "head": rng.uniform(0.055, 0.078, n).astype(np.float32),
        "leg": rng.uniform(0.42, 0.52, n).astype(np.float32),
    }


def sample_cameras(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Per-camera look, strong enough to dominate raw pixels (so untrained features fail)."""
    return {
        "gain": rng.uniform(0.6, 1.4, (n, 3)).astype(np.float32),
        "bright": rng.uniform(0.7, 1.2, n).astype(np.float32),
        "grad": rng.uniform(-0.35, 0.35, n).astype(np.float32),
        "bg": rng.uniform(40, 220, (n, 3)).astype(np.float32),
        "floor": rng.uniform(40, 200, (n, 3)).astype(np.float32),
        "horizon": rng.uniform(0.55, 0.85, n).astype(np.float32),
        "tex_amp": rng.uniform(0.05, 0.3, n).astype(np.float32),
        "tex_fx": rng.uniform(1.0, 8.0, n).astype(np.float32),
        "tex_fy": rng.uniform(1.0, 8.0, n).astype(np.float32),
        "pole_x": rng.uniform(0.0, 1.0, n).astype(np.float32),
        "pole_w": rng.uniform(0.0, 0.08, n).astype(np.float32),
        "pole_col": rng.uniform(20, 235, (n, 3)).astype(np.float32),
        "shift": rng.uniform(-0.12, 0.12, n).astype(np.float32),
        "scale": rng.uniform(0.85, 1.08, n).astype(np.float32),
        "view": rng.uniform(0, 2 * np.pi, n).astype(np.float32),
        "blur": rng.uniform(0.0, 1.0, n).astype(np.float32),
        "noise": rng.uniform(2.0, 12.0, n).astype(np.float32),
    }


def sample_jitter(
    rng: np.random.Generator, records: list[Record], cams: int, per_cam: int, angles: bool
) -> dict[str, np.ndarray]:
    """Per-image pose, framing and occluder, so no two shots of a person are alike."""
    n = len(records)
    k = np.array([r.k for r in records], dtype=np.float32)
    # latfpp: the k-th image of a camera is the k-th of `per_cam` angles around the person
    if angles:
        theta = 2 * np.pi * k / per_cam + rng.normal(0, 0.2, n)
    else:
        theta = rng.uniform(0, 2 * np.pi, n)
    junk = np.array([r.kind == "junk" for r in records])
    dx = rng.uniform(-0.05, 0.05, n) + junk * rng.choice([-0.45, 0.45], n)
    scale = rng.uniform(0.94, 1.06, n) * np.where(junk, rng.uniform(1.3, 1.8, n), 1.0)
    occ = rng.random(n) < 0.15
    return {
        "theta": theta.astype(np.float32),
        "dx": dx.astype(np.float32),
        "dy": rng.uniform(-0.02, 0.02, n).astype(np.float32),
        "scale": scale.astype(np.float32),
        "swing": rng.uniform(-0.04, 0.04, n).astype(np.float32),
        "spread": rng.uniform(0.0, 0.06, n).astype(np.float32),
        "bright": rng.uniform(0.88, 1.12, n).astype(np.float32),
        "bg_phase": rng.uniform(0, 2 * np.pi, n).astype(np.float32),
        "occ": occ,
        "occ_x": rng.uniform(-0.1, 0.9, n).astype(np.float32),
        "occ_w": rng.uniform(0.15, 0.35, n).astype(np.float32),
        "occ_top": rng.uniform(0.55, 0.85, n).astype(np.float32),
        "occ_col": rng.uniform(20, 235, (n, 3)).astype(np.float32),
    }


# ----------------------------------------------------------------------------- rendering


_PARTS = (
    "bg",
    "floor",
    "pole",
    "trousers",
    "skin",
    "shoes",
    "shirt",
    "shirt2",
    "emblem",
    "bag",
    "hair",
    "occluder",
)


def _box_blur(img: np.ndarray) -> np.ndarray:
    p = np.pad(img, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = img.shape[1:3]
    rows = p[:, :-2] + p[:, 1:-1] + p[:, 2:]
    return (rows[:, :, :-2, :] + rows[:, :, 1:-1, :] + rows[:, :, 2:, :])[:, :h, :w] / 9.0


def render(P: dict, C: dict, J: dict, noise: np.ndarray, height: int, width: int) -> np.ndarray:
    """Render B images; P, C, J hold per-image person, camera and jitter parameters.

    Parts are painted as small ints into a label map, then coloured with one gather: painting
    full-colour float images part by part is several times slower.
    """
    b = len(J["dx"])
    col = lambda a: a[:, None, None]  # noqa: E731  (B,) -> (B,1,1)
    aspect = width / height
    Y = ((np.arange(height, dtype=np.float32) + 0.5) / height)[None, :, None]
    X = ((np.arange(width, dtype=np.float32) + 0.5) / height)[None, None, :]
    Xn = X / aspect  # 0..1 across the image
    lab = np.zeros((b, height, width), dtype=np.uint8)

    def paint(mask: np.ndarray, part: str) -> None:
        np.copyto(lab, np.uint8(_PARTS.index(part)), where=mask)

    # background: a camera-coloured textured wall, a floor and a pole
    paint(Y > col(C["horizon"]), "floor")
    paint(np.abs(Xn - col(C["pole_x"])) < col(C["pole_w"]) / 2, "pole")

    # body coordinates: v goes 0 (top of head) -> 1 (feet), u is horizontal in body units
    s = col(P["height"] * C["scale"] * J["scale"])
    foot = 0.97 + col(J["dy"])
    cx = (0.5 + col(C["shift"] + J["dx"])) * aspect
    v = (Y - (foot - s)) / s
    u = (X - cx) / s
    au = np.abs(u)
    c = np.cos(J["theta"])
    sn = np.sin(J["theta"])
    wf = col(0.55 + 0.45 * np.abs(c))  # narrower when seen from the side
    sw = col(P["shoulder"]) * wf
    rh = col(P["head"])
    v0 = 2 * rh + 0.015
    hip = 1 - col(P["leg"])
    t = (v - v0) / (hip - v0)

    tl = (v - hip) / (1 - hip)
    leg_sep = sw * 0.45 + col(J["spread"]) * tl
    legs = (v >= hip) & (v < 1.0) & (np.abs(au - leg_sep) < sw * 0.42)
    shorts_cut = col(P["shorts"]) & (tl > 0.45)
    paint(legs & ~shorts_cut, "trousers")
    paint(legs & shorts_cut, "skin")
    paint(legs & (v > 0.955), "shoes")

    swing = col(J["swing"]) * np.sign(u) * np.clip(t, 0, 1)
    arm_u = au - swing
    arms = (v > v0 + 0.01) & (v < hip + 0.06) & (arm_u >= sw * 0.98) & (arm_u < sw + 0.045)
    sleeve = col(P["long_sleeves"]) | (t < 0.35)
    paint(arms & sleeve, "shirt")
    paint(arms & ~sleeve, "skin")

    torso = (v >= v0) & (v < hip) & (au < sw * (1 - 0.12 * t))
    pat = col(P["pattern"])
    f = col(P["freq"])
    hs = np.sin(2 * np.pi * f * t) > 0
    vs = np.sin(2 * np.pi * f * u / (2 * col(P["shoulder"]))) > 0
    second = ((pat == 1) & hs) | ((pat == 2) & vs) | ((pat == 3) & (hs ^ vs))
    paint(torso & ~second, "shirt")
    paint(torso & second, "shirt2")
    front = col(c > 0.3)
    paint(col(P["emblem"]) & front & (au < 0.045 * wf) & (t > 0.15) & (t < 0.4), "emblem")

    bag = col(P["bag"])
    bag_v = (t > 0.05) & (t < 0.6)
    side = np.sign(col(sn) + 1e-6) * u
    seen_back = col(c < -0.2) & (au < sw * 0.75)
    seen_side = col(np.abs(sn) > 0.5) & (side < -sw) & (side > -sw - 0.08)
    backpack = (bag == 1) & bag_v & (seen_back | seen_side)
    hand = np.sign(col(c) + 1e-6) * u
    sidebag = (
        (bag == 2) & (v > hip - 0.1) & (v < hip + 0.07) & (hand > sw * 0.5) & (hand < sw + 0.08)
    )
    paint(backpack | sidebag, "bag")

    neck = (au < rh * 0.35) & (v >= 1.6 * rh) & (v < v0 + 0.01)
    head = (u / (rh * 0.8)) ** 2 + ((v - rh) / rh) ** 2 < 1
    back = col(c < -0.2)
    hair = head & ((v < rh * 0.8) | back)
    long_hair = col(P["long_hair"]) & back & (v >= rh) & (v < v0 + 0.12) & (au < rh * 0.9)
    paint((head & ~hair) | neck, "skin")
    paint(hair | long_hair, "hair")

    occ = (
        col(J["occ"])
        & (Y > col(J["occ_top"]))
        & (np.abs(Xn - col(J["occ_x"])) < col(J["occ_w"]) / 2)
    )
    paint(occ, "occluder")

    colours = np.stack(
        [
            C["bg"],
            C["floor"],
            C["pole_col"],
            P["trousers"],
            P["skin"],
            P["shoes"],
            P["shirt"],
            P["shirt2"],
            P["emblem_col"],
            P["bag_col"],
            P["hair"],
            J["occ_col"],
        ],
        axis=1,
    ).astype(np.float32)
    img = colours[np.arange(b)[:, None, None], lab]  # (B,H,W,3)

    # wall texture, then the camera: colour cast, brightness, light gradient, blur, sensor noise
    phase = col(J["bg_phase"])
    tex = (
        col(C["tex_amp"])
        * np.sin(2 * np.pi * col(C["tex_fx"]) * Xn + phase)
        * np.sin(2 * np.pi * col(C["tex_fy"]) * Y)
    )
    light = col(C["bright"] * J["bright"]) * (1 + col(C["grad"]) * (Xn - 0.5))
    light = light * (1 + tex * (lab == 0))
    img *= light[..., None]
    img *= C["gain"][:, None, None, :]
    a = C["blur"][:, None, None, None]
    img = (1 - a) * img + a * _box_blur(img)
    img += noise * C["noise"][:, None, None, None]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
