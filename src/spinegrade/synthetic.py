"""A synthetic, RSNA-format lumbar spine dataset whose images encode severity.

The generator draws, per study, a simple analytic spine in LPS patient coordinates (mm):
vertebral bodies and discs, the spinal canal with subarticular recesses, neural foramina
between pedicles, and posterior elements. Each labelled level narrows the structure its
condition names, by an amount that follows the level's severity:

- spinal canal stenosis: a disc bulge fills the anterior canal at the disc level;
- neural foraminal narrowing: the fat-filled foramen (bright on T1) shrinks;
- subarticular stenosis: the CSF-filled lateral recess (bright on T2) shrinks inside
  thickened ligament.

Every slice of every series is rendered by evaluating that anatomy on the slice's own
pixel grid through its DICOM geometry, so sagittal and axial series of one study share one
frame of reference and labelled coordinates fall on the anatomy they name. Output is the
competition layout (rsna-data.md) plus the held-out test set's answers in two extra files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from scipy.ndimage import gaussian_filter

from spinegrade import vocab
from spinegrade.config import SyntheticConfig
from spinegrade.geometry import pixel_to_world, world_to_pixel
from spinegrade.io import atomic_dir
from spinegrade.parallel import parallel_map

log = logging.getLogger(__name__)

# Extra files the generator writes next to the competition files: the answers for the
# synthetic test studies (kept out of everything training reads).
TEST_LABELS_CSV = "synthetic_test_labels.csv"
TEST_COORDINATES_CSV = "synthetic_test_label_coordinates.csv"

# Real class balance per group (rsna-data.md), Normal/Mild, Moderate, Severe.
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

FAKE_NAMES = ("Doe^Jane", "Roe^Richard", "Smith^Alex", "Moreau^Claire", "Tanaka^Ken")

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


@dataclass(frozen=True)
class SliceSpec:
    """Geometry of one slice to write."""

    ipp: np.ndarray
    iop: np.ndarray
    spacing: tuple[float, float]  # row, col (mm)
    shape: tuple[int, int]  # rows, cols


@dataclass
class SeriesPlan:
    series_id: int
    description: str
    slices: list[SliceSpec]
    thickness: float
    levels: tuple[int, ...] = ()  # axial: levels covered


def _grid(
    rng: np.random.Generator, sizes: tuple[int, ...], fov: tuple[float, float], non_square: float
):
    rows = int(rng.choice(sizes))
    cols = rows
    if rng.random() < non_square:
        cols = int(rng.choice([s for s in sizes if s != rows] or [rows]))
    sp = float(rng.uniform(*fov)) / max(rows, cols)
    sp = round(sp, 4)
    return (rows, cols), (sp, sp)


def _slice_at(center: np.ndarray, iop: np.ndarray, shape: tuple[int, int], spacing) -> SliceSpec:
    rows, cols = shape
    r, c = iop[:3], iop[3:]
    ipp = center - (cols - 1) / 2 * spacing[1] * r - (rows - 1) / 2 * spacing[0] * c
    return SliceSpec(np.round(ipp, 4), iop, spacing, shape)


def _sagittal_plan(
    rng, cfg: SyntheticConfig, anatomy: Anatomy, series_id: int, desc: str
) -> SeriesPlan:
    shape, spacing = _grid(rng, cfg.sagittal_sizes, cfg.sagittal_fov_mm, cfg.non_square_rate)
    n = int(rng.integers(cfg.sagittal_slices[0], cfg.sagittal_slices[1] + 1))
    gap = float(rng.uniform(3.5, 4.5))
    x_mid = anatomy.x0 + float(rng.uniform(-2, 2))
    z_mid = float(np.mean(anatomy.disc_z))
    centers = [
        np.array([x_mid + (i - (n - 1) / 2) * gap, anatomy.y0 - 10.0, z_mid]) for i in range(n)
    ]
    slices = [_slice_at(cen, SAGITTAL_IOP, shape, spacing) for cen in centers]
    return SeriesPlan(series_id, desc, slices, thickness=round(gap * 0.9, 2))


def _axial_plan(
    rng, cfg: SyntheticConfig, anatomy: Anatomy, series_id: int, levels, continuous: bool
) -> SeriesPlan:
    shape, spacing = _grid(rng, cfg.axial_sizes, cfg.axial_fov_mm, cfg.non_square_rate)
    slices: list[SliceSpec] = []
    center_xy = np.array([anatomy.x0, anatomy.y0 - 10.0])
    if continuous:
        gap = float(rng.uniform(4.0, 5.0))
        top = anatomy.disc_z[levels[0]] + 15.0
        bottom = anatomy.disc_z[levels[-1]] - 15.0
        iop = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
        for z in np.arange(top, bottom, -gap):
            slices.append(_slice_at(np.array([*center_xy, z]), iop, shape, spacing))
    else:
        gap = float(rng.uniform(3.0, 4.0))
        for k in levels:
            phi = np.deg2rad(float(rng.uniform(-10, 10)))
            iop = np.round(np.array([1.0, 0.0, 0.0, 0.0, np.cos(phi), np.sin(phi)]), 6)
            normal = np.cross(iop[:3], iop[3:])
            m = int(rng.integers(4, 7))
            offset = float(rng.uniform(-0.4, 0.4)) * gap
            base = np.array([*center_xy, anatomy.disc_z[k]])
            for i in range(m):
                cen = base + ((m - 1) / 2 - i) * gap * normal + offset * normal
                slices.append(_slice_at(cen, iop, shape, spacing))
    return SeriesPlan(
        series_id, vocab.AXIAL_T2, slices, thickness=round(gap * 0.9, 2), levels=tuple(levels)
    )


def _instance_numbers(rng, n: int, quirky: bool) -> list[int]:
    """Instance numbers in position order: 1..n, or (quirky) from an offset, with gaps."""
    if not quirky:
        return list(range(1, n + 1))
    nums, cur = [], int(rng.integers(2, 40))
    for _ in range(n):
        nums.append(cur)
        cur += 1 + (int(rng.integers(1, 4)) if rng.random() < 0.2 else 0)
    return nums


def _draw_grades(rng, cfg: SyntheticConfig, group: str, level: int, n: int) -> np.ndarray:
    counts = np.array(CLASS_BALANCE[group], dtype=float)
    p = counts / counts.sum()
    odds = LEVEL_ODDS[group][level] / np.mean(LEVEL_ODDS[group])
    abnormal = np.clip((1 - p[0]) * odds, 0, 0.95)
    probs = np.array(
        [1 - abnormal, abnormal * p[1] / (p[1] + p[2]), abnormal * p[2] / (p[1] + p[2])]
    )
    return rng.choice(3, size=n, p=probs)


def _shape_param(rng, ranges, grade: int) -> float:
    lo, hi = ranges[grade]
    return float(rng.uniform(lo, hi))


@dataclass
class StudyPlan:
    study_id: int
    series_ids: list[int]
    index: int


def _write_series(
    plan: SeriesPlan,
    anatomy: Anatomy,
    rng: np.random.Generator,
    cfg: SyntheticConfig,
    study_dir: Path,
    study_id: int,
    instance_numbers: list[int],
    identity: dict[str, str],
    omit_spacing: bool,
) -> None:
    weighting = 0 if plan.description == vocab.SAGITTAL_T1 else 1
    series_dir = study_dir / str(plan.series_id)
    series_dir.mkdir(parents=True)
    scale = float(rng.uniform(800, 2500))
    series_uid = generate_uid(entropy_srcs=[str(study_id), str(plan.series_id), "series"])
    for spec, inst in zip(plan.slices, instance_numbers, strict=True):
        rows, cols = spec.shape
        yy, xx = np.mgrid[0:rows, 0:cols]
        pts = pixel_to_world(xx, yy, spec.ipp, spec.iop, spec.spacing)
        img = render(anatomy, pts, weighting)
        img = gaussian_filter(img, 0.6)
        img = img * (1.0 + 0.08 * (xx / cols - 0.5)) + rng.normal(0.0, cfg.noise_sigma, img.shape)
        pixels = np.clip(img * scale, 0, 65535).astype(np.uint16)
        ds = _dataset(spec, pixels, plan, inst, study_id, series_uid, identity, omit_spacing)
        ds.save_as(series_dir / f"{inst}.dcm", enforce_file_format=True)


def _dataset(
    spec, pixels, plan, inst, study_id, series_uid, identity, omit_spacing
) -> pydicom.Dataset:
    sop_uid = generate_uid(entropy_srcs=[str(study_id), str(plan.series_id), str(inst)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "MR"
    ds.PatientName = identity["name"]
    ds.PatientID = identity["id"]
    ds.PatientBirthDate = identity["birth"]
    ds.PatientSex = identity["sex"]
    ds.InstitutionName = identity["institution"]
    ds.ReferringPhysicianName = "Synthetic^Referrer"
    ds.StudyDate = "20240101"
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[str(study_id), "study"])
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[str(study_id), "frame"])
    ds.StudyID = str(study_id)
    ds.SeriesNumber = plan.series_id % 100000
    ds.SeriesDescription = plan.description
    ds.InstanceNumber = inst
    ds.ImagePositionPatient = [float(f"{v:.4f}") for v in spec.ipp]
    ds.ImageOrientationPatient = [float(f"{v:.6f}") for v in spec.iop]
    ds.PixelSpacing = [spec.spacing[0], spec.spacing[1]]
    if not omit_spacing:
        ds.SliceThickness = plan.thickness
        ds.SpacingBetweenSlices = round(plan.thickness / 0.9, 3)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    return ds


def generate_study(args: tuple) -> dict[str, list]:
    """Generate one study's DICOM series under ``images_dir``; return its CSV rows.

    ``args`` is (cfg, seed, index, study_id, series_ids, images_dir), picklable for a
    process pool. Deterministic in (seed, index).
    """
    cfg, seed, index, study_id, series_ids, images_dir = args
    rng = np.random.default_rng([seed, index])
    period = float(rng.uniform(32.0, 37.0))
    z_top = float(rng.uniform(55.0, 75.0))
    grades = {
        g: np.array(
            [_draw_grades(rng, cfg, g, k, 2)[: (1 if g == "spinal" else 2)] for k in range(5)]
        )
        for g in vocab.GROUPS
    }
    anatomy = Anatomy(
        x0=float(rng.normal(0, 3)),
        y0=float(rng.normal(0, 4)),
        disc_z=z_top - period * np.arange(5),
        period=period,
        bulge=np.array([_shape_param(rng, SPINAL_BULGE_MM, g[0]) for g in grades["spinal"]]),
        foramen=np.array(
            [
                [_shape_param(rng, FORAMEN_SCALE, grades["foraminal"][k, s]) for k in range(5)]
                for s in range(2)
            ]
        ),
        recess=np.array(
            [
                [_shape_param(rng, RECESS_SCALE, grades["subarticular"][k, s]) for k in range(5)]
                for s in range(2)
            ]
        ),
    )
    born = (int(rng.integers(1940, 2000)), int(rng.integers(1, 13)), int(rng.integers(1, 29)))
    identity = {
        "name": FAKE_NAMES[index % len(FAKE_NAMES)],
        "id": f"PID{int(rng.integers(10**6, 10**7))}",
        "birth": "{:04d}{:02d}{:02d}".format(*born),
        "sex": "F" if rng.random() < 0.5 else "M",
        "institution": "Synthetic General Hospital",
    }

    # Series: Sagittal T1, Sagittal T2/STIR, one or two Axial T2.
    ids = iter(series_ids)
    plans: list[SeriesPlan] = []
    missing = None
    if rng.random() < cfg.missing_series_rate:
        missing = vocab.SAGITTAL_T1 if rng.random() < 0.67 else vocab.SAGITTAL_T2
    for desc in (vocab.SAGITTAL_T1, vocab.SAGITTAL_T2):
        sid = next(ids)
        if desc != missing:
            plans.append(_sagittal_plan(rng, cfg, anatomy, sid, desc))
    if rng.random() < cfg.multi_axial_rate:
        plans.append(_axial_plan(rng, cfg, anatomy, next(ids), (0, 1, 2), continuous=False))
        plans.append(_axial_plan(rng, cfg, anatomy, next(ids), (2, 3, 4), continuous=False))
    else:
        continuous = rng.random() < cfg.continuous_axial_rate
        plans.append(_axial_plan(rng, cfg, anatomy, next(ids), (0, 1, 2, 3, 4), continuous))

    study_dir = Path(images_dir) / str(study_id)
    instances: dict[int, list[int]] = {}
    for plan in plans:
        quirky = rng.random() < cfg.instance_quirk_rate
        nums = _instance_numbers(rng, len(plan.slices), quirky)
        if quirky and rng.random() < 0.5:
            nums = nums[::-1]  # instance order runs against position order
        instances[plan.series_id] = nums
        omit = rng.random() < cfg.missing_spacing_rate
        _write_series(plan, anatomy, rng, cfg, study_dir, study_id, nums, identity, omit)

    # Labels (with label noise) and coordinates on the series showing each condition.
    label_row: dict[str, object] = {"study_id": study_id}
    coords: list[dict] = []
    for group_name, group in vocab.GROUPS.items():
        for side_i, condition in enumerate(group.conditions):
            for k, level in enumerate(vocab.LEVELS):
                true = int(grades[group_name][k, side_i])
                recorded = true
                if rng.random() < cfg.label_noise_rate:
                    recorded = min(2, true + 1) if true == 0 else true - 1
                odds = MISSING_ODDS[group_name][k] / np.mean(MISSING_ODDS[group_name])
                is_missing = rng.random() < cfg.missing_label_rate * odds
                label_row[f"{condition}_{level}"] = "" if is_missing else vocab.SEVERITIES[recorded]
                if is_missing and rng.random() < 0.5:
                    continue
                point = (
                    anatomy.spinal_point(k)
                    if group_name == "spinal"
                    else anatomy.foramen_point(side_i, k)
                    if group_name == "foraminal"
                    else anatomy.recess_point(side_i, k)
                )
                candidates = [
                    p
                    for p in plans
                    if p.description == group.series_type and (not p.levels or k in p.levels)
                ]
                if not candidates:
                    continue
                plan = candidates[int(rng.integers(len(candidates)))]
                # The labelled slice is the one through the structure; for axial series, the
                # one through the disc centre (as a reader picks the level's slice).
                anchor = anatomy.spinal_point(k) if group_name == "subarticular" else point
                best = min(
                    range(len(plan.slices)),
                    key=lambda i: abs(
                        world_to_pixel(
                            anchor, plan.slices[i].ipp, plan.slices[i].iop, plan.slices[i].spacing
                        )[2]
                    ),
                )
                spec = plan.slices[best]
                x, y, _ = world_to_pixel(point, spec.ipp, spec.iop, spec.spacing)
                coords.append(
                    {
                        "study_id": study_id,
                        "series_id": plan.series_id,
                        "instance_number": instances[plan.series_id][best],
                        "condition": vocab.CONDITION_NAMES[condition],
                        "level": vocab.LEVEL_NAMES[level],
                        "x": round(float(x), 3),
                        "y": round(float(y), 3),
                    }
                )
    series_rows = [
        {"study_id": study_id, "series_id": p.series_id, "series_description": p.description}
        for p in plans
    ]
    return {"labels": [label_row], "coordinates": coords, "series": series_rows}


def _unique_ids(rng: np.random.Generator, n: int, low: int, high: int) -> list[int]:
    ids: set[int] = set()
    out: list[int] = []
    while len(out) < n:
        for v in rng.integers(low, high, size=n - len(out)).tolist():
            if v not in ids:
                ids.add(v)
                out.append(int(v))
    return out


def generate_dataset(cfg: SyntheticConfig, out_dir: str | Path) -> Path:
    """Write an RSNA-layout dataset to ``out_dir`` (replaced atomically as a whole).

    Layout: train_images/ and test_images/ DICOM trees, train.csv,
    train_label_coordinates.csv, train_series_descriptions.csv,
    test_series_descriptions.csv, and the test answers (TEST_LABELS_CSV,
    TEST_COORDINATES_CSV). Deterministic in ``cfg``.
    """
    rng = np.random.default_rng(cfg.seed)
    n_total = cfg.n_train_studies + cfg.n_test_studies
    study_ids = _unique_ids(rng, n_total, 10**7, 4 * 10**9)
    series_ids = _unique_ids(rng, 4 * n_total, 10**8, 4 * 10**9)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        jobs = []
        for i, study_id in enumerate(study_ids):
            split = "train_images" if i < cfg.n_train_studies else "test_images"
            jobs.append((cfg, cfg.seed, i, study_id, series_ids[4 * i : 4 * i + 4], tmp / split))
        results = parallel_map(generate_study, jobs, cfg.workers, "generate studies", "study")
        train, test = results[: cfg.n_train_studies], results[cfg.n_train_studies :]
        _write_tables(tmp, train, test)
    log.info("wrote %d train and %d test studies to %s", len(train), len(test), out_dir)
    return out_dir


def _write_tables(root: Path, train: list[dict], test: list[dict]) -> None:
    def table(results, key, columns):
        rows = [r for res in results for r in res[key]]
        return pd.DataFrame(rows, columns=list(columns))

    labels = table(train, "labels", vocab.TRAIN_CSV_HEADER)
    labels.to_csv(root / "train.csv", index=False, lineterminator="\n")
    table(train, "coordinates", vocab.COORDINATES_CSV_HEADER).to_csv(
        root / "train_label_coordinates.csv", index=False, lineterminator="\n"
    )
    table(train, "series", vocab.SERIES_CSV_HEADER).to_csv(
        root / "train_series_descriptions.csv", index=False, lineterminator="\n"
    )
    table(test, "series", vocab.SERIES_CSV_HEADER).to_csv(
        root / "test_series_descriptions.csv", index=False, lineterminator="\n"
    )
    table(test, "labels", vocab.TRAIN_CSV_HEADER).to_csv(
        root / TEST_LABELS_CSV, index=False, lineterminator="\n"
    )
    table(test, "coordinates", vocab.COORDINATES_CSV_HEADER).to_csv(
        root / TEST_COORDINATES_CSV, index=False, lineterminator="\n"
    )
