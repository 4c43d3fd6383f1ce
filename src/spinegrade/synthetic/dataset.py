"""A synthetic, RSNA-format lumbar spine dataset whose images encode severity.

Per study (all from ``np.random.default_rng([seed, index])``):

1. latent degeneration per condition, side and level (``severity.draw_degeneration``):
   shared study and disc factors, peaking at L4/L5 and L5/S1; true grades are thresholds
   on it that reproduce the real class balance, and the recorded labels add a reader's
   error (``reader_noise`` x ``difficulty``), so they disagree only near a threshold;
2. an analytic lumbar spine in LPS patient coordinates (``anatomy.build_anatomy``) whose
   canal, lateral recesses and foramina narrow continuously with the latent:

   - spinal canal stenosis: the disc bulges and the ligamentum flavum thickens into the canal;
   - neural foraminal narrowing: the fat around the exiting root (bright on T1) shrinks;
   - subarticular stenosis: the CSF lobe of the lateral recess (bright on T2) shrinks;

3. the study's series (``series``: two sagittal stacks, one or two axial blocks; a series
   type is sometimes missing), each with its own scanner (``imaging``): contrast
   per sequence, point spread, coil bias, Rician noise, some motion artifacts.

Every slice is rendered on its own pixel grid through its DICOM geometry, so sagittal and
axial series of one study share one frame of reference and labelled coordinates fall on
the anatomy they name. Output is the competition layout (docs/rsna-data.md) plus the
held-out test set's answers in two extra files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from spinegrade.core import vocab
from spinegrade.core.config.synthesize import SyntheticConfig
from spinegrade.core.io import atomic_dir
from spinegrade.core.parallel import parallel_map
from spinegrade.core.vocab import TEST_COORDINATES_CSV, TEST_LABELS_CSV
from spinegrade.data.geometry import world_to_pixel
from spinegrade.synthetic.anatomy import MISSING_ODDS, build_anatomy
from spinegrade.synthetic.series import (
    FAKE_NAMES,
    SeriesPlan,
    _axial_plan,
    _instance_numbers,
    _sagittal_plan,
    _write_series,
)
from spinegrade.synthetic.severity import draw_degeneration, read_grades

log = logging.getLogger(__name__)


@dataclass
class StudyPlan:
    study_id: int
    series_ids: list[int]
    index: int


def generate_study(args: tuple) -> dict[str, list]:
    """Generate one study's DICOM series under ``images_dir``; return its CSV rows.

    ``args`` is (cfg, seed, index, study_id, series_ids, images_dir), picklable for a
    process pool. Deterministic in (seed, index).
    """
    cfg, seed, index, study_id, series_ids, images_dir = args
    rng = np.random.default_rng([seed, index])
    degeneration = draw_degeneration(rng)
    reader_sd = cfg.reader_noise * cfg.difficulty
    recorded = {
        g: read_grades(rng, degeneration, g, reader_sd).T for g in vocab.GROUPS
    }  # (5, sides)
    anatomy = build_anatomy(rng, degeneration, cfg.difficulty)
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

    # Recorded labels and coordinates on the series showing each condition.
    label_row: dict[str, object] = {"study_id": study_id}
    coords: list[dict] = []
    for group_name, group in vocab.GROUPS.items():
        for side_i, condition in enumerate(group.conditions):
            for k, level in enumerate(vocab.LEVELS):
                label = int(recorded[group_name][k, side_i])
                odds = MISSING_ODDS[group_name][k] / np.mean(MISSING_ODDS[group_name])
                is_missing = rng.random() < cfg.missing_label_rate * odds
                label_row[f"{condition}_{level}"] = "" if is_missing else vocab.SEVERITIES[label]
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
    log.debug("wrote %d train and %d test studies to %s", len(train), len(test), out_dir)
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
