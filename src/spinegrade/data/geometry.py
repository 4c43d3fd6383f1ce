"""DICOM patient-coordinate geometry (LPS, millimetres), as docs/rsna-data.md describes it.

A slice is described by ImagePositionPatient (IPP, the centre of the first pixel),
ImageOrientationPatient (IOP: row direction R = IOP[0:3], column direction C = IOP[3:6])
and PixelSpacing = [row_spacing, col_spacing]. Pixel (x=col, y=row) lies at
``P = IPP + x * col_spacing * R + y * row_spacing * C``. Also the letters radiologists put
on a slice's edges (``orientation_labels``).
"""

from __future__ import annotations

import numpy as np


def slice_normal(iop: np.ndarray) -> np.ndarray:
    """Unit normal ``cross(R, C)`` of a slice with orientation ``iop`` (6,)."""
    iop = np.asarray(iop, dtype=np.float64)
    n = np.cross(iop[:3], iop[3:])
    return n / np.linalg.norm(n)


def pixel_to_world(
    x: np.ndarray | float,
    y: np.ndarray | float,
    ipp: np.ndarray,
    iop: np.ndarray,
    spacing: np.ndarray,
) -> np.ndarray:
    """World point(s) (..., 3) mm of pixel column ``x`` and row ``y`` of one slice."""
    ipp = np.asarray(ipp, dtype=np.float64)
    iop = np.asarray(iop, dtype=np.float64)
    row_sp, col_sp = float(spacing[0]), float(spacing[1])
    x = np.asarray(x, dtype=np.float64)[..., None]
    y = np.asarray(y, dtype=np.float64)[..., None]
    return ipp + x * col_sp * iop[:3] + y * row_sp * iop[3:]


def world_to_pixel(
    point: np.ndarray, ipp: np.ndarray, iop: np.ndarray, spacing: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project world point(s) (..., 3) onto a slice plane.

    Returns:
        (x, y, d): pixel column, pixel row, and signed distance in mm from the plane along
        its normal.
    """
    iop = np.asarray(iop, dtype=np.float64)
    rel = np.asarray(point, dtype=np.float64) - np.asarray(ipp, dtype=np.float64)
    x = rel @ iop[:3] / float(spacing[1])
    y = rel @ iop[3:] / float(spacing[0])
    d = rel @ slice_normal(iop)
    return x, y, d


def nearest_slice(point: np.ndarray, positions: np.ndarray, iops: np.ndarray) -> tuple[int, float]:
    """Index of the slice whose plane is closest to ``point``, and that distance (mm).

    Args:
        point: (3,) world point.
        positions: (S, 3) IPP of each slice.
        iops: (S, 6) orientation of each slice (stacks may differ).
    """
    positions = np.asarray(positions, dtype=np.float64)
    iops = np.asarray(iops, dtype=np.float64)
    normals = np.cross(iops[:, :3], iops[:, 3:])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    d = np.abs(np.einsum("sk,sk->s", normals, np.asarray(point, dtype=np.float64) - positions))
    i = int(np.argmin(d))
    return i, float(d[i])


# Patient axes (LPS) as the letter at the end each direction points to.
_AXIS_LETTERS = (("R", "L"), ("A", "P"), ("I", "S"))


def direction_letters(direction: np.ndarray) -> str:
    """The end a patient-space direction (3,) points to, as radiologists label it: the
    letters of its axes by weight ("P", or "PS" for an oblique one; a component under a
    third of the largest is left out)."""
    d = np.asarray(direction, dtype=np.float64)
    order = np.argsort(-np.abs(d), kind="stable")
    big = np.abs(d[order[0]])
    return "".join(
        _AXIS_LETTERS[i][int(d[i] > 0)] for i in order if np.abs(d[i]) >= big / 3 and big > 0
    )


def orientation_labels(iop: np.ndarray) -> dict[str, str]:
    """Letters for the four edges of a slice with orientation ``iop`` (6,): columns grow
    toward the right edge along R = iop[0:3], rows toward the bottom along C = iop[3:6]."""
    row, col = np.asarray(iop[:3], dtype=np.float64), np.asarray(iop[3:], dtype=np.float64)
    return {
        "left": direction_letters(-row),
        "right": direction_letters(row),
        "top": direction_letters(-col),
        "bottom": direction_letters(col),
    }
