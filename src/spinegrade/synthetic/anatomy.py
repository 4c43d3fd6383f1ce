"""The synthetic spine: per-study anatomy in LPS mm and its rendering at world points."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Real class balance per group (docs/rsna-data.md), Normal/Mild, Moderate, Severe.
CLASS_BALANCE = {
    "spinal": (8664, 736, 470),
    "foraminal": (15357, 3564, 779),
    "subarticular": (13733, 3660, 1840),
}

# Relative odds of a non-normal grade per level (severity peaks at L4/L5, foraminal at L5/S1).
LEVEL_ODDS = {
    "spinal": (0.4, 0.7, 1.1, 1.9, 0.9),
    "foraminal": (0.3, 0.6, 1.0, 1.5, 1.6),
    "subarticular": (0.4, 0.7, 1.1, 1.6, 1.2),
}

# Missing labels are mostly subarticular at L1/L2 and L2/L3.
MISSING_ODDS = {
    "spinal": (0.2,) * 5,
    "foraminal": (0.5,) * 5,
    "subarticular": (6.0, 4.0, 0.6, 0.4, 0.4),
}

# Shape parameters per severity (Normal/Mild, Moderate, Severe): uniform ranges.
SPINAL_BULGE_MM = ((0.0, 3.0), (5.5, 8.0), (10.0, 12.5))  # of a 15 mm canal

FORAMEN_SCALE = ((0.85, 1.1), (0.5, 0.65), (0.25, 0.38))

RECESS_SCALE = ((0.85, 1.1), (0.5, 0.65), (0.2, 0.33))

# Tissue intensities (T1, T2) in [0, 1].
TISSUE = {
    "soft": (0.30, 0.22),
    "marrow": (0.60, 0.38),
    "disc": (0.32, 0.70),
    "csf": (0.12, 0.95),
    "bone": (0.52, 0.30),
    "fat": (0.92, 0.55),
    "nerve": (0.22, 0.30),
    "ligament": (0.20, 0.10),
    "annulus": (0.30, 0.28),  # bulging disc: dark against CSF on T2
}

DISC_HALF_MM = 4.0

CANAL_HALF_AP_MM = 7.5

CANAL_HALF_WIDTH_MM = 7.0

RECESS_U_MM = 9.5

RECESS_V_MM = 3.5

FORAMEN_U_MM = 18.0

FORAMEN_V_MM = -4.0

FORAMEN_DZ_MM = 4.0

SPINAL_POINT_V_MM = 1.0

SAGITTAL_IOP = np.array([0.0, 1.0, 0.0, 0.0, 0.0, -1.0])


@dataclass(frozen=True)
class Anatomy:
    """One study's spine, in LPS mm. Side index 0 = left (+x), 1 = right (-x).

    Attributes:
        x0, y0: canal centre (left-right, anterior-posterior).
        disc_z: (5,) z of the disc centres L1/L2 .. L5/S1 (superior is +z).
        period: distance between discs.
        bulge: (5,) mm of disc bulge into the canal.
        foramen: (2, 5) foramen size scale.
        recess: (2, 5) lateral recess size scale.
    """

    x0: float
    y0: float
    disc_z: np.ndarray
    period: float
    bulge: np.ndarray
    foramen: np.ndarray
    recess: np.ndarray

    def spinal_point(self, k: int) -> np.ndarray:
        """World point of the canal centre at disc level k."""
        return np.array([self.x0, self.y0 + SPINAL_POINT_V_MM, self.disc_z[k]])

    def foramen_point(self, side: int, k: int) -> np.ndarray:
        u = FORAMEN_U_MM if side == 0 else -FORAMEN_U_MM
        return np.array([self.x0 + u, self.y0 + FORAMEN_V_MM, self.disc_z[k] + FORAMEN_DZ_MM])

    def recess_point(self, side: int, k: int) -> np.ndarray:
        u = RECESS_U_MM if side == 0 else -RECESS_U_MM
        return np.array([self.x0 + u, self.y0 + RECESS_V_MM, self.disc_z[k]])


def _ellipse(a: np.ndarray, b: np.ndarray, ra: float, rb: float) -> np.ndarray:
    return (a / ra) ** 2 + (b / rb) ** 2 <= 1.0


def render(anatomy: Anatomy, points: np.ndarray, weighting: int) -> np.ndarray:
    """Intensity in [0, 1] of the anatomy at world points (..., 3); weighting 0=T1, 1=T2.

    Each vertebra and each disc level is painted only on the points within its own band of
    z, which is exact (no structure reaches past its band) and several times faster.
    """
    t = {k: v[weighting] for k, v in TISSUE.items()}
    flat = points.reshape(-1, 3)
    u = flat[:, 0] - anatomy.x0
    v = flat[:, 1] - anatomy.y0
    w = flat[:, 2]
    img = np.where(_ellipse(u, v + 10.0, 95.0, 80.0), t["soft"], 0.0)
    p = anatomy.period
    hv = p / 2 - DISC_HALF_MM
    vert_z = np.concatenate([[anatomy.disc_z[0] + p / 2], anatomy.disc_z - p / 2])  # L1 .. S1
    for z in vert_z:
        i = np.flatnonzero(np.abs(w - z) < hv)
        img[i] = _paint_vertebra(img[i], u[i], v[i], w[i] - z, hv, t)
    img = np.where(_ellipse(u, v, CANAL_HALF_WIDTH_MM, CANAL_HALF_AP_MM), t["csf"], img)
    for k, z in enumerate(anatomy.disc_z):
        i = np.flatnonzero(np.abs(w - z) < p / 2)
        img[i] = _paint_level(anatomy, k, img[i], u[i], v[i], w[i] - z, t)
    return img.reshape(points.shape[:-1])


def _paint_vertebra(img, u, v, dz, hv, t) -> np.ndarray:
    """Vertebral body, pedicles and posterior elements, on points with |dz| < hv."""
    img = np.where(_ellipse(u, v + 26.0, 22.0, 15.0), t["marrow"], img)
    pedicle = (np.abs(dz) < hv - 2) & (np.abs(u) > 9) & (np.abs(u) < 25)
    img = np.where(pedicle & (v > -12) & (v < 0), t["bone"], img)
    img = np.where((np.abs(u) < 14) & (v > 9) & (v < 20), t["bone"], img)
    return np.where((np.abs(u) < 3) & (v >= 20) & (v < 45), t["bone"], img)


def _paint_level(anatomy: Anatomy, k: int, img, u, v, dz, t) -> np.ndarray:
    """Disc k and the structures it narrows, on points within half a period of the disc."""
    canal = _ellipse(u, v, CANAL_HALF_WIDTH_MM, CANAL_HALF_AP_MM)
    img = np.where(_ellipse(u, v + 26.0, 22.0, 15.0) & (np.abs(dz) < DISC_HALF_MM), t["disc"], img)
    # Foramina: fat ellipsoid with a nerve root, scaled by severity.
    for side, sign in ((0, 1.0), (1, -1.0)):
        s = anatomy.foramen[side, k]
        fu = u - sign * FORAMEN_U_MM
        fv = v - FORAMEN_V_MM
        fz = dz - FORAMEN_DZ_MM
        zone = (np.abs(fu) < 7) & (np.abs(fz) < 9) & (np.abs(fv) < 7)
        img = np.where(zone, t["soft"], img)
        fat = (fu / 7) ** 2 + (fv / (5 * s)) ** 2 + (fz / (7 * s)) ** 2 <= 1
        img = np.where(fat, t["fat"], img)
        nerve = fu**2 / 6.0**2 + fv**2 / 1.8**2 + (fz - 3.0 * s) ** 2 / 1.8**2 <= 1
        img = np.where(nerve, t["nerve"], img)
    # Subarticular recesses: ligament around a CSF lobe scaled by severity.
    band = np.abs(dz) < 7.0
    for sign in (1.0, -1.0):
        img = np.where(
            band & _ellipse(u - sign * RECESS_U_MM, v - RECESS_V_MM, 6.0, 4.5), t["ligament"], img
        )
    img = np.where(band & canal, t["csf"], img)
    for side, sign in ((0, 1.0), (1, -1.0)):
        s = anatomy.recess[side, k]
        lobe = _ellipse(u - sign * RECESS_U_MM, v - RECESS_V_MM, 4.0 * s, 3.2 * s)
        img = np.where(band & lobe, t["csf"], img)
    # Central stenosis: the disc bulges into the anterior canal.
    prof = np.clip(1.0 - (dz / 6.0) ** 2, 0.0, None)
    front = -CANAL_HALF_AP_MM + anatomy.bulge[k] * prof
    bulge = (np.abs(u) < CANAL_HALF_WIDTH_MM + 1) & (v > -CANAL_HALF_AP_MM - 4) & (v < front)
    return np.where(bulge & (prof > 0), t["annulus"], img)
