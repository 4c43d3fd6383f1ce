"""The synthetic spine: per-study anatomy in LPS mm, as soft-edged solids, rendered per slice.

Coordinates: u = x - x0 (patient left +), v = y - y0 (posterior +), z (superior +), with
the canal centre at u = v = 0. The anatomy is a list of solids (``Shape``) painted in order
(later ones cover earlier ones): body outline, subcutaneous fat, paraspinal and psoas
muscle, aorta and vena cava (flow voids); T12 .. S3 vertebral bodies with a cortical rim
(endplates) around textured marrow; discs T12/L1 .. L5/S1 with annulus and nucleus;
pedicles, laminae, spinous processes and facets (with a fluid cleft); the foramina (fat
around the exiting root between the pedicles); epidural fat; the dural sac (CSF) with the
conus and the cauda equina roots; the lateral recesses (a CSF lobe in ligament);
ligamentum flavum; the disc bulge.

Severity shows as sizes that change continuously with the latent degree of
``severity`` (``severity.narrowing``, strictly monotone): the disc bulge (1 -> 11 mm) and
the flavum (0.5 -> 3 mm) fill the canal, the recess CSF lobe and the foramen fat shrink
(scale 1.12 -> 0.22). The shared disc factor lowers disc height (up to 40%) and nucleus
signal. ``difficulty`` adds a per-structure jitter to the latent the image shows.

A shape is an ellipsoid or a rounded cylinder (elliptic section in u-v, flat ends in z)
with axis-aligned radii (mm). ``render_slice`` evaluates it only inside its bounding box
in the slice, with an edge ramp one pixel wide, widened by the slice thickness times the
through-plane slope of the surface: a first-order model of partial volume across the slab.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from spinegrade.synthetic.severity import CLASS_BALANCE, Degeneration, narrowing

__all__ = ["CLASS_BALANCE", "Anatomy", "Shape", "build_anatomy", "render_slice"]

# Missing labels are mostly subarticular at L1/L2 and L2/L3.
MISSING_ODDS = {
    "spinal": (0.2,) * 5,
    "foraminal": (0.5,) * 5,
    "subarticular": (6.0, 4.0, 0.6, 0.4, 0.4),
}

DISC_HALF_MM = 4.2

CANAL_HALF_AP_MM = 7.5

CANAL_HALF_WIDTH_MM = 7.5

RECESS_U_MM = 9.5

RECESS_V_MM = 3.5

FORAMEN_U_MM = 18.0

FORAMEN_V_MM = -4.0

FORAMEN_DZ_MM = 4.0

SPINAL_POINT_V_MM = 1.0

BODY_V_MM = -26.0  # vertebral body centre

SAGITTAL_IOP = np.array([0.0, 1.0, 0.0, 0.0, 0.0, -1.0])

INF = float("inf")


@dataclass(frozen=True)
class Shape:
    """One solid: ``kind`` "ell" (ellipsoid) or "rcyl" (elliptic in u-v, flat ends in z).

    ``center`` (3,) world mm, ``radii`` (3,) mm (inf: unbounded along that axis), intensity
    sum(w * contrast[t] for t, w in tissues) times (1 + texture * field).
    """

    kind: str
    tissues: tuple[tuple[str, float], ...]
    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    texture: float = 0.0


@dataclass(frozen=True)
class Anatomy:
    """One study's spine, in LPS mm. Side index 0 = left (+x), 1 = right (-x).

    Attributes:
        x0, y0: canal centre (left-right, anterior-posterior).
        disc_z: (5,) z of the disc centres L1/L2 .. L5/S1 (superior is +z).
        period: distance between discs.
        bulge: (5,) mm of disc bulge into the canal.
        foramen: (2, 5) foramen fat size scale (1 = normal).
        recess: (2, 5) lateral recess CSF lobe size scale (1 = normal).
        flavum: (5,) mm of ligamentum flavum thickening into the canal.
        disc_deg: (5,) disc degeneration in [0, 1]: height loss, dark nucleus on T2.
    """

    x0: float
    y0: float
    disc_z: np.ndarray
    period: float
    bulge: np.ndarray
    foramen: np.ndarray
    recess: np.ndarray
    flavum: np.ndarray = field(default_factory=lambda: np.full(5, 0.5))
    disc_deg: np.ndarray = field(default_factory=lambda: np.zeros(5))

    def spinal_point(self, k: int) -> np.ndarray:
        """World point of the canal centre at disc level k."""
        return np.array([self.x0, self.y0 + SPINAL_POINT_V_MM, self.disc_z[k]])

    def foramen_point(self, side: int, k: int) -> np.ndarray:
        """World point of the centre of the foramen fat, above disc k."""
        u = FORAMEN_U_MM if side == 0 else -FORAMEN_U_MM
        return np.array([self.x0 + u, self.y0 + FORAMEN_V_MM, self.disc_z[k] + FORAMEN_DZ_MM])

    def recess_point(self, side: int, k: int) -> np.ndarray:
        """World point of the centre of the lateral recess CSF lobe at disc k."""
        u = RECESS_U_MM if side == 0 else -RECESS_U_MM
        return np.array([self.x0 + u, self.y0 + RECESS_V_MM, self.disc_z[k]])

    @cached_property
    def shapes(self) -> list[Shape]:
        """The solids in painting order."""
        return _shapes(self)


def build_anatomy(
    rng: np.random.Generator, degeneration: Degeneration, difficulty: float
) -> Anatomy:
    """Draw one study's anatomy: position and level spacing at random, structure sizes from
    the latent degrees. ``difficulty`` scales a per-structure jitter of the latent the image
    shows (sd 0.15 * difficulty), which the grade does not see."""
    period = float(rng.uniform(32.0, 37.0))
    z_top = float(rng.uniform(55.0, 75.0))

    def shown(z: np.ndarray, group: str) -> np.ndarray:
        return narrowing(z + 0.15 * difficulty * rng.standard_normal(z.shape), group)

    spinal = shown(degeneration.spinal, "spinal")
    return Anatomy(
        x0=float(rng.normal(0, 3)),
        y0=float(rng.normal(0, 4)),
        disc_z=z_top - period * np.arange(5),
        period=period,
        bulge=1.0 + 10.0 * spinal,
        foramen=1.12 - 0.9 * shown(degeneration.foraminal, "foraminal"),
        recess=1.12 - 0.9 * shown(degeneration.subarticular, "subarticular"),
        flavum=0.5 + 2.5 * spinal,
        disc_deg=1.0 / (1.0 + np.exp(-1.5 * (degeneration.disc - 0.6))),
    )


def _shapes(a: Anatomy) -> list[Shape]:
    x0, y0, p = a.x0, a.y0, a.period
    out: list[Shape] = []

    def add(kind, tissues, u, v, z, ru, rv, rz, texture=0.0):
        if isinstance(tissues, str):
            tissues = ((tissues, 1.0),)
        out.append(Shape(kind, tissues, (x0 + u, y0 + v, z), (ru, rv, rz), texture))

    def both(kind, tissue, u, *rest, **kw):
        add(kind, tissue, u, *rest, **kw)
        add(kind, tissue, -u, *rest, **kw)

    # Disc T12/L1 (normal) .. L5/S1, with half heights; vertebrae T12 .. S1 fill between.
    disc_z = np.concatenate([[a.disc_z[0] + p], a.disc_z])
    deg = np.concatenate([[0.1], a.disc_deg])
    disc_h = DISC_HALF_MM * (1.0 - 0.4 * deg)
    top = np.concatenate([[disc_z[0] + p - DISC_HALF_MM], disc_z - disc_h])  # T12 .. S1
    bottom = np.concatenate([disc_z + disc_h, [disc_z[-1] - p + 2.0]])
    z_lo, z_hi = disc_z[-1] - 2.5 * p, disc_z[0] + 2.5 * p

    # Body outline: subcutaneous fat, soft tissue, muscles.
    add("rcyl", "fat", 0, -12, 0, 125, 100, INF)
    add("rcyl", "soft", 0, -14, 0, 114, 86, INF, texture=0.12)
    both("rcyl", "muscle", 31, 42, 0, 24, 27, INF, texture=0.06)
    add("rcyl", "vessel", 14, -56, 0, 10, 10, INF)  # aorta (flow void)
    add("rcyl", "vessel", -18, -54, 0, 11, 9, INF)  # inferior vena cava
    both("rcyl", "muscle", 40, -22, disc_z[-1] + 0.5 * p, 14, 15, 2.2 * p, texture=0.06)

    for j in range(len(top)):  # vertebra j: between disc j-1 (above) and disc j (below)
        zc, hz = (top[j] + bottom[j]) / 2, (top[j] - bottom[j]) / 2
        sacral = j == len(top) - 1
        vb = BODY_V_MM + (3.0 if sacral else 0.0)
        # Posterior elements: pedicles (upper part of the body), lamina, spinous process.
        both("ell", "bone", 16.5, -6, zc + 0.15 * p, 4.5, 8.0, 0.22 * p, texture=0.08)
        both("ell", "cortex", 12, 15, zc - 0.2 * p, 8.0, 5.0, 0.33 * p)
        both("ell", "bone", 12, 15, zc - 0.2 * p, 6.8, 3.8, 0.33 * p - 1.2, texture=0.08)
        if not sacral:
            add("rcyl", "cortex", 0, 31, zc - 0.12 * p, 3.2, 15, 0.27 * p)
            add("rcyl", "bone", 0, 31, zc - 0.12 * p, 2.2, 14, 0.27 * p - 1.2, texture=0.08)
        add("rcyl", "cortex", 0, vb, zc, 22, 15, hz)
        add("rcyl", "marrow", 0, vb, zc, 20.8, 13.8, hz - 1.1, texture=0.1)
    # Sacrum below S1: S2 and S3, stepping back (the sacral curve).
    for i, (dv, r) in enumerate(((6.0, 0.8), (14.0, 0.6))):
        zc = bottom[-1] - (i + 0.5) * 0.8 * p
        add("rcyl", "cortex", 0, BODY_V_MM + dv, zc, 22 * r, 14 * r, 0.4 * p - 0.8)
        add("rcyl", "marrow", 0, BODY_V_MM + dv, zc, 22 * r - 1, 14 * r - 1, 0.4 * p - 1.8, 0.1)

    for i, z in enumerate(disc_z):
        k = i - 1  # labelled level, -1 for T12/L1
        d, h = deg[i], disc_h[i]
        add("rcyl", "annulus", 0, BODY_V_MM, z, 22.5, 15.3, h)
        nucleus = (("nucleus", 1.0 - 0.85 * d), ("annulus", 0.85 * d))
        add("ell", nucleus, 0, BODY_V_MM + 1.0, z, 14, 9, h * (0.75 - 0.25 * d))
        # Facet joints: superior articular process (bone) with a fluid cleft behind it.
        both("ell", "fluid", 14.5, 13.0, z + 2, 1.2, 5.0, 0.22 * p)
        both("ell", "bone", 12.5, 8.5, z + 1, 4.0, 5.0, 0.25 * p, texture=0.08)
        if k < 0:
            continue
        # Foramen: fibrous zone, fat (shrinks with narrowing), exiting root in its upper part.
        for side, sign in ((0, 1.0), (1, -1.0)):
            s = a.foramen[side, k]
            fu, fz = sign * FORAMEN_U_MM, z + FORAMEN_DZ_MM
            add("ell", "ligament", fu, FORAMEN_V_MM, fz, 6.5, 6.5, 9.0)
            add("ell", "fat", fu, FORAMEN_V_MM, fz, 6.5, 5.0 * s, 7.0 * s)
            add("ell", "nerve", fu, FORAMEN_V_MM, fz + 3.0 * s, 6.0, 1.8, 1.8)
        # Recess: ligament around the CSF lobe (lobe painted after the canal).
        both("ell", "ligament", RECESS_U_MM, RECESS_V_MM, z, 6.0, 4.5, 7.0)
        add("ell", "fat", 0, 9.0, z + 0.5 * p, 4.5, 2.5, 0.3 * p)  # posterior epidural fat

    # Dural sac: CSF, ending at S2; conus medullaris; cauda equina roots lying posteriorly.
    sac_top, sac_bottom = z_hi, disc_z[-1] - 1.3 * p
    add("rcyl", "csf", 0, 0, (sac_top + sac_bottom) / 2, 7.5, 7.5, (sac_top - sac_bottom) / 2)
    add("ell", "nerve", 0, 0.5, disc_z[1] + 0.4 * p, 4.5, 4.0, 1.0 * p)
    root_bottom = disc_z[-1] - 1.1 * p
    zc, hz = (disc_z[1] + root_bottom) / 2, (disc_z[1] - root_bottom) / 2
    for ru, rv, r in ((1.3, 6.3, 0.5), (2.9, 5.3, 0.7), (4.6, 4.0, 0.8), (5.9, 1.8, 0.8)):
        both("rcyl", "nerve", ru, rv, zc, r, r, hz)

    for k, z in enumerate(a.disc_z):
        i = k + 1
        for side, sign in ((0, 1.0), (1, -1.0)):
            s = a.recess[side, k]
            add("ell", "csf", sign * RECESS_U_MM, RECESS_V_MM, z, 4.0 * s, 3.2 * s, 5.5)
        # Ligamentum flavum (thickens into the posterolateral canal) and the disc bulge.
        both("ell", "ligament", 6.5, 9.5, z + 3.0, 5.0, 2.0 + a.flavum[k], 9.0)
        add("ell", "annulus", 0, -11.0, z, 11.0, a.bulge[k] + 3.5, disc_h[i] + 2.0)
    return [s for s in out if s.center[2] - s.radii[2] < z_hi and s.center[2] + s.radii[2] > z_lo]


class SliceGrid:
    """World coordinates of one slice's pixels, each axis kept as the smallest array that
    holds it: scalar, a column (rows, 1), a row (1, cols) or (rows, cols)."""

    def __init__(self, ipp, iop, spacing, shape, thickness: float):
        ipp = np.asarray(ipp, float)
        iop = np.asarray(iop, float)
        rows, cols = shape
        self.shape = (rows, cols)
        self.step_c = iop[:3] * float(spacing[1])  # per column
        self.step_r = iop[3:] * float(spacing[0])  # per row
        self.ipp = ipp
        normal = np.cross(iop[:3], iop[3:])
        self.normal = normal / np.linalg.norm(normal)
        self.thickness = float(thickness)
        self.pixel = float(max(spacing))
        self.margin = 0.5 * np.hypot(self.pixel, self.thickness) + self.pixel

    def box(self, center, radii) -> tuple[int, int, int, int] | None:
        """Pixel bounds (r0, r1, c0, c1) holding a shape's box, None if it misses the slice.

        The box is exact in the rows/columns an axis depends on; the slab is covered by a
        margin of half the slice thickness.
        """
        rows, cols = self.shape
        r0, r1, c0, c1 = 0, rows, 0, cols
        for k in range(3):
            lo = center[k] - radii[k] - self.margin
            hi = center[k] + radii[k] + self.margin
            a, bc, br = self.ipp[k], self.step_c[k], self.step_r[k]
            if abs(bc) < 1e-9 and abs(br) < 1e-9:
                if not lo <= a <= hi:
                    return None
            elif abs(bc) < 1e-9:
                i0, i1 = sorted(((lo - a) / br, (hi - a) / br))
                r0, r1 = (
                    max(r0, int(np.floor(max(i0, -1)))),
                    min(r1, int(np.ceil(min(i1, rows))) + 1),
                )
            elif abs(br) < 1e-9:
                i0, i1 = sorted(((lo - a) / bc, (hi - a) / bc))
                c0, c1 = (
                    max(c0, int(np.floor(max(i0, -1)))),
                    min(c1, int(np.ceil(min(i1, cols))) + 1),
                )
        if r0 >= r1 or c0 >= c1:
            return None
        return r0, r1, c0, c1

    def axis(self, k: int, box) -> np.ndarray | float:
        """World coordinate k on the pixels of ``box``, in its smallest broadcastable form."""
        r0, r1, c0, c1 = box
        a, bc, br = self.ipp[k], self.step_c[k], self.step_r[k]
        out = a
        if abs(bc) >= 1e-9:
            out = out + bc * np.arange(c0, c1, dtype=np.float32)[None, :]
        if abs(br) >= 1e-9:
            out = out + br * np.arange(r0, r1, dtype=np.float32)[:, None]
        return out


def render_slice(
    anatomy: Anatomy,
    grid: SliceGrid,
    contrast: dict[str, float],
    texture: np.ndarray | None = None,
) -> np.ndarray:
    """(rows, cols) float32 image of the anatomy on one slab, air = 0.

    Args:
        contrast: intensity per tissue name (imaging.TISSUE keys).
        texture: (rows, cols) zero-mean field modulating textured shapes, or None.
    """
    img = np.zeros(grid.shape, np.float32)
    w2, t2 = grid.pixel**2, grid.thickness**2
    n = grid.normal
    for s in anatomy.shapes:
        box = grid.box(s.center, s.radii)
        if box is None:
            continue
        q, qr, nq = [], [], 0.0
        for k in range(3):
            if s.radii[k] == INF:
                q.append(0.0)
                qr.append(0.0)
                continue
            qk = (grid.axis(k, box) - s.center[k]) / s.radii[k]
            q.append(qk)
            qr.append(qk / s.radii[k])
        if s.kind == "ell":
            f = q[0] * q[0] + q[1] * q[1] + q[2] * q[2]
            g2 = qr[0] * qr[0] + qr[1] * qr[1] + qr[2] * qr[2]
            nq = n[0] * qr[0] + n[1] * qr[1] + n[2] * qr[2]
            denom = 2.0 * np.sqrt(w2 * g2 + t2 * nq * nq) + 1e-6
        else:
            rho = q[0] * q[0] + q[1] * q[1]
            qz2 = q[2] * q[2]
            f = rho * rho + qz2 * qz2
            g2 = rho * rho * (qr[0] * qr[0] + qr[1] * qr[1]) + qz2 * qz2 * qr[2] * qr[2]
            nq = rho * (n[0] * qr[0] + n[1] * qr[1]) + qz2 * qr[2] * n[2]
            denom = 4.0 * np.sqrt(w2 * g2 + t2 * nq * nq) + 1e-6
        alpha = np.clip(0.5 - (f - 1.0) / denom, 0.0, 1.0)
        r0, r1, c0, c1 = box
        alpha = np.broadcast_to(alpha, (r1 - r0, c1 - c0))
        value = sum(w * contrast[t] for t, w in s.tissues)
        if s.texture and texture is not None:
            value = value * (1.0 + s.texture * texture[r0:r1, c0:c1])
        sub = img[r0:r1, c0:c1]
        sub += alpha * (value - sub)
    return img
