"""Synthetic series: slice geometry plans (sagittal stacks, axial blocks) and DICOM writing.

Headers carry made-up identities (names, ids, birth dates, institutions) on purpose: the
tests read them back and check that none reaches an output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from spinegrade.core import vocab
from spinegrade.core.config.synthesize import SyntheticConfig
from spinegrade.synthetic.anatomy import SAGITTAL_IOP, Anatomy, SliceGrid
from spinegrade.synthetic.imaging import draw_scanner, form_image

FAKE_NAMES = ("Doe^Jane", "Roe^Richard", "Smith^Alex", "Moreau^Claire", "Tanaka^Ken")


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
    series_dir = study_dir / str(plan.series_id)
    series_dir.mkdir(parents=True)
    scanner = draw_scanner(rng, plan.description, cfg.difficulty, cfg.noise_sigma)
    series_uid = generate_uid(entropy_srcs=[str(study_id), str(plan.series_id), "series"])
    for spec, inst in zip(plan.slices, instance_numbers, strict=True):
        grid = SliceGrid(spec.ipp, spec.iop, spec.spacing, spec.shape, plan.thickness)
        img = form_image(anatomy, grid, scanner, rng)
        pixels = np.clip(img * scanner.scale, 0, 65535).astype(np.uint16)
        ds = _dataset(spec, pixels, plan, inst, study_id, series_uid, identity, omit_spacing)
        for keyword, ms in scanner.timing.items():  # RepetitionTime, EchoTime, InversionTime
            setattr(ds, keyword, ms)
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
