"""predict: grade studies that have no coordinates: localize, crop, grade, submit.

Per study: read each listed series (DICOM, sorted into stacks as convert-dicom does),
find the level points with the per-series-type localizers (axial level slices by
projecting the sagittal level points through the geometry), cut the same 2.5D crops as
crop-rois around them, grade them with the model compare-backbones chose per group
(a backbone or the ensemble, its probabilities calibrated by the fitted temperatures),
and write the sample_submission format: 25 rows per study, study by study, conditions
and levels in vocab order, probabilities summing to 1. A row that cannot be graded (a
series type missing or unreadable, a level no axial slice reaches) gets its column's
class prior from the training labels, with a warning naming the study.

``load_bundle`` gathers the models and the prior (from a finished ``dvc repro`` or the
Model Registry); ``write_review`` writes the review page of a result.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pandas as pd
from tqdm import tqdm

from spinegrade.core import runtime, vocab
from spinegrade.core.config.crop_rois import CropConfig
from spinegrade.core.config.engine import EngineConfig
from spinegrade.core.config.train_per_condition import TrainPerConditionConfig
from spinegrade.inference.explain import explain_rows, write_explanations
from spinegrade.inference.files import BundleFiles
from spinegrade.inference.grading import (
    Grader,
    grade_points,
    graders_from_directories,
    load_graders,
    select_backbones,
)
from spinegrade.inference.localize import (
    POINT_COLUMNS,
    Localizer,
    localize_study,
    points_from_coordinates,
)
from spinegrade.inference.page import write_page
from spinegrade.inference.review import StudyPictures, review_data, study_pictures
from spinegrade.inference.studies import read_study
from spinegrade.scoring.metrics import fill_submission, solution_from_labels

log = logging.getLogger(__name__)


@dataclass
class Bundle:
    """Everything predict needs besides the images."""

    graders: dict[str, Grader]
    localizers: dict[str, Localizer]
    prior_solution: pd.DataFrame
    crop: CropConfig
    selection: dict[str, str]


class BundleParams(Protocol):
    """The params sections load_bundle reads: all of params.yaml (``load_params``) or a
    stage's sections (``load_sections``) holding these three."""

    @property
    def train_per_condition(self) -> TrainPerConditionConfig: ...

    @property
    def crop_rois(self) -> CropConfig: ...

    @property
    def engine(self) -> EngineConfig: ...


def load_bundle(
    files: BundleFiles,
    params: BundleParams,
    registered: dict[str, tuple[dict, Path]] | None = None,
) -> Bundle:
    """Graders chosen by compare-backbones, the three localizers, and the class prior.

    Args:
        files: the models, localizers, selection and labels to read.
        params: train-per-condition (the recipes the graders were trained with), crop-rois
            (how their crops were cut) and engine (the device and precision to run them in).
        registered: group -> (manifest, directory) of a registered model version
            (tracking.registry.download_choice); then the graders come from there, and
            ``files.models`` and ``files.selection`` are not read.
    """
    train, crop, engine = params.train_per_condition, params.crop_rois, params.engine
    dev = runtime.device(engine.device)
    runtime.check_precision(dev, engine.precision)
    precision = runtime.resolve_precision(dev, engine.precision)
    if registered is not None:
        selection = {g: manifest["model"] for g, (manifest, _) in registered.items()}
        directories = {
            g: {b: path / b for b in manifest["backbones"]}
            for g, (manifest, path) in registered.items()
        }
        graders = graders_from_directories(directories, selection, train, crop, dev, precision)
    else:
        selection_path = Path(files.selection)
        if not selection_path.is_file():
            raise FileNotFoundError(
                f"{selection_path}: no choice of compare-backbones (run `dvc repro` first)"
            )
        selection = select_backbones(
            json.loads(selection_path.read_text()), list(vocab.GROUPS), str(selection_path)
        )
        graders = load_graders(files.models, selection, train, crop, dev, precision)
    localizers = {
        slug: Localizer.load(Path(files.localizers) / slug, dev) for slug in vocab.SERIES_FROM_SLUG
    }
    labels_path = Path(files.labels)
    if not labels_path.is_file():
        raise FileNotFoundError(f"{labels_path}: training label table not found (for the prior)")
    prior = solution_from_labels(pd.read_csv(labels_path))
    return Bundle(graders, localizers, prior, crop, selection)


@dataclass
class PredictResult:
    """A submission (25 rows per study), the points graded, and the warnings given.

    ``at_labels`` holds the same graders' result at the labelled coordinates, when they
    were given (the same studies, read once); ``pictures`` what the review page shows of
    each study, when asked for."""

    submission: pd.DataFrame
    points: pd.DataFrame
    warnings: list[str]
    at_labels: PredictResult | None = None
    pictures: list[StudyPictures] = field(default_factory=list)


def predict_studies(
    images_dir: str | Path,
    series: pd.DataFrame,
    bundle: Bundle,
    coordinates: pd.DataFrame | None = None,
    on_error: str = "skip",
    explain_dir: str | Path | None = None,
    review: bool = False,
    studies: list[int] | None = None,
) -> PredictResult:
    """Grade every study of ``series`` (a test_series_descriptions table) at the points
    the localizers find.

    Args:
        images_dir: ``test_images``-style tree: {study}/{series}/{instance}.dcm.
        series: study_id, series_id, series_description rows.
        bundle: graders, localizers, class prior and crop geometry (load_bundle).
        coordinates: labelled coordinates (train_label_coordinates format): also grade
            at them, into ``at_labels`` (to measure what localization costs).
        on_error: ``skip`` a corrupt file with a warning naming it, or ``raise``.
        explain_dir: write a Grad-CAM PNG per graded (localized) row under it.
        review: gather each study's pictures for the review page (``pictures``).
        studies: the studies to grade, in this order (default: those ``series`` lists); one
            with no series in ``series`` gets the class prior, with warnings.
    """
    listed = series["study_id"].astype("int64").tolist()
    study_ids = list(dict.fromkeys(listed if studies is None else studies))
    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        log.debug("%s", message)

    found: dict[str, list[tuple[pd.DataFrame, pd.DataFrame]]] = {"localized": [], "labels": []}
    pictures: list[StudyPictures] = []
    for study in tqdm(study_ids, desc="predict", unit="study"):
        first_warning = len(warnings)
        vols = read_study(images_dir, study, series[series["study_id"] == study], on_error, warn)
        points = {"localized": localize_study(vols, bundle.localizers, warn)}
        if coordinates is not None:
            mine = coordinates[coordinates["study_id"] == study]
            points["labels"] = points_from_coordinates(vols, mine)
        explanations = []
        for key, pts in points.items():
            if not len(pts):
                continue
            graded, crops = grade_points(vols, pts, bundle.graders, bundle.crop)
            if key == "localized" and (explain_dir is not None or review):
                explanations = explain_rows(graded, crops, pts, bundle.graders)
                if explain_dir is not None:
                    write_explanations(explain_dir, explanations)
            found[key].append((graded, pts))
        if review:
            pictures.append(
                study_pictures(
                    vols,
                    points["localized"],
                    points.get("labels"),
                    explanations,
                    warnings[first_warning:],
                )
            )

    def result(key: str) -> PredictResult:
        graded = pd.concat(
            [g for g, _ in found[key]] or [pd.DataFrame(columns=list(vocab.SUBMISSION_HEADER))]
        )
        points = pd.concat([p for _, p in found[key]] or [pd.DataFrame(columns=POINT_COLUMNS)])
        submission = fill_submission(graded, study_ids, bundle.prior_solution)
        n_prior = len(submission) - int(submission["row_id"].isin(graded["row_id"]).sum())
        if n_prior:
            log.debug("%s: %d of %d rows took the class prior", key, n_prior, len(submission))
        return PredictResult(submission, points.reset_index(drop=True), warnings)

    out = result("localized")
    out.pictures = pictures
    if coordinates is not None:
        out.at_labels = result("labels")
    return out


def write_review(
    path: str | Path,
    result: PredictResult,
    models: dict[str, str],
    solution: pd.DataFrame | None = None,
    summary: dict[str, str] | None = None,
) -> Path:
    """The review page of a ``predict_studies(..., review=True)`` result, as one HTML file.

    Args:
        models: the model grading each group (Bundle.selection).
        solution: the answers (scoring.metrics solution rows), when known: truth, losses
            and, with ``result.at_labels``, the labelled points on the page.
        summary: label -> text, shown in the page's header (e.g. the rsna score).
    """
    labelled = result.at_labels.points if result.at_labels is not None else None
    index, studies = review_data(
        result.pictures, result.submission, result.points, labelled, solution, models, summary
    )
    return write_page(path, index, studies)
