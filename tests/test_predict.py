"""spinegrade predict on tiny synthetic test studies: format, order, fallbacks, explain, CLI.

The models here are small and untrained (what they predict is not the point): these tests
check the plumbing around them. That trained models localize and grade well is measured by
the predict stage (tests/test_pipeline.py on tiny data, reports/predict.json on the real
run).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers import (
    BACKBONE,
    CROP,
    assert_no_identifiers,
    header_identifiers,
    predict_args,
    untrained_localizers,
    write_bundle,
)
from mlflow.tracking import MlflowClient

from spinegrade.cli.main import main as spinegrade_main
from spinegrade.core import vocab
from spinegrade.core.config.predict import PredictConfig
from spinegrade.core.config.recipe import Recipe
from spinegrade.core.config.train_per_condition import TrainPerConditionConfig
from spinegrade.core.errors import DataError
from spinegrade.core.vocab import TEST_COORDINATES_CSV, TEST_LABELS_CSV
from spinegrade.data.tables import read_labels, read_series_table
from spinegrade.evaluation.localization import summarize_localization
from spinegrade.evaluation.predict import held_out_headline, predict_report, review_summary
from spinegrade.inference.explain import cam_layer, grad_cam
from spinegrade.inference.grading import Grader, Member, load_graders, select_backbones
from spinegrade.inference.localize import (
    MAX_AXIAL_MM,
    POINT_COLUMNS,
    localization_errors,
)
from spinegrade.inference.predict import Bundle, predict_studies
from spinegrade.models.backbones import create_backbone, predict_proba
from spinegrade.models.inputs import CropDataset
from spinegrade.scoring.calibration import apply_temperature
from spinegrade.scoring.metrics import solution_from_labels, solution_from_wide, submission_rows
from spinegrade.tracking import store as tracking
from spinegrade.tracking.registry import register_choice


def _graders() -> dict[str, Grader]:
    torch.manual_seed(0)
    return {
        g: Grader(
            g,
            BACKBONE,
            [Member(BACKBONE, create_backbone(BACKBONE, CROP.slices, CROP.size_px).eval())],
        )
        for g in vocab.GROUPS
    }


@pytest.fixture(scope="module")
def bundle(tiny_ingest) -> Bundle:
    prior = solution_from_labels(tiny_ingest.labels)
    return Bundle(
        _graders(), untrained_localizers(), prior, CROP, {g: BACKBONE for g in vocab.GROUPS}
    )


@pytest.fixture(scope="module")
def predicted(tiny_dataset, bundle, tmp_path_factory):
    series = read_series_table(tiny_dataset / "test_series_descriptions.csv")
    explain = tmp_path_factory.mktemp("explain")
    result = predict_studies(tiny_dataset / "test_images", series, bundle, explain_dir=explain)
    return series, result, explain


def _expected_ids(study_ids) -> list[str]:
    return [
        vocab.row_id(s, c, lv) for s in study_ids for c in vocab.CONDITIONS for lv in vocab.LEVELS
    ]


def test_submission_has_25_rows_per_study_in_sample_submission_order(predicted):
    series, result, _ = predicted
    sub = result.submission
    studies = list(dict.fromkeys(series["study_id"]))
    assert list(sub.columns) == list(vocab.SUBMISSION_HEADER)
    assert sub["row_id"].tolist() == _expected_ids(studies)
    proba = sub[list(vocab.SEVERITY_COLUMNS)].to_numpy()
    assert np.isfinite(proba).all() and (proba >= 0).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)


def test_sagittal_levels_are_localized_and_axial_levels_projected(predicted):
    series, result, _ = predicted
    pts = result.points
    assert list(pts.columns) == POINT_COLUMNS
    for study, rows in pts.groupby("study_id"):
        types = set(series.loc[series["study_id"] == study, "series_description"])
        sagittal = rows[~rows["condition"].isin(vocab.GROUPS["subarticular"].conditions)]
        expected = 5 * (vocab.SAGITTAL_T2 in types) + 10 * (vocab.SAGITTAL_T1 in types)
        assert len(sagittal) == expected
        got = set(zip(rows["condition"], rows["level"], strict=True))
        assert len(got) == len(rows), "a (condition, level) localized twice"
        # Each axial point sits on the slice its level's spinal point projects onto.
        spinal = rows[rows["condition"] == vocab.CONDITIONS[0]].set_index("level")
        axial = rows[rows["condition"].isin(vocab.GROUPS["subarticular"].conditions)]
        for r in axial.itertuples(index=False):
            assert r.level in vocab.LEVELS
            if r.level in spinal.index:
                s = spinal.loc[r.level]
                ortho = np.array([s.wx, s.wy, s.wz]) - np.array([r.wx, r.wy, r.wz])
                assert abs(ortho[2]) < MAX_AXIAL_MM + 6.0  # near-axial planes: mostly z


def test_explain_writes_one_png_per_graded_row(predicted):
    _, result, explain = predicted
    pngs = sorted(explain.rglob("*.png"))
    assert len(pngs) == len(result.points)
    assert pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ids = {p.stem for p in pngs}
    assert ids <= set(result.submission["row_id"])


def test_explanation_image_puts_the_cam_beside_the_untouched_slice():
    from spinegrade.inference.explain import SCALE, TITLE_PX, explanation_image

    slice_ = np.full((16, 16), 100, dtype=np.uint8)
    cam = np.zeros((16, 16))
    cam[4, 12] = 1.0  # one hot spot, top right
    picture = np.asarray(explanation_image(slice_, cam, "row: Severe p=0.90"))
    side = 16 * SCALE
    assert picture.shape[0] == side + TITLE_PX and picture.shape[1] > 2 * side
    left = picture[TITLE_PX:, :side]
    right = picture[TITLE_PX:, -side:]
    assert (left == 100).all()  # the slice as it is, in gray
    hot = right[4 * SCALE + SCALE // 2, 12 * SCALE + SCALE // 2]
    cold = right[12 * SCALE, 2 * SCALE]
    assert hot[0] > cold[0] + 40  # jet: red at the peak, blue where the CAM is 0
    assert cold[2] > cold[0]
    assert (picture[:TITLE_PX] < 255).any()  # the title is drawn


def test_study_missing_a_series_type_gets_the_prior_and_a_warning(tiny_dataset, bundle, tmp_path):
    series = read_series_table(tiny_dataset / "test_series_descriptions.csv")
    study = int(series["study_id"].iloc[0])
    dropped = series[
        ~((series["study_id"] == study) & (series["series_description"] == vocab.SAGITTAL_T1))
    ]
    result = predict_studies(tiny_dataset / "test_images", dropped, bundle)
    sub = result.submission.set_index("row_id")
    assert len(sub) == 25 * series["study_id"].nunique()
    assert any(str(study) in w and vocab.SAGITTAL_T1 in w for w in result.warnings)
    from spinegrade.scoring.metrics import class_prior_submission

    expected = class_prior_submission(bundle.prior_solution, [study]).set_index("row_id")
    foraminal = [vocab.row_id(study, c, lv) for c in vocab.CONDITIONS[1:3] for lv in vocab.LEVELS]
    pd.testing.assert_frame_equal(
        sub.loc[foraminal], expected.loc[foraminal, list(vocab.SEVERITY_COLUMNS)], atol=1e-12
    )
    # The study's other groups are still graded (not the prior).
    spinal = vocab.row_id(study, vocab.CONDITIONS[0], "l1_l2")
    assert not np.allclose(sub.loc[spinal].to_numpy(), expected.loc[spinal].to_numpy())


def test_corrupt_file_is_named_and_skipped_or_raised(tiny_dataset, bundle, tmp_path):
    images = tmp_path / "test_images"
    shutil.copytree(tiny_dataset / "test_images", images)
    series = read_series_table(tiny_dataset / "test_series_descriptions.csv")
    r = series.iloc[0]
    bad = sorted((images / str(r.study_id) / str(r.series_id)).glob("*.dcm"))[0]
    bad.write_bytes(b"not a dicom file")
    result = predict_studies(images, series, bundle)
    assert any(str(bad) in w for w in result.warnings), result.warnings
    assert len(result.submission) == 25 * series["study_id"].nunique()
    from spinegrade.core.errors import DicomError

    with pytest.raises(DicomError, match=bad.name):
        predict_studies(images, series, bundle, on_error="raise")


@pytest.fixture(scope="module")
def predicted_with_labels(tiny_dataset, bundle, predicted):
    """``predicted``'s studies again, also graded at their labelled coordinates."""
    series, _, _ = predicted
    coords = pd.read_csv(tiny_dataset / TEST_COORDINATES_CSV)
    return predict_studies(tiny_dataset / "test_images", series, bundle, coordinates=coords)


def test_labelled_coordinates_are_graded_from_the_same_read(
    tiny_dataset, predicted, predicted_with_labels
):
    series, found, _ = predicted
    coords = pd.read_csv(tiny_dataset / TEST_COORDINATES_CSV)
    both = predicted_with_labels
    pd.testing.assert_frame_equal(both.submission, found.submission)  # localized: unchanged
    result = both.at_labels
    assert len(result.points) == len(coords)
    assert (result.points["source"] == "labels").all()
    assert result.submission["row_id"].tolist() == found.submission["row_id"].tolist()
    assert found.at_labels is None
    errors = localization_errors(found.points, result.points)
    assert len(errors) > 0 and (errors["error_mm"] >= 0).all()
    assert set(errors["group"]) <= set(vocab.GROUPS)
    # A point compared with itself is 0 mm away, on the same slice.
    same = localization_errors(result.points, result.points)
    assert (same["error_mm"] == 0).all()
    summary = summarize_localization(same)
    assert summary["all"]["slice_exact"] == 1.0 and summary["all"]["points"] == len(coords)


def test_the_report_scores_the_submission_beside_its_references_when_the_answers_are_known(
    tiny_dataset, bundle, predicted, predicted_with_labels
):
    series, found, _ = predicted
    settings = PredictConfig(bootstrap_resamples=100)
    counts = predict_report(series, found, bundle.prior_solution, settings)
    assert counts.errors is None and counts.report == {
        "studies": series["study_id"].nunique(),
        "rows": len(found.submission),
        "points_found": len(found.points),
        "warnings": len(found.warnings),
    }
    assert review_summary(counts.report) == {}
    assert held_out_headline(counts.report) == {}  # nothing to score without the answers
    solution = solution_from_wide(read_labels(tiny_dataset / TEST_LABELS_CSV))
    with pytest.raises(ValueError, match="labelled coordinates"):
        predict_report(series, found, bundle.prior_solution, settings, solution)
    scored = predict_report(
        series, predicted_with_labels, bundle.prior_solution, settings, solution
    )
    report = scored.report
    names = ["localized", "labelled_points", "class_prior"]
    assert list(report["rsna_score"]) == list(report["rsna_score_ci"]) == names
    for name, ci in report["rsna_score_ci"].items():
        assert ci["score"]["estimate"] == pytest.approx(report["rsna_score"][name]["score"])
    assert report["localization"]["all"]["points"] == len(scored.errors) > 0
    assert held_out_headline(report) == {  # predict's metrics summary, from its report
        "rsna_score": report["rsna_score"]["localized"]["score"],
        "point_error_mm_median": report["localization"]["all"]["error_mm_median"],
    }
    assert list(review_summary(report)) == [
        "rsna score, localized",
        "rsna score, labelled points",
        "rsna score, class prior",
        "point error, median",
    ]


def test_submission_rows_fill_ungraded_rows_with_the_prior_and_renormalize():
    graded = pd.DataFrame(
        {
            "row_id": [vocab.row_id(5, vocab.CONDITIONS[0], "l1_l2")],
            "normal_mild": [2.0],
            "moderate": [1.0],
            "severe": [1.0],
        }
    )
    ids = _expected_ids([5, 3])
    prior = pd.DataFrame({"row_id": ids, "normal_mild": 0.5, "moderate": 0.3, "severe": 0.2})
    out = submission_rows([5, 3], graded, prior)
    assert out["row_id"].tolist() == ids
    assert out.iloc[0][list(vocab.SEVERITY_COLUMNS)].tolist() == [0.5, 0.25, 0.25]
    assert out.iloc[1:][list(vocab.SEVERITY_COLUMNS)].eq([0.5, 0.3, 0.2]).all().all()


def test_select_backbones_reads_the_choice_and_the_comparison_report():
    """predict reads compare-backbones' choice (group -> model); the comparison report
    (keys {group}.{model}) still works and gives the lowest group term; anything else is
    one error naming the file."""
    choice = {"spinal": "b", "foraminal": "ensemble", "subarticular": "a"}
    assert select_backbones(choice, ["spinal", "foraminal"]) == {
        "spinal": "b",
        "foraminal": "ensemble",
    }
    comparison = {
        "spinal.a": {"verdict": "worse", "rsna_group_term": 0.3},
        "spinal.b": {"verdict": "best", "rsna_group_term": 0.2},
        "foraminal.a": {"verdict": "best", "rsna_group_term": 0.1},
    }
    assert select_backbones(comparison, ["spinal", "foraminal"]) == {
        "spinal": "b",
        "foraminal": "a",
    }
    with pytest.raises(DataError, match="subarticular"):
        select_backbones(comparison, ["subarticular"])
    with pytest.raises(DataError, match=r"^choice\.json: no model chosen for group 'foraminal'"):
        select_backbones({"spinal": "b"}, ["spinal", "foraminal"], "choice.json")
    old_choice = {"spinal": {"model": "b", "rsna_group_term": 0.2}}  # model and term: refused
    for bad in (old_choice, {}, ["spinal"], {"spinal.a": 0.3}):
        with pytest.raises(DataError, match=r"^x\.json: neither compare-backbones' choice"):
            select_backbones(bad, ["spinal"], "x.json")


def test_grader_calibrates_each_fold_model_and_averages_backbones():
    torch.manual_seed(0)
    crops = np.random.default_rng(0).integers(0, 255, (6, CROP.slices, 32, 32), dtype=np.uint8)
    a1, a2, b = (create_backbone(BACKBONE, CROP.slices, 32).eval() for _ in range(3))
    ds = CropDataset(crops, np.zeros(6, dtype=np.int64))
    p = {name: predict_proba(m, ds, 64) for name, m in (("a1", a1), ("a2", a2), ("b", b))}
    grader = Grader(
        "spinal",
        vocab.ENSEMBLE,
        [Member("a", a1, 2.0), Member("a", a2, 0.5), Member("b", b, 1.0)],
    )
    # backbone a's two fold models first, then the two backbones with equal weight
    a = (apply_temperature(p["a1"], 2.0) + apply_temperature(p["a2"], 0.5)) / 2
    np.testing.assert_allclose(grader.predict(crops), (a + p["b"]) / 2, rtol=1e-6)


def test_load_graders_reads_temperatures_and_builds_the_ensemble(tmp_path, tiny_ingest):
    write_bundle(tmp_path, tiny_ingest)
    train = TrainPerConditionConfig(backbones=(BACKBONE,), recipes={BACKBONE: Recipe()})
    graders = load_graders(tmp_path / "models", {"spinal": vocab.ENSEMBLE}, train, CROP)
    assert graders["spinal"].backbone == vocab.ENSEMBLE
    assert [(m.backbone, m.temperature) for m in graders["spinal"].members] == [(BACKBONE, 1.5)]
    (tmp_path / "models" / "spinal" / BACKBONE / "metrics.json").write_text('{"folds": {}}')
    with pytest.raises(DataError, match=r"metrics.json: no temperature for fold0"):
        load_graders(tmp_path / "models", {"spinal": BACKBONE}, train, CROP)


def test_series_csv_errors_name_the_file_and_row(tmp_path):
    bad = tmp_path / "series.csv"
    bad.write_text("study_id,series\n1,2\n")
    with pytest.raises(DataError, match="wrong header"):
        read_series_table(bad)
    bad.write_text("study_id,series_id,series_description\n1,2,Axial T2\n1,3,Coronal T1\n")
    with pytest.raises(DataError, match=r"line 3.*Coronal T1"):
        read_series_table(bad)


def test_predict_command_writes_a_submission(tiny_dataset, tiny_ingest, tmp_path, capsys):
    write_bundle(tmp_path, tiny_ingest)
    out = tmp_path / "out" / "submission.csv"
    args = predict_args(
        tiny_dataset,
        tmp_path,
        out=str(out),
        points=str(tmp_path / "points.csv"),
        explain=str(tmp_path / "explain"),
    )
    assert spinegrade_main(args) == 0
    sub = pd.read_csv(out)
    n = pd.read_csv(tiny_dataset / "test_series_descriptions.csv")["study_id"].nunique()
    assert len(sub) == 25 * n and list(sub.columns) == list(vocab.SUBMISSION_HEADER)
    assert "wrote" in capsys.readouterr().out
    assert len(list((tmp_path / "explain").rglob("*.png"))) == len(
        pd.read_csv(tmp_path / "points.csv")
    )


def test_predict_from_the_model_registry_grades_as_the_files_do(
    tiny_dataset, tiny_ingest, tmp_path, monkeypatch, no_tracking_uri
):
    """compare-backbones registers each group's choice with alias champion; predict
    --registry loads it back and writes the same submission as from models/."""
    monkeypatch.chdir(tmp_path)
    write_bundle(tmp_path, tiny_ingest)
    experiment = "registry-test"
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({**params, "mlflow": {"experiment": experiment}})
    )
    tracking.setup(experiment, tmp_path)
    exp = tracking.setup(f"{experiment}-comparison", tmp_path)
    for g in vocab.GROUPS:
        run = MlflowClient().create_run(exp, run_name=f"{g} / {BACKBONE}")
        register_choice(
            experiment, run.info.run_id, g, BACKBONE, {BACKBONE: tmp_path / "models" / g / BACKBONE}
        )
    # a second version replaces the alias's target: predict must follow the alias
    register_choice(
        experiment,
        run.info.run_id,
        "subarticular",
        BACKBONE,
        {BACKBONE: tmp_path / "models" / "subarticular" / BACKBONE},
    )
    alias = MlflowClient().get_model_version_by_alias(f"{experiment}-subarticular", "champion")
    assert int(alias.version) == 2

    from_files, from_registry = tmp_path / "files.csv", tmp_path / "registry.csv"
    assert spinegrade_main(predict_args(tiny_dataset, tmp_path, out=str(from_files))) == 0
    shutil.rmtree(tmp_path / "models")  # nothing from models/ may be read
    args = [*predict_args(tiny_dataset, tmp_path, out=str(from_registry)), "--registry"]
    assert spinegrade_main(args) == 0
    pd.testing.assert_frame_equal(pd.read_csv(from_files), pd.read_csv(from_registry))


def test_predict_command_errors_are_one_clear_line(tiny_dataset, tiny_ingest, tmp_path, caplog):
    write_bundle(tmp_path, tiny_ingest)
    missing = predict_args(tiny_dataset, tmp_path, selection=str(tmp_path / "x.json"))
    assert spinegrade_main(missing) == 1
    assert "x.json" in caplog.text and "dvc repro" in caplog.text
    old = tmp_path / "old-choice.json"  # the model with its term: not a choice predict reads
    old.write_text(
        json.dumps({g: {"model": BACKBONE, "rsna_group_term": 0.5} for g in vocab.GROUPS})
    )
    assert spinegrade_main(predict_args(tiny_dataset, tmp_path, selection=str(old))) == 1
    assert "old-choice.json: neither compare-backbones' choice" in caplog.text
    shutil.rmtree(tmp_path / "localizers" / "axial_t2")
    assert spinegrade_main(predict_args(tiny_dataset, tmp_path)) == 1
    assert "axial_t2" in caplog.text
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize(
    ("backbone", "kwargs"),
    [
        ("resnet50", {}),
        ("convnext_tiny", {"ls_init_value": 1.0}),
        ("swin_tiny_patch4_window7_224", {"window_size": 3}),  # channels-last features
    ],
)
def test_grad_cam_of_each_default_backbone(backbone, kwargs):
    torch.manual_seed(0)
    model = create_backbone(backbone, 3, 48, kwargs).eval()
    x = torch.randn(1, 3, 48, 48)
    cams = [grad_cam(model, x, target) for target in range(3)]
    for cam in cams:
        assert cam.shape == (48, 48) and np.isfinite(cam).all()
        assert cam.min() >= 0 and cam.max() <= 1
    assert any(cam.max() == pytest.approx(1.0) for cam in cams)
    # a map with something to show: read from a stage at least 4 x 4 (the last one is
    # 1 x 1 or 2 x 2 at 48 px, which made every map one flat value)
    name, _ = cam_layer(model, 48)
    assert name != model.feature_info[-1]["module"]
    assert any(cam.std() > 0.05 for cam in cams)
    assert all(p.grad is None for p in model.parameters()), "Grad-CAM left gradients behind"


def test_predict_outputs_carry_no_patient_identifiers(tiny_dataset, predicted):
    _, result, explain = predicted
    out = explain.parent / "tables"
    out.mkdir(exist_ok=True)
    result.submission.to_csv(out / "submission.csv", index=False)
    result.points.to_csv(out / "points.csv", index=False)
    (out / "warnings.txt").write_text("\n".join(result.warnings))
    files = [*out.iterdir(), *explain.rglob("*.png")]
    assert_no_identifiers(files, header_identifiers(tiny_dataset))
