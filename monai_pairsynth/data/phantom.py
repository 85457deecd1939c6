"""Deterministic synthetic head-and-neck PET/CT/tumour-mask cases (the built-in phantom benchmark).

Every case is drawn from a seed. The anatomy is defined in physical millimetres (RAS: ``x`` towards the
patient's right-left axis, ``y`` anterior, ``z`` superior) and then sampled on a voxel grid, so a coarser
grid (``spatial_size=(64, 64), spacing=4.0``) shows the same anatomy over the same field of view at lower
resolution. A 2D case is the axial slice of the 3D case of the same seed that passes through the tumour.

Anatomy (ARCHITECTURE.md §6), with per-case random sizes, positions and intensities:

* body outline: an ellipse with low-order radial harmonics, subcutaneous fat (about -100 HU) over muscle
  (about 40 HU), a few inter-muscular fat planes;
* airway (-1000 HU) whose position, size and shape vary with the seed and along ``z``;
* cervical vertebra (cortex 800-1000 HU, marrow 350-550 HU, intervertebral discs along ``z``, spinal
  canal), mandible (cortical band with marrow, rami at upper levels), a skull and brain at the top of a
  volume;
* physiological FDG uptake that is *not* tumour: palatine tonsils and submandibular / parotid glands
  (bright blobs with SUV comparable to a tumour), reactive lymph nodes, the brain (SUV 6-10);
* the tumour: a union of 1-4 perturbed ellipsoids (main radius 4-25 mm, log-uniform) next to the
  airway, with weak CT contrast (+10..+25 HU over muscle), heterogeneous uptake (SUVmax 3-15 before
  blurring), sometimes a necrotic core; the mask is the tumour;
* CT: slight partial-volume blur and Gaussian noise (sigma 10-20 HU); PET: scanner blur (Gaussian,
  5-7 mm FWHM) and signal-dependent, spatially correlated noise.

Small faint tumours and hot tonsils/glands make the segmentation task non-trivial: a segmenter has to use
both the PET uptake and the CT context.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from enum import IntEnum
from typing import Any

import numpy as np
import torch
from monai.data import Dataset, MetaTensor
from monai.transforms import apply_transform
from scipy import ndimage

__all__ = ["PhantomDataset", "PhantomTissue", "make_phantom_case", "phantom_affine"]

DEFAULT_SIZE_2D = (128, 128)
DEFAULT_SIZE_3D = (128, 128, 64)


class PhantomTissue(IntEnum):
    """Tissue codes of the optional ``"tissue"`` map returned by :func:`make_phantom_case`."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    BONE = 3  # cortical bone: mandible, vertebral cortex and arch, skull
    MARROW = 4  # cancellous bone
    DISC = 5
    CORD = 6  # spinal canal / cord
    TONSIL = 7
    PAROTID = 8
    SUBMANDIBULAR = 9
    LYMPH_NODE = 10
    BRAIN = 11
    TUMOUR = 12
    NECROSIS = 13  # necrotic tumour core (part of the tumour mask)


#: tissues with physiological FDG uptake that are not tumour (the confounders of the benchmark)
PHYSIOLOGICAL_UPTAKE = (
    PhantomTissue.TONSIL,
    PhantomTissue.PAROTID,
    PhantomTissue.SUBMANDIBULAR,
    PhantomTissue.LYMPH_NODE,
    PhantomTissue.BRAIN,
)
#: tissues a tumour never replaces (it may grow into the airway and over a tonsil)
_NO_TUMOUR = (
    PhantomTissue.BONE,
    PhantomTissue.MARROW,
    PhantomTissue.DISC,
    PhantomTissue.CORD,
    PhantomTissue.BRAIN,
)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _draw_anatomy(seed: int) -> dict[str, Any]:
    """All geometric and intensity parameters of case ``seed``, in mm / HU / SUV (grid independent).

    The parts are drawn from one generator in a fixed order (body, vertebra, airway, mandible, glands and
    nodes, brain, acquisition, tumour): changing that order, or a draw, changes every phantom case, and the
    shipped demo checkpoint was trained on these draws (``tests/data/test_phantom.py`` pins them).
    """
    rng = np.random.default_rng([seed, 0])
    p: dict[str, Any] = {}
    _draw_body(rng, p)
    _draw_vertebra(rng, p)
    _draw_airway(rng, p)
    _draw_mandible(rng, p)
    _draw_glands_and_nodes(rng, p)
    p["brain"] = {
        "z": _u(rng, 40, 52),
        "suv": _u(rng, 6, 10),
        "hu": _u(rng, 30, 40),
        "skull_t": _u(rng, 5, 8),
    }
    # PET/CT acquisition
    p["pet_fwhm"] = _u(rng, 5, 7)
    p["pet_noise"] = _u(rng, 0.08, 0.18)
    p["ct_noise"] = _u(rng, 10, 20)
    _draw_tumour(rng, p)
    return p


def _draw_body(rng: np.random.Generator, p: dict[str, Any]) -> None:
    """Body outline, fat and muscle, the inter-muscular fat planes."""
    p["body_c"] = (_u(rng, -12, 12), _u(rng, -10, 10))
    p["body_ab"] = (_u(rng, 60, 74), _u(rng, 54, 66))
    p["body_harm"] = [(k, _u(rng, 0.0, 0.035), _u(rng, 0, 2 * math.pi)) for k in (2, 3, 4, 5)]
    p["fat_t"] = _u(rng, 4, 11)
    p["hu_fat"], p["hu_muscle"] = _u(rng, -115, -85), _u(rng, 35, 50)
    p["suv_fat"], p["suv_muscle"] = _u(rng, 0.25, 0.45), _u(rng, 0.55, 1.0)
    cx, cy = p["body_c"]
    a0, b0 = p["body_ab"]
    # inter-muscular fat planes: thin ellipsoids elongated along z
    p["fat_blobs"] = [
        (
            (cx + _u(rng, -0.6, 0.6) * a0, cy + _u(rng, -0.6, 0.3) * b0, _u(rng, -50, 30)),
            (_u(rng, 1.5, 4.0), _u(rng, 4.0, 12.0), _u(rng, 15, 40)),
            _u(rng, 0, math.pi),
        )
        for _ in range(int(rng.integers(4, 10)))
    ]


def _draw_vertebra(rng: np.random.Generator, p: dict[str, Any]) -> None:
    """The cervical vertebra behind the body centre: body, spinal canal, discs along ``z``."""
    cx, cy = p["body_c"]
    b0 = p["body_ab"][1]
    vb = (_u(rng, 8, 11), _u(rng, 7, 9))
    vx, vy = cx + _u(rng, -3, 3), cy - b0 * _u(rng, 0.28, 0.38)
    canal_r = _u(rng, 6, 7.5)
    p["vert"] = {
        "c": (vx, vy),
        "ab": vb,
        "canal_c": (vx, vy - vb[1] - canal_r - 1.5),
        "canal_r": canal_r,
        "disc_period": _u(rng, 15, 18),
        "disc_phase": _u(rng, 0, 18),
        "disc_t": _u(rng, 3, 5),
        "hu_cortex": _u(rng, 800, 1000),
        "hu_marrow": _u(rng, 350, 550),
        "suv_marrow": _u(rng, 1.0, 1.8),
        "hu_disc": _u(rng, 80, 110),
    }


def _draw_airway(rng: np.random.Generator, p: dict[str, Any]) -> None:
    """The airway in front of the vertebra, drifting along ``z``."""
    vx, vy = p["vert"]["c"]
    vb = p["vert"]["ab"]
    air_ab = (_u(rng, 6, 13), _u(rng, 4, 9))
    ay = vy + vb[1] + _u(rng, 5, 11) + air_ab[1]
    p["airway"] = {
        "c": (vx + _u(rng, -4, 4), ay),
        "ab": air_ab,
        "angle": _u(rng, -0.3, 0.3),
        "drift": (_u(rng, 1, 4), _u(rng, 0, 2 * math.pi), _u(rng, 0.15, 0.35), _u(rng, 0, 2 * math.pi)),
    }


def _draw_mandible(rng: np.random.Generator, p: dict[str, Any]) -> None:
    """The mandible: a cortical band with marrow in front of the airway, rami at upper levels."""
    cx, cy = p["body_c"]
    a0, b0 = p["body_ab"]
    my = p["airway"]["c"][1] + _u(rng, -2, 6)
    p["mandible"] = {
        "c": (cx + _u(rng, -3, 3), my),
        "ab": (a0 * _u(rng, 0.5, 0.62), (cy + b0 - my) - _u(rng, 9, 15)),
        "t": _u(rng, 5, 7),
        "z": (_u(rng, -32, -20), _u(rng, 18, 30)),
        "z_ramus": _u(rng, -8, 2),
        "hu_cortex": _u(rng, 850, 1000),
        "hu_marrow": _u(rng, 350, 550),
    }


def _draw_glands_and_nodes(rng: np.random.Generator, p: dict[str, Any]) -> None:
    """Tonsils and parotid / submandibular glands (paired, each side its own size and uptake), lymph nodes."""
    cx = p["body_c"][0]
    a0 = p["body_ab"][0]
    vy = p["vert"]["c"][1]
    air_ab = p["airway"]["ab"]
    ax_, ay_ = p["airway"]["c"]
    p["tonsils"] = [
        {
            "c": (ax_ + side * (air_ab[0] + _u(rng, 3, 7)), ay_ + _u(rng, -4, 4), _u(rng, 0, 6)),
            "r": (_u(rng, 5, 9), _u(rng, 5, 9), _u(rng, 12, 17)),
            "suv": _u(rng, 2.5, 7.5),
            "hu": _u(rng, 40, 55),
        }
        for side in (-1, 1)
    ]
    p["parotids"] = [
        {
            "c": (cx + side * a0 * _u(rng, 0.62, 0.74), vy + _u(rng, 4, 14), _u(rng, 18, 24)),
            "r": (_u(rng, 8, 12), _u(rng, 10, 14), _u(rng, 20, 26)),
            "suv": _u(rng, 1.6, 3.8),
            "hu": _u(rng, -25, 10),
        }
        for side in (-1, 1)
    ]
    p["submandibular"] = [
        {
            "c": (cx + side * a0 * _u(rng, 0.4, 0.55), ay_ + _u(rng, 14, 24), _u(rng, -24, -16)),
            "r": (_u(rng, 7, 11), _u(rng, 7, 10), _u(rng, 18, 24)),
            "suv": _u(rng, 1.6, 4.0),
            "hu": _u(rng, 40, 55),
        }
        for side in (-1, 1)
    ]
    p["nodes"] = [
        {
            "c": (
                cx + (1 if rng.random() < 0.5 else -1) * _u(rng, 25, 45),
                vy + _u(rng, 5, 25),
                _u(rng, -40, 20),
            ),
            "r": (_u(rng, 3, 6), _u(rng, 3, 6), _u(rng, 4, 9)),
            "suv": _u(rng, 1.0, 2.5),
            "hu": _u(rng, 30, 45),
        }
        for _ in range(int(rng.integers(0, 5)))
    ]


def _draw_tumour(rng: np.random.Generator, p: dict[str, Any]) -> None:
    """The tumour (its centre retried until it lies in soft tissue next to the airway) and the 2D slice."""
    air_ab = p["airway"]["ab"]
    ax_, ay_ = p["airway"]["c"]
    air_r = 0.5 * (air_ab[0] + air_ab[1])
    for _ in range(64):
        phi = _u(rng, 0, 2 * math.pi)
        dist = air_r + _u(rng, 0, 14)
        r = math.exp(_u(rng, math.log(4.0), math.log(25.0)))
        tz = _u(rng, -20, 12)
        centre = (ax_ + dist * math.cos(phi), ay_ + dist * math.sin(phi), tz)
        tissue, *_ = _paint(p, *[np.full((1, 1, 1), v, dtype=np.float64) for v in centre])
        if int(tissue.ravel()[0]) in (PhantomTissue.MUSCLE, PhantomTissue.FAT, PhantomTissue.TONSIL):
            break
    blobs = [(centre, tuple(r * _u(rng, 0.75, 1.25) for _ in range(3)), _u(rng, 0, math.pi))]
    for _ in range(int(rng.integers(0, 4))):
        d = rng.normal(size=3)
        d = d / (np.linalg.norm(d) + 1e-9) * r * _u(rng, 0.4, 0.9)
        blobs.append(
            (
                tuple(float(c + o) for c, o in zip(centre, d)),
                tuple(r * _u(rng, 0.3, 0.65) for _ in range(3)),
                0.0,
            )
        )
    p["tumour"] = {
        "blobs": blobs,
        "r": r,
        "harm": [(k, _u(rng, 0.0, 0.12), _u(rng, 0, 2 * math.pi)) for k in (2, 3, 4)],
        "hu_delta": _u(rng, 10, 25),
        "suvmax": math.exp(_u(rng, math.log(3.0), math.log(15.0))),
        "necrosis": _u(rng, 0.35, 0.6) if (r > 10 and rng.random() < 0.4) else 0.0,
        "suv_necrosis": _u(rng, 0.6, 1.5),
    }
    # the 2D case is the axial slice through the main tumour blob
    p["z_slice"] = tz + _u(rng, -0.35, 0.35) * blobs[0][1][2]


def _ellipsoid(X, Y, Z, c, r, angle: float = 0.0):
    """Squared normalised distance to an ellipsoid rotated by ``angle`` about ``z`` (< 1 inside)."""
    dx, dy, dz = X - c[0], Y - c[1], Z - c[2]
    if angle:
        ca, sa = math.cos(angle), math.sin(angle)
        dx, dy = ca * dx + sa * dy, -sa * dx + ca * dy
    return (dx / r[0]) ** 2 + (dy / r[1]) ** 2 + (dz / r[2]) ** 2


def _paint(p: dict[str, Any], X, Y, Z):
    """Tissue codes, noise-free CT (HU), pre-blur PET (SUV) and the main tumour radius field on a grid.

    ``X, Y, Z`` broadcast to the output shape ``(H, W, D)`` (coordinates in mm).
    """
    shape = np.broadcast_shapes(X.shape, Y.shape, Z.shape)
    tissue = np.full(shape, PhantomTissue.MUSCLE, dtype=np.int8)
    ct = np.full(shape, p["hu_muscle"], dtype=np.float32)
    pet = np.full(shape, p["suv_muscle"], dtype=np.float32)

    def paint(mask, code, hu, suv):
        tissue[mask] = code
        ct[mask] = hu
        pet[mask] = suv

    cx, cy = p["body_c"]
    a0, b0 = p["body_ab"]
    scale = 1.0 + 0.07 * np.tanh((Z - 5.0) / 25.0)
    u, v = (X - cx) / (a0 * scale), (Y - cy) / (b0 * scale)
    rho, theta = np.sqrt(u**2 + v**2), np.arctan2(v, u)
    edge = 1.0 + sum(amp * np.cos(k * theta + ph) for k, amp, ph in p["body_harm"])
    r_mean = 0.5 * (a0 + b0) * scale
    body = rho < edge
    paint(rho > edge * (1.0 - p["fat_t"] / r_mean), PhantomTissue.FAT, p["hu_fat"], p["suv_fat"])
    for c, r, ang in p["fat_blobs"]:
        paint(_ellipsoid(X, Y, Z, c, r, ang) < 1, PhantomTissue.FAT, p["hu_fat"], p["suv_fat"])

    brain = p["brain"]
    below_skull = brain["z"] - 8.0
    for node in p["nodes"]:
        paint(
            _ellipsoid(X, Y, Z, node["c"], node["r"]) < 1, PhantomTissue.LYMPH_NODE, node["hu"], node["suv"]
        )
    for name, code in (("parotids", PhantomTissue.PAROTID), ("submandibular", PhantomTissue.SUBMANDIBULAR)):
        for g in p[name]:
            paint(_ellipsoid(X, Y, Z, g["c"], g["r"]) < 1, code, g["hu"], g["suv"])
    for t in p["tonsils"]:
        paint(_ellipsoid(X, Y, Z, t["c"], t["r"]) < 1, PhantomTissue.TONSIL, t["hu"], t["suv"])

    # airway: drifts and breathes along z
    aw = p["airway"]
    amp, ph, size_amp, size_ph = aw["drift"]
    shift = amp * np.sin(Z / 20.0 + ph)  # lateral drift of the airway centre along z
    s = 1.0 + size_amp * np.sin(Z / 15.0 + size_ph)
    in_plane = _ellipsoid(
        X - shift, Y, 0.0 * Z, (*aw["c"], 0.0), (aw["ab"][0] * s, aw["ab"][1] * s, 1.0), aw["angle"]
    )
    airway = (in_plane < 1) & (Z < below_skull - 4.0)
    paint(airway, PhantomTissue.AIR, -1000.0, 0.0)

    # vertebra: body (cortex + marrow, discs), canal with cord, arch, spinous and transverse processes
    vt = p["vert"]
    spine = Z < below_skull
    (vx, vy), (va, vb) = vt["c"], vt["ab"]
    zero = 0.0 * Z
    vbody = _ellipsoid(X, Y, zero, (vx, vy, 0.0), (va, vb, 1.0))
    disc = ((Z - vt["disc_phase"]) % vt["disc_period"]) < vt["disc_t"]
    canal = _ellipsoid(X, Y, zero, (*vt["canal_c"], 0.0), (vt["canal_r"],) * 2 + (1.0,))
    ccx, ccy = vt["canal_c"]
    cr = vt["canal_r"]
    arch = (canal < ((cr + 3.0) / cr) ** 2) & (Y < ccy + 0.4 * cr)
    arch |= _ellipsoid(X, Y, zero, (ccx, ccy - cr - 7.0, 0.0), (2.5, 9.0, 1.0)) < 1
    for side in (-1, 1):
        arch |= _ellipsoid(X, Y, zero, (vx + side * (va + 5.0), vy - 2.0, 0.0), (6.0, 3.0, 1.0)) < 1
    paint(arch & spine, PhantomTissue.BONE, vt["hu_cortex"], 0.4)
    paint((vbody < 1) & spine, PhantomTissue.BONE, vt["hu_cortex"], 0.5)
    paint((vbody < 0.6) & spine, PhantomTissue.MARROW, vt["hu_marrow"], vt["suv_marrow"])
    paint((vbody < 1) & spine & disc, PhantomTissue.DISC, vt["hu_disc"], 0.5)
    paint((canal < 1) & spine, PhantomTissue.CORD, 25.0, 1.2)

    # mandible: below z_ramus the body (an anterior U-shaped cortical arc), above it only the two rami
    md = p["mandible"]
    (mx, my), (ma, mb) = md["c"], md["ab"]
    rho_m = np.sqrt(((X - mx) / ma) ** 2 + ((Y - my) / mb) ** 2)
    dist_m = np.abs(rho_m - 1.0) * 0.5 * (ma + mb)
    in_z = (Z > md["z"][0]) & (Z < md["z"][1])
    body_part = (Y > my + 0.1 * mb) & (Z <= md["z_ramus"])
    rami = (Y > my - 0.45 * mb) & (Y < my + 0.3 * mb) & (Z > md["z_ramus"])
    arc = in_z & (body_part | rami)
    paint(arc & (dist_m < md["t"] / 2), PhantomTissue.BONE, md["hu_cortex"], 0.4)
    paint(arc & (dist_m < md["t"] / 6), PhantomTissue.MARROW, md["hu_marrow"], 0.9)

    # skull and brain at the top of a volume
    grow = np.sqrt(np.clip((Z - brain["z"]) / 8.0, 0.0, 1.0))
    grow_skull = np.sqrt(np.clip((Z - brain["z"] + 5.0) / 8.0, 0.0, 1.0))
    inner = edge * (1.0 - p["fat_t"] / r_mean)
    skull = rho < inner * grow_skull
    brain_mask = rho < (inner - brain["skull_t"] / r_mean) * grow
    paint(skull, PhantomTissue.BONE, 950.0, 0.4)
    paint(brain_mask, PhantomTissue.BRAIN, brain["hu"], brain["suv"])

    # tumour: union of ellipsoids, the main one with a harmonic perturbation of its boundary
    d0 = np.full(shape, np.inf)
    if "tumour" in p:  # absent while the tumour position is being drawn
        tm = p["tumour"]
        (c0, r0, ang0), *satellites = tm["blobs"]
        d0 = _ellipsoid(X, Y, Z, c0, r0, ang0)
        phi = np.arctan2(Y - c0[1], X - c0[0])
        bound = 1.0 + sum(amp * np.cos(k * phi + ph) for k, amp, ph in tm["harm"])
        tumour = d0 < bound**2
        for c, r, ang in satellites:
            tumour |= _ellipsoid(X, Y, Z, c, r, ang) < 1
        tumour &= ~np.isin(tissue, [int(t) for t in _NO_TUMOUR])
        hu = p["hu_muscle"] + tm["hu_delta"]
        paint(tumour, PhantomTissue.TUMOUR, hu, tm["suvmax"])
        if tm["necrosis"] > 0:
            paint(tumour & (d0 < tm["necrosis"] ** 2), PhantomTissue.NECROSIS, hu - 20.0, tm["suv_necrosis"])

    outside = ~body
    paint(outside, PhantomTissue.AIR, -1000.0, 0.0)
    return tissue, ct, pet, np.sqrt(d0)


def phantom_affine(
    spatial_size: Sequence[int], spacing: float, offset: Sequence[float] = (0.0, 0.0, 0.0)
) -> torch.Tensor:
    """The 4×4 RAS affine of a phantom grid: isotropic ``spacing`` (mm), field of view centred on ``offset``.

    For a 2D grid ``offset[2]`` is the ``z`` position (mm) of the axial slice.

    Example:
        >>> phantom_affine((4, 4), 2.0)[:3, 3].tolist()
        [-3.0, -3.0, 0.0]
    """
    affine = torch.eye(4, dtype=torch.float64)
    offset = list(offset) + [0.0] * (3 - len(offset))
    for i in range(3):
        affine[i, i] = spacing
        n = spatial_size[i] if i < len(spatial_size) else 1
        affine[i, 3] = offset[i] - (n - 1) / 2.0 * spacing
    return affine


def _smooth_noise(rng: np.random.Generator, shape, sigma_vox) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="reflect")
    std = float(field.std())
    return field / std if std > 0 else field


def _validate_grid(
    spatial_dims: int, spatial_size: Sequence[int] | None, spacing: float
) -> tuple[tuple[int, ...], float]:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}.")
    if spatial_size is None:
        spatial_size = DEFAULT_SIZE_2D if spatial_dims == 2 else DEFAULT_SIZE_3D
    size = tuple(int(s) for s in spatial_size)
    if len(size) != spatial_dims or min(size) < 1:
        raise ValueError(
            f"spatial_size must be {spatial_dims} positive ints for spatial_dims={spatial_dims}, got {tuple(spatial_size)}."
        )
    if (
        isinstance(spacing, bool)
        or not isinstance(spacing, (int, float))
        or not math.isfinite(spacing)
        or spacing <= 0
    ):
        raise ValueError(f"spacing must be a positive number of mm, got {spacing!r}.")
    return size, float(spacing)


def make_phantom_case(
    seed: int,
    spatial_dims: int = 2,
    spatial_size: Sequence[int] | None = None,
    spacing: float = 2.0,
    grid_offset: Sequence[float] | None = None,
    noise: bool = True,
    return_tissue: bool = False,
) -> dict[str, Any]:
    """Make one synthetic head-and-neck PET/CT/tumour case, fully determined by ``seed``.

    Args:
        seed: non-negative integer; the same seed gives the same arrays (for the same grid).
        spatial_dims: 2 (the axial slice through the tumour; always contains tumour) or 3 (a volume,
            ``z`` from inferior to superior, brain at the top).
        spatial_size: grid size ``(H, W)`` or ``(H, W, D)``; default ``(128, 128)`` / ``(128, 128, 64)``.
        spacing: isotropic voxel size in mm. The anatomy is in mm, so ``spatial_size=(64, 64),
            spacing=4.0`` shows the same field of view as the 2 mm default.
        grid_offset: shift (mm) of the centre of the field of view, ``(x, y)`` or ``(x, y, z)``; lets a
            second modality be sampled on another grid (e.g. PET on a 4 mm grid with its own origin).
        noise: add CT/PET noise (the PET scanner blur is always applied).
        return_tissue: also return ``"tissue"``, the :class:`PhantomTissue` code of every voxel.

    Returns:
        ``{"ct": HU, "pet": SUV, "label": {0, 1}, "seed": int, "case_id": "PHANTOM-0007"}`` where the images
        are float32 :class:`~monai.data.MetaTensor` of shape ``(1, H, W[, D])`` with a RAS affine
        (``spacing`` on the diagonal; for 2D the translation's ``z`` is the slice position).

    Example:
        >>> case = make_phantom_case(7, spatial_size=(64, 64), spacing=4.0)
        >>> case["case_id"], tuple(case["ct"].shape), case["pet"].pixdim.tolist()
        ('PHANTOM-0007', (1, 64, 64), [4.0, 4.0])
        >>> bool(case["label"].sum() > 0), sorted(case["label"].unique().tolist())
        (True, [0.0, 1.0])
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
    spatial_size, spacing = _validate_grid(spatial_dims, spatial_size, spacing)
    seed = int(seed)
    p = _draw_anatomy(seed)
    offset = [0.0, 0.0, 0.0]
    if grid_offset is not None:
        if len(grid_offset) not in (2, 3):
            raise ValueError(f"grid_offset must have 2 or 3 values (mm), got {grid_offset!r}.")
        offset[: len(grid_offset)] = [float(o) for o in grid_offset]
    if spatial_dims == 2:
        offset[2] = p["z_slice"] + (offset[2] if grid_offset is not None and len(grid_offset) == 3 else 0.0)
    affine = phantom_affine(spatial_size, spacing, offset)
    full = spatial_size if spatial_dims == 3 else (*spatial_size, 1)
    axes = [affine[i, 3].item() + spacing * np.arange(full[i], dtype=np.float64) for i in range(3)]
    X, Y, Z = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    tissue, ct, pet, tumour_rho = _paint(p, X, Y, Z)
    label = np.isin(tissue, (PhantomTissue.TUMOUR, PhantomTissue.NECROSIS))
    if spatial_dims == 2:
        tissue, ct, pet, tumour_rho, label = (a[..., 0] for a in (tissue, ct, pet, tumour_rho, label))
        if not label.any():  # a tumour smaller than a voxel of a very coarse grid: keep the nearest voxel
            c0 = p["tumour"]["blobs"][0][0]
            idx = tuple(
                int(np.clip(round((c0[i] - axes[i][0]) / spacing), 0, spatial_size[i] - 1)) for i in range(2)
            )
            label[idx], tissue[idx] = True, PhantomTissue.TUMOUR
            ct[idx], pet[idx] = p["hu_muscle"] + p["tumour"]["hu_delta"], p["tumour"]["suvmax"]

    rng = np.random.default_rng([seed, 1])
    shape = label.shape
    # heterogeneous tumour uptake: radial fall-off times a smooth random texture; brain cortex brighter
    texture = _smooth_noise(rng, shape, 3.0 / spacing)
    tumour_core = label & (tissue == PhantomTissue.TUMOUR)
    profile = 0.55 + 0.45 * np.clip(1.0 - tumour_rho**2, 0.0, 1.0)
    pet = np.where(tumour_core, pet * profile * np.clip(1.0 + 0.22 * texture, 0.5, 1.5), pet)
    brain = tissue == PhantomTissue.BRAIN
    if brain.any():
        pet = np.where(brain, pet * np.clip(0.8 + 0.15 * texture, 0.5, 1.2), pet)
    # PET scanner blur (in mm), then signal-dependent correlated noise
    sigma = p["pet_fwhm"] / (2.0 * math.sqrt(2.0 * math.log(2.0))) / spacing
    pet = ndimage.gaussian_filter(pet.astype(np.float32), sigma, mode="nearest")
    ct = ndimage.gaussian_filter(ct, 0.6 / spacing, mode="nearest")
    if noise:
        pet_noise = _smooth_noise(rng, shape, 1.5 / spacing)
        pet = pet + p["pet_noise"] * np.sqrt(np.maximum(pet, 0.02)) * pet_noise
        ct = ct + p["ct_noise"] * rng.standard_normal(shape).astype(np.float32)
    pet = np.clip(pet, 0.0, None)
    ct = np.clip(ct, -1024.0, 3071.0)

    case_id = f"PHANTOM-{seed:04d}"

    def meta_tensor(arr: np.ndarray, suffix: str) -> MetaTensor:
        meta = {"filename_or_obj": f"{case_id}__{suffix}", "original_channel_dim": 0, "case_id": case_id}
        return MetaTensor(
            torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None],
            affine=affine.clone(),
            meta=meta,
        )

    out: dict[str, Any] = {
        "ct": meta_tensor(ct, "CT"),
        "pet": meta_tensor(pet, "PT"),
        "label": meta_tensor(label.astype(np.float32), "label"),
        "seed": seed,
        "case_id": case_id,
    }
    if return_tissue:
        out["tissue"] = meta_tensor(tissue.astype(np.float32), "tissue")
    return out


class PhantomDataset(Dataset):
    """A map-style MONAI dataset of ``num_cases`` phantom cases; case ``i`` uses seed ``base_seed + i``.

    Cases are generated on access (nothing cached), then ``transform`` is applied as in
    :class:`monai.data.Dataset`; wrap it in :class:`monai.data.CacheDataset` to keep them in memory.

    Args:
        num_cases: number of cases (>= 1).
        base_seed: seed of case 0 (>= 0).
        spatial_dims, spatial_size, spacing: as in :func:`make_phantom_case`.
        transform: optional callable applied to each case dict.
        **case_kwargs: further keyword arguments of :func:`make_phantom_case` (e.g. ``noise=False``).

    Example:
        >>> ds = PhantomDataset(3, base_seed=10, spatial_size=(32, 32), spacing=8.0)
        >>> len(ds), ds[1]["case_id"], tuple(ds[0]["pet"].shape)
        (3, 'PHANTOM-0011', (1, 32, 32))
    """

    def __init__(
        self,
        num_cases: int,
        base_seed: int = 0,
        spatial_dims: int = 2,
        spatial_size: Sequence[int] | None = None,
        spacing: float = 2.0,
        transform: Callable | None = None,
        **case_kwargs: Any,
    ) -> None:
        if isinstance(num_cases, bool) or not isinstance(num_cases, (int, np.integer)) or num_cases < 1:
            raise ValueError(f"num_cases must be a positive int, got {num_cases!r}.")
        if isinstance(base_seed, bool) or not isinstance(base_seed, (int, np.integer)) or base_seed < 0:
            raise ValueError(f"base_seed must be a non-negative int, got {base_seed!r}.")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}.")
        self.num_cases, self.base_seed = int(num_cases), int(base_seed)
        self.case_kwargs = {
            "spatial_dims": spatial_dims,
            "spatial_size": spatial_size,
            "spacing": spacing,
            **case_kwargs,
        }
        _validate_grid(spatial_dims, spatial_size, spacing)
        super().__init__(data=range(self.num_cases), transform=transform)

    @property
    def seeds(self) -> list[int]:
        return [self.base_seed + i for i in range(self.num_cases)]

    def _transform(self, index: int):
        index = int(index)
        if index < 0:
            index += self.num_cases
        if not 0 <= index < self.num_cases:
            # iteration (``for case in dataset``) relies on IndexError to stop
            raise IndexError(f"PhantomDataset index {index} out of range for {self.num_cases} cases.")
        case = make_phantom_case(self.base_seed + index, **self.case_kwargs)
        return apply_transform(self.transform, case) if self.transform is not None else case
