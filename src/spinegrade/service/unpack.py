"""Unpacking and routing one upload, in a process beside the grading one.

``spinegrade serve`` runs :func:`prepare` in a process pool (``spawn``: the service's
torch threads are never forked) so that the next upload is unpacked while the model grades
the current one. In a thread of the grading process the same work slowed the grading more
than it saved: pydicom's header parsing holds the interpreter lock that torch's Python
side needs between kernels. This module imports no torch, so a worker starts in about a
second.
"""

from __future__ import annotations

from pathlib import Path

from spinegrade.data.routing import Routing, route_study
from spinegrade.data.upload import Unpacked, UploadLimits, unpack_study


def prepare(
    upload: Path, root: Path, overrides: dict[int, str], limits: UploadLimits
) -> tuple[Unpacked, Routing]:
    """Unpack the zip ``upload`` as study 1 under ``root`` (``root/1/{series}/{n}.dcm``)
    and route its series (``overrides``: series id -> type).

    Raises:
        UploadError: as ``unpack_study`` (``root/1`` is then empty).
    """
    dest = root / "1"
    dest.mkdir(parents=True)
    unpacked = unpack_study(upload, dest, limits)
    return unpacked, route_study(dest, overrides, study_id=1, headers=unpacked.headers)


def ready() -> bool:
    """A no-op that starts a worker and, by being in this module, makes it import what
    :func:`prepare` needs (the service calls it once at start-up)."""
    return True
