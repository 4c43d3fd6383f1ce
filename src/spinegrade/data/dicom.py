"""DICOM series -> position-sorted stacks with their geometry (no identifiers kept).

A series is read file by file; slices are grouped into stacks by (rounded) orientation,
image shape and pixel spacing, and each stack is sorted by position along its normal
(``dot(IPP, cross(R, C))``), never by instance number. Only pixels and geometry leave this
module: names, ids, dates and institutions in the headers are never read into outputs.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_rescale, pixel_array

from spinegrade.core.errors import DicomError
from spinegrade.data.geometry import slice_normal

log = logging.getLogger(__name__)

# Geometry tags a slice must carry.
REQUIRED_TAGS = (
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "InstanceNumber",
)

ORIENTATION_DECIMALS = 3


@dataclass(frozen=True)
class Slice:
    """One decoded slice: pixels (H, W) and its geometry."""

    pixels: np.ndarray
    ipp: np.ndarray  # (3,) mm
    iop: np.ndarray  # (6,)
    spacing: np.ndarray  # (2,) row, col mm
    instance_number: int
    thickness: float | None


@dataclass(frozen=True)
class Stack:
    """Slices of one orientation and shape, sorted by position along the normal.

    Attributes:
        pixels: (S, H, W) array, the series' stored values (rescaled when the file says so;
            MONOCHROME1 inverted so that higher is brighter).
        positions: (S, 3) ImagePositionPatient per slice, mm.
        orientation: (6,) ImageOrientationPatient shared by the stack.
        spacing: (2,) PixelSpacing [row, col], mm.
        instance_numbers: (S,) InstanceNumber per slice.
        slice_spacing: distance between neighbouring slices along the normal, mm (median,
            derived from positions; SliceThickness when there is one slice).
    """

    pixels: np.ndarray
    positions: np.ndarray
    orientation: np.ndarray
    spacing: np.ndarray
    instance_numbers: np.ndarray
    slice_spacing: float

    @functools.cached_property
    def normal(self) -> np.ndarray:
        return slice_normal(self.orientation)

    def geometry(self) -> dict:
        """JSON-ready geometry of the stack (no pixels)."""
        return {
            "shape": list(self.pixels.shape),
            "dtype": str(self.pixels.dtype),
            "orientation": self.orientation.tolist(),
            "pixel_spacing": self.spacing.tolist(),
            "slice_spacing": float(self.slice_spacing),
            "normal": self.normal.tolist(),
            "positions": self.positions.tolist(),
            "instance_numbers": self.instance_numbers.tolist(),
        }


def read_slice(path: str | Path) -> Slice:
    """Decode one DICOM file (any transfer syntax pydicom's plugins can decode).

    Raises:
        DicomError: naming ``path`` when the file is not DICOM, is truncated, lacks
            geometry or its pixels cannot be decoded.
    """
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise DicomError(f"{path}: not a readable DICOM file ({exc})") from exc
    missing = [t for t in REQUIRED_TAGS if t not in ds]
    if missing:
        raise DicomError(f"{path}: missing geometry tag(s) {missing}")
    try:
        # pydicom's function rather than the cached ``ds.pixel_array`` property: the property
        # looks up twelve pixel elements by keyword before and after decoding to validate its
        # cache, which made decoding 60% slower, and a slice is decoded only once here.
        pixels = pixel_array(ds)
    except Exception as exc:  # pydicom raises many types for truncated or undecodable data
        raise DicomError(f"{path}: cannot decode pixel data ({type(exc).__name__}: {exc})") from exc
    if pixels.ndim != 2:
        raise DicomError(
            f"{path}: expected one 2D monochrome frame, got pixel shape {pixels.shape}"
        )
    try:
        pixels = _display_values(pixels, ds)
    except (TypeError, ValueError, AttributeError) as exc:  # e.g. an empty Rescale Slope
        raise DicomError(f"{path}: cannot apply its rescale ({type(exc).__name__}: {exc})") from exc
    thickness = ds.get("SliceThickness")
    return Slice(
        pixels=pixels,
        ipp=np.array([float(v) for v in ds.ImagePositionPatient]),
        iop=np.array([float(v) for v in ds.ImageOrientationPatient]),
        spacing=np.array([float(v) for v in ds.PixelSpacing]),
        instance_number=int(ds.InstanceNumber),
        thickness=float(thickness) if thickness not in (None, "") else None,
    )


def _modality_values(arr: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """Stored values through the Modality LUT / rescale (pydicom's ``apply_rescale``).

    An applied rescale gives float32; an identity rescale (slope 1, intercept 0) or none
    keeps ``arr`` and its integer dtype; a Modality LUT gives pydicom's unsigned integers.
    """
    out = apply_rescale(arr, ds)
    if out.dtype.kind != "f":
        return out
    if float(ds.RescaleSlope) == 1 and float(ds.RescaleIntercept) == 0:
        return arr
    return out.astype(np.float32)


def _display_values(pixels: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """Modality values of ``pixels`` with higher meaning brighter (MONOCHROME1 inverted).

    pydicom 3 has no MONOCHROME1 inversion: ``apply_voi_lut``/``apply_windowing`` keep the
    polarity and ``apply_presentation_lut`` only acts on Presentation LUT tags (its INVERSE
    is ``arr.max() - arr``, which would depend on each slice's content). So a MONOCHROME1
    slice is mirrored over the modality range of its stored bits: ``lo + hi - value``, the
    same mapping for every slice of a series.
    """
    values = _modality_values(pixels, ds)
    if str(ds.get("PhotometricInterpretation", "")).strip() != "MONOCHROME1":
        return values
    bits = int(ds.BitsStored)
    if int(ds.PixelRepresentation) == 1:
        stored = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1])
    else:
        stored = np.array([0, 2**bits - 1])
    ends = _modality_values(stored, ds)
    lo, hi = ends.min().item(), ends.max().item()
    return (lo + hi - np.clip(values, lo, hi)).astype(values.dtype)


def stack_slices(slices: list[Slice]) -> list[Stack]:
    """Group slices by (rounded orientation, shape, spacing) and sort each group by position.

    Stacks are ordered by their first slice's position (z descending, then y, then x), so
    the order is independent of file and instance order.
    """
    groups: dict[tuple, list[Slice]] = {}
    for s in slices:
        key = (
            tuple(np.round(s.iop, ORIENTATION_DECIMALS) + 0.0),
            s.pixels.shape,
            tuple(np.round(s.spacing, 4)),
        )
        groups.setdefault(key, []).append(s)
    stacks = []
    for members in groups.values():
        normal = slice_normal(members[0].iop)
        members.sort(key=lambda s: (float(s.ipp @ normal), s.instance_number))
        positions = np.stack([s.ipp for s in members])
        depth = positions @ normal
        steps = np.diff(depth)
        if len(steps):
            spacing = float(np.median(np.abs(steps)))
        else:
            spacing = float(members[0].thickness or 0.0)
        dtype = np.result_type(*[s.pixels.dtype for s in members])
        stacks.append(
            Stack(
                pixels=np.stack([s.pixels for s in members]).astype(dtype, copy=False),
                positions=positions,
                orientation=members[0].iop,
                spacing=members[0].spacing,
                instance_numbers=np.array([s.instance_number for s in members], dtype=np.int64),
                slice_spacing=round(spacing, 6),
            )
        )
    stacks.sort(key=lambda st: (-st.positions[0, 2], st.positions[0, 1], st.positions[0, 0]))
    return stacks


def read_series(
    series_dir: str | Path,
    on_error: Callable[[DicomError], None] | None = None,
) -> list[Stack]:
    """Read every ``*.dcm`` in ``series_dir`` into sorted stacks.

    Args:
        series_dir: one series' directory.
        on_error: called with each DicomError instead of raising (the file is skipped).

    Raises:
        DicomError: on the first bad file when ``on_error`` is None, or when no file of
            the series could be read.
    """
    series_dir = Path(series_dir)
    files = sorted(series_dir.glob("*.dcm"))
    if not files:
        raise DicomError(f"{series_dir}: no .dcm files")
    slices = []
    for f in files:
        try:
            slices.append(read_slice(f))
        except DicomError as exc:
            if on_error is None:
                raise
            on_error(exc)
    if not slices:
        raise DicomError(f"{series_dir}: none of its {len(files)} files could be read")
    return stack_slices(slices)
