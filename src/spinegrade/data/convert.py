"""convert-dicom: every needed series -> one .npy volume per stack plus its geometry.

Output layout under ``out_dir``::

    {study_id}/{series_id}/stack{k}.npy     (S, H, W) pixels, sorted by position
    {study_id}/{series_id}/geometry.json    per stack: positions, orientation, spacing,
                                            instance numbers, slice spacing
    slices.csv                              one row per slice: where each instance went
    skipped.csv                             files/series skipped with on_error=skip

``load_stack`` reads one converted stack back, as ``dicom.read_series`` returns it.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from spinegrade.core.errors import DicomError
from spinegrade.core.io import atomic_dir, write_csv, write_json, write_npy
from spinegrade.core.parallel import parallel_map
from spinegrade.data.dicom import Stack, read_series

log = logging.getLogger(__name__)

SLICE_COLUMNS = (
    "study_id",
    "series_id",
    "series_description",
    "stack",
    "slice",
    "instance_number",
    "ipp_x",
    "ipp_y",
    "ipp_z",
    "depth",
    "rows",
    "cols",
    "row_spacing",
    "col_spacing",
)


@dataclass(frozen=True)
class SeriesJob:
    """One series to convert (picklable for the process pool)."""

    images_dir: str
    study_id: int
    series_id: int
    series_description: str
    out_dir: str
    skip_errors: bool


def convert_one(job: SeriesJob) -> dict:
    """Convert one series; return its slice rows and skipped files.

    Raises DicomError (naming the file) unless ``job.skip_errors``.
    """
    src = Path(job.images_dir) / str(job.study_id) / str(job.series_id)
    skipped: list[dict] = []

    def skip(exc: DicomError) -> None:
        skipped.append({"study_id": job.study_id, "series_id": job.series_id, "error": str(exc)})

    try:
        stacks = read_series(src, on_error=skip if job.skip_errors else None)
    except DicomError as exc:
        if not job.skip_errors:
            raise
        skip(exc)
        return {"rows": [], "skipped": skipped, "stacks": 0}
    dest = Path(job.out_dir) / str(job.study_id) / str(job.series_id)
    geometry = {
        "study_id": job.study_id,
        "series_id": job.series_id,
        "series_description": job.series_description,
        "stacks": [],
    }
    rows = []
    for k, st in enumerate(stacks):
        write_npy(dest / f"stack{k}.npy", st.pixels)
        geometry["stacks"].append({"file": f"stack{k}.npy", **st.geometry()})
        depth = st.positions @ st.normal
        row_spacing, col_spacing = st.spacing.tolist()
        for i, (inst, (x, y, z), d) in enumerate(
            zip(st.instance_numbers.tolist(), st.positions.tolist(), depth.tolist(), strict=True)
        ):
            rows.append(
                {
                    "study_id": job.study_id,
                    "series_id": job.series_id,
                    "series_description": job.series_description,
                    "stack": k,
                    "slice": i,
                    "instance_number": inst,
                    "ipp_x": x,
                    "ipp_y": y,
                    "ipp_z": z,
                    "depth": d,
                    "rows": st.pixels.shape[1],
                    "cols": st.pixels.shape[2],
                    "row_spacing": row_spacing,
                    "col_spacing": col_spacing,
                }
            )
    write_json(dest / "geometry.json", geometry)
    return {"rows": rows, "skipped": skipped, "stacks": len(stacks)}


def load_stack(series_dir: str | Path, k: int) -> Stack:
    """Stack ``k`` of a converted series (``{study}/{series}`` under the output), as
    read_series would return it: pixels (S, H, W) and geometry."""
    series_dir = Path(series_dir)
    geometry = json.loads((series_dir / "geometry.json").read_text())
    g = geometry["stacks"][k]
    return Stack(
        pixels=np.load(series_dir / g["file"]),
        positions=np.asarray(g["positions"], dtype=np.float64),
        orientation=np.asarray(g["orientation"], dtype=np.float64),
        spacing=np.asarray(g["pixel_spacing"], dtype=np.float64),
        instance_numbers=np.asarray(g["instance_numbers"], dtype=np.int64),
        slice_spacing=float(g["slice_spacing"]),
    )


def convert_all(
    series: pd.DataFrame,
    images_root: str | Path,
    out_dir: str | Path,
    workers: int = 1,
    on_error: str = "raise",
) -> dict:
    """Convert the ``needed`` rows of ingest's series table; replace ``out_dir`` atomically.

    Args:
        series: ingest's series table (split, study_id, series_id, series_description, needed).
        images_root: dataset root holding train_images/ and test_images/.
        out_dir: output directory (see module docstring).
        workers: processes to convert series in parallel.
        on_error: ``raise`` on the first bad file, or ``skip`` it and list it in skipped.csv.

    Returns:
        The report (a DVC metric): counts of series, stacks, slices, shapes and skips.
    """
    images_root = Path(images_root)
    todo = series[series["needed"].astype(bool)]
    with atomic_dir(out_dir) as tmp:
        jobs = [
            SeriesJob(
                str(images_root / f"{r.split}_images"),
                int(r.study_id),
                int(r.series_id),
                r.series_description,
                str(tmp),
                on_error == "skip",
            )
            for r in todo.itertuples(index=False)
        ]
        results = parallel_map(convert_one, jobs, workers, "convert-dicom", "series")
        rows = [row for r in results for row in r["rows"]]
        skipped = [s for r in results for s in r["skipped"]]
        slices = pd.DataFrame(rows, columns=list(SLICE_COLUMNS))
        write_csv(Path(tmp) / "slices.csv", slices)
        write_csv(
            Path(tmp) / "skipped.csv",
            pd.DataFrame(skipped, columns=["study_id", "series_id", "error"]),
        )
    for s in skipped:
        log.warning("skipped: %s", s["error"])
    stacks_per_series = Counter(r["stacks"] for r in results)
    per_series = slices.groupby("series_id")
    return {
        "series": len(jobs),
        "series_converted": int(sum(1 for r in results if r["stacks"])),
        "stacks": int(sum(r["stacks"] for r in results)),
        "slices": len(slices),
        "series_with_several_stacks": int(sum(v for k, v in stacks_per_series.items() if k > 1)),
        "skipped_files": len(skipped),
        "image_shapes": {
            f"{r}x{c}": int(n)
            for (r, c), n in sorted(
                Counter(zip(slices["rows"], slices["cols"], strict=True)).items()
            )
        },
        "pixel_spacing_mm": {
            "min": float(slices["row_spacing"].min()) if len(slices) else 0.0,
            "max": float(slices["row_spacing"].max()) if len(slices) else 0.0,
        },
        "slices_per_series": {
            "min": int(per_series.size().min()) if len(slices) else 0,
            "max": int(per_series.size().max()) if len(slices) else 0,
        },
    }
