"""The review page of a real prediction: what predict gathers for it (inference.review), the
page it writes, and that page in a real browser (Debian's chromium, headless).

tests/test_review_page.py tests the page itself on made-up data; here the data comes from
predict_studies on the tiny synthetic dataset, its answers and its labelled points.
"""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pandas as pd
import pytest
from browser import MISSING, chromium_path, offline_page
from helpers import assert_no_identifiers, header_identifiers, predict_args, write_bundle
from PIL import Image
from test_predict import bundle  # noqa: F401  (the module's fixture)

from spinegrade.cli.main import main as spinegrade_main
from spinegrade.core import vocab
from spinegrade.data.tables import read_labels, read_series_table
from spinegrade.inference.localize import localization_errors
from spinegrade.inference.predict import predict_studies, write_review
from spinegrade.scoring.metrics import EPS, rsna_score, solution_from_wide


@pytest.fixture(scope="module")
def reviewed(tiny_dataset, bundle):  # noqa: F811
    """A prediction of the tiny test studies with answers, one study without its Sagittal
    T1 series, and its review data."""
    series = read_series_table(tiny_dataset / "test_series_descriptions.csv")
    study = int(series["study_id"].iloc[0])
    series = series[
        ~((series["study_id"] == study) & (series["series_description"] == vocab.SAGITTAL_T1))
    ]
    coords = pd.read_csv(tiny_dataset / vocab.TEST_COORDINATES_CSV)
    result = predict_studies(
        tiny_dataset / "test_images", series, bundle, coordinates=coords, review=True
    )
    solution = solution_from_wide(read_labels(tiny_dataset / vocab.TEST_LABELS_CSV))
    return study, result, solution


def _image(uri: str) -> Image.Image:
    assert uri.startswith("data:image/")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def test_review_data_holds_every_row_with_its_crop_truth_and_cost(reviewed):
    from spinegrade.inference.review import review_data

    missing, result, solution = reviewed
    labelled = result.at_labels.points
    index, studies = review_data(
        result.pictures, result.submission, result.points, labelled, solution, {}
    )
    ids = list(dict.fromkeys(result.submission["row_id"].str.split("_").str[0].astype(int)))
    assert [s["study_id"] for s in index["studies"]] == ids
    assert [s["study_id"] for s in studies] == ids
    sub = result.submission.set_index("row_id")
    truth = solution.set_index("row_id")
    for entry, detail in zip(index["studies"], studies, strict=True):
        rows = detail["rows"]
        assert len(rows) == 25 and entry["graded"] + entry["prior"] == 25
        for r in rows:
            proba = sub.loc[r["row_id"], list(vocab.SEVERITY_COLUMNS)].to_numpy(float)
            assert r["probabilities"] == pytest.approx(proba, abs=1e-4)
            assert (r["crop"] is None) == r["prior"]
            if r["row_id"] in truth.index:  # the row's cost in the official metric
                t = truth.loc[r["row_id"]]
                clipped = np.clip(proba, EPS, 1.0 - EPS)
                p = clipped[int(t["target"])] / clipped.sum()
                assert r["truth"] == vocab.SEVERITIES[int(t["target"])]
                assert r["weight"] == t["weight"]
                assert r["loss"] == pytest.approx(-t["weight"] * np.log(p), rel=1e-6)
        score = rsna_score(solution[solution["study_id"] == entry["study_id"]], result.submission)
        assert entry["loss"] == pytest.approx(score["score"])
    worst = max(index["studies"], key=lambda s: s["loss"])
    assert worst["loss"] > min(s["loss"] for s in index["studies"])

    entry = next(s for s in index["studies"] if s["study_id"] == missing)
    assert entry["missing_series"] == [vocab.SAGITTAL_T1]
    assert entry["prior"] >= 10 and any(vocab.SAGITTAL_T1 in w for w in entry["warnings"])
    detail = studies[ids.index(missing)]
    foraminal = [r for r in detail["rows"] if r["group"] == "foraminal"]
    assert all(r["prior"] for r in foraminal)
    assert not any(v["id"].startswith("sagittal_t1") for v in detail["views"])


def test_points_are_drawn_where_they_were_found_and_distances_match(reviewed):
    from spinegrade.inference.review import review_data

    _, result, solution = reviewed
    found, labelled = result.points, result.at_labels.points
    _, studies = review_data(result.pictures, result.submission, found, labelled, solution)
    errors = localization_errors(found, labelled)
    error_of = dict(zip(_row_ids(errors), errors["error_mm"], strict=True))
    found_at = {
        rid: r for rid, r in zip(_row_ids(found), found.itertuples(index=False), strict=True)
    }
    geometry = {(p.study_id, v.id): v for p in result.pictures for v in p.views}
    on_own_stack = 0
    for detail in studies:
        for view in detail["views"]:
            image = _image(view["image"])
            assert image.size == (view["width"], view["height"])
            assert set(view["orientation"]) == {"left", "right", "top", "bottom"}
            v = geometry[(detail["study_id"], view["id"])]
            for p in view["points"]:
                assert 0 <= p["x"] <= view["width"] and 0 <= p["y"] <= view["height"]
                assert p["distance_mm"] == (
                    pytest.approx(error_of[p["row_id"]]) if p["row_id"] in error_of else None
                )
                f = found_at[p["row_id"]] if p["kind"] == "found" else None
                if f is not None and (f.series_id, f.stack) == v.where[:2]:
                    # slices of a stack are parallel and aligned: the same pixel on each
                    assert p["x"] == pytest.approx((f.x + 0.5) * v.scale, abs=0.02)
                    assert p["y"] == pytest.approx((f.y + 0.5) * v.scale, abs=0.02)
                    on_own_stack += 1
        shown = {(v["id"], p["row_id"]) for v in detail["views"] for p in v["points"]}
        for r in detail["rows"]:
            assert r["view"] is None or (r["view"], r["row_id"]) in shown
    assert on_own_stack >= len(found) // 2, "too few found points were checked on their stack"


def _row_ids(points: pd.DataFrame) -> list[str]:
    return [
        vocab.row_id(s, c, lv)
        for s, c, lv in zip(points["study_id"], points["condition"], points["level"], strict=True)
    ]


def test_the_page_carries_no_patient_identifier(reviewed, tiny_dataset, tmp_path):
    _, result, solution = reviewed
    page = write_review(tmp_path / "review.html", result, {"spinal": "resnet18"}, solution)
    assert_no_identifiers([page], header_identifiers(tiny_dataset))
    text = page.read_text()
    assert "http://" not in text and "https://" not in text
    assert len(re.findall(r'id="study-\d+"', text)) == len(result.pictures)


@pytest.mark.slow
@pytest.mark.chromium
def test_a_study_without_a_series_type_shows_the_warning_and_its_prior_rows(reviewed, tmp_path):
    if not chromium_path().is_file():
        pytest.fail(MISSING)
    missing, result, solution = reviewed
    page = write_review(tmp_path / "review.html", result, {}, solution)
    with offline_page(page.as_uri()) as (browser_page, problems):
        rows = browser_page.locator("#overview tbody tr[data-study-id]")
        rows.first.wait_for()
        assert rows.count() == len(result.pictures)
        browser_page.locator(f'#overview tbody tr[data-study-id="{missing}"] a').first.click()
        browser_page.locator("#study-view").wait_for(state="visible")
        assert vocab.SAGITTAL_T1 in browser_page.locator("#study-view .warnings").inner_text()
        assert browser_page.locator("#rows tbody tr[data-row-id]").count() == 25
        prior = browser_page.locator("#rows tbody tr.prior")
        prior_ids = {prior.nth(i).get_attribute("data-row-id") for i in range(prior.count())}
        foraminal = {
            vocab.row_id(missing, c, lv)
            for c in vocab.GROUPS["foraminal"].conditions
            for lv in vocab.LEVELS
        }
        assert foraminal <= prior_ids
        assert browser_page.locator("#rows tbody tr.prior .badge.prior").count() == len(prior_ids)
        browser_page.wait_for_function("[...document.images].every(i => i.complete)")
        loaded = browser_page.eval_on_selector_all(
            "#study-view .view img", "els => els.map(e => e.naturalWidth > 0)"
        )
        assert loaded and all(loaded)
    assert not problems, problems


def test_predict_command_writes_the_review_page(tiny_dataset, tiny_ingest, tmp_path, capsys):
    write_bundle(tmp_path, tiny_ingest)
    page = tmp_path / "review.html"
    args = predict_args(
        tiny_dataset,
        tmp_path,
        report=str(page),
        answers=str(tiny_dataset / vocab.TEST_LABELS_CSV),
        coordinates=str(tiny_dataset / vocab.TEST_COORDINATES_CSV),
    )
    assert spinegrade_main(args) == 0
    assert "review page" in capsys.readouterr().out
    index = json.loads(
        re.search(r'id="review-index">(.*?)</script>', page.read_text(), re.S).group(1)
    )
    assert index["has_answers"] and all(s["loss"] is not None for s in index["studies"])

    bad = predict_args(tiny_dataset, tmp_path, answers=str(tiny_dataset / vocab.TEST_LABELS_CSV))
    assert spinegrade_main(bad) == 1  # answers are for the page: without --report, an error
