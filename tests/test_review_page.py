"""The review page (spinegrade.inference.page): its HTML, and the page in a real browser.

The fixture builds four studies the way the predict stage describes them (generated
grayscale images as data URIs, the 25 rows of the vocabulary, found and labelled points):
one with a missing Sagittal T1 series whose ten foraminal rows are filled with the class
prior, one whose warning tries to end the script element, different losses and Severe
predictions. The unit tests read the HTML back; the browser test opens the written file in
Debian's chromium (headless, offline, every non-file request refused) and uses the page:
sorting, filters, a study's images and rows, hash routing and Back.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import math
import re

import numpy as np
import pytest
from browser import MISSING, chromium_path, offline_page
from PIL import Image

from spinegrade.core import vocab
from spinegrade.inference.page import render_page, script_json, write_page

PWNED = "</script><script>window.__pwned=1</script>"
MISSING_STUDY = 2002
PWNED_STUDY = 3003
# Groups with a row predicted Severe, per study (the fixture makes exactly these).
SEVERE = {1001: ["spinal"], 2002: [], 3003: ["foraminal", "subarticular"], 4004: ["foraminal"]}
PRIOR = [0.74, 0.19, 0.07]
MM_PER_PX = 0.6
DATA_BLOCK = re.compile(r'<script type="application/json" id="([^"]+)">(.*?)</script>', re.S)


# ---------------------------------------------------------------- fixture data


def _data_uri(pixels: np.ndarray, fmt: str) -> str:
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    if fmt == "JPEG":
        image.save(buf, format="JPEG", quality=80)
    else:
        image.save(buf, format="PNG", optimize=True)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _sagittal(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A stylized sagittal slice: vertebral bodies, discs and a bright canal."""
    y, x = np.mgrid[0:size, 0:size].astype(float)
    img = 25 + 20 * (y / size) + rng.normal(0, 6, (size, size))
    for i in range(6):
        cy = 28 + i * 42
        body = ((x - 105) / 38) ** 4 + ((y - cy) / 17) ** 4 < 1
        img[body] = 120 + 25 * np.sin(x[body] / 9) + rng.normal(0, 8, body.sum())
    canal = np.abs(x - 160) < 9 + 2 * np.sin(y / 30)
    img[canal] = 200 + rng.normal(0, 10, canal.sum())
    return img


def _axial(rng: np.random.Generator, width: int = 224, height: int = 192) -> np.ndarray:
    """A stylized axial slice: a disc, the canal and two facets."""
    y, x = np.mgrid[0:height, 0:width].astype(float)
    img = 20 + rng.normal(0, 6, (height, width))
    disc = ((x - 112) / 55) ** 2 + ((y - 70) / 35) ** 2 < 1
    img[disc] = 110 + rng.normal(0, 8, disc.sum())
    canal = ((x - 112) / 20) ** 2 + ((y - 120) / 15) ** 2 < 1
    img[canal] = 210 + rng.normal(0, 8, canal.sum())
    for cx in (80, 144):
        facet = ((x - cx) / 14) ** 2 + ((y - 140) / 12) ** 2 < 1
        img[facet] = 150
    return img


def _crop(rng: np.random.Generator, grade: int) -> np.ndarray:
    y, x = np.mgrid[0:32, 0:32].astype(float)
    blob = np.exp(-(((x - 16) / (7 - grade * 2)) ** 2 + ((y - 16) / 5) ** 2))
    return 40 + 170 * blob + rng.normal(0, 12, (32, 32))


def _cam(rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:32, 0:32].astype(float)
    cx, cy = rng.uniform(10, 22, 2)
    heat = np.exp(-(((x - cx) / 6) ** 2 + ((y - cy) / 6) ** 2))
    rgb = np.stack([255 * heat, 255 * np.sqrt(heat) * (1 - heat), 255 * (1 - heat) * 0.6], -1)
    return rgb


def _probabilities(rng: np.random.Generator, severe: bool) -> list[float]:
    if severe:
        return [0.1, 0.2, 0.7]
    p = rng.dirichlet([4.0, 2.0, 1.0])
    if p.argmax() == 2:
        p = p[[2, 1, 0]]
    p = [round(float(v), 3) for v in p[:2]]
    return [p[0], p[1], round(1.0 - p[0] - p[1], 3)]


def _points(
    rng: np.random.Generator, sid: int, condition: str, xy: list[tuple[float, float]]
) -> tuple[list[dict], dict[str, float]]:
    """Found and labelled points of one condition at the five levels, and the distances."""
    points, distances = [], {}
    for lv, (x, y) in zip(vocab.LEVELS, xy, strict=True):
        rid = vocab.row_id(sid, condition, lv)
        dx, dy = rng.normal(0, 4, 2)
        dist = round(math.hypot(dx, dy) * MM_PER_PX, 2)
        distances[rid] = dist
        label = vocab.LEVEL_NAMES[lv]
        points.append(dict(label=label, row_id=rid, kind="labelled", x=x, y=y, distance_mm=dist))
        found = dict(label=label, row_id=rid, kind="found", distance_mm=dist)
        points.append({**found, "x": round(x + dx, 2), "y": round(y + dy, 2)})
    return points, distances


def _sagittal_view(view_id: str, title: str, pixels: np.ndarray, points: list[dict]) -> dict:
    """A 256 x 256 sagittal view of the page's format (image as a JPEG data URI)."""
    return dict(
        id=view_id,
        title=title,
        image=_data_uri(pixels, "JPEG"),
        width=256,
        height=256,
        orientation=dict(left="A", right="P", top="S", bottom="I"),
        points=points,
    )


def build_review(seed: int = 7) -> tuple[dict, list[dict]]:
    """The index and the details of four studies (see the module docstring)."""
    index_studies, details = [], []
    for sid in SEVERE:
        rng = np.random.default_rng(seed + sid)
        missing = [vocab.SAGITTAL_T1] if sid == MISSING_STUDY else []
        series = [
            s for s in (vocab.SAGITTAL_T2, vocab.SAGITTAL_T1, vocab.AXIAL_T2) if s not in missing
        ]
        warnings = []
        if missing:
            warnings.append(
                f"study {sid}: no readable Sagittal T1 series; its 10 foraminal rows are "
                "filled with the class prior"
            )
        if sid == PWNED_STUDY:
            warnings.append(f"study {sid}: odd series description {PWNED} & <b>\"'bold'\"</b>")
        views, distances, view_of = [], {}, {}
        sag = _sagittal(rng)
        spinal = vocab.CONDITIONS[0]
        pts, d = _points(rng, sid, spinal, [(160.0, 49.0 + 42 * i) for i in range(5)])
        views.append(
            _sagittal_view(
                "sagittal_t2", f"Sagittal T2/STIR, series {sid}1, slice 9 of 17", sag, pts
            )
        )
        distances.update(d)
        view_of.update(dict.fromkeys(d, "sagittal_t2"))
        if not missing:
            left = vocab.CONDITIONS[1]
            pts, d = _points(rng, sid, left, [(150.0 - 3 * i, 48.0 + 42 * i) for i in range(5)])
            title = f"Sagittal T1, series {sid}2, slice 4 of 15 (left)"
            views.append(_sagittal_view("sagittal_t1_left", title, _sagittal(rng) * 0.8, pts))
            distances.update(d)
            view_of.update(dict.fromkeys(d, "sagittal_t1_left"))
        for lv in ("l4_l5", "l5_s1"):
            pts = []
            for condition, x in ((vocab.CONDITIONS[3], 140.0), (vocab.CONDITIONS[4], 84.0)):
                p, d = _points(rng, sid, condition, [(x, 128.0)] * 5)
                keep = [q for q in p if q["row_id"].endswith(lv)]
                pts += keep
                rid = vocab.row_id(sid, condition, lv)
                distances[rid] = d[rid]
                view_of[rid] = f"axial_t2_{lv}"
            views.append(
                dict(
                    id=f"axial_t2_{lv}",
                    title=f"Axial T2, series {sid}3, {vocab.LEVEL_NAMES[lv]}",
                    image=_data_uri(_axial(rng), "JPEG"),
                    width=224,
                    height=192,
                    orientation=dict(left="R", right="L", top="A", bottom="P"),
                    points=pts,
                )
            )
        rows = []
        severe_done: set[str] = set()
        for condition in vocab.CONDITIONS:
            group = vocab.GROUP_OF_CONDITION[condition]
            for lv in vocab.LEVELS:
                rid = vocab.row_id(sid, condition, lv)
                prior = bool(missing) and group == "foraminal"
                severe = group in SEVERE[sid] and group not in severe_done
                severe_done.update([group] if severe else [])
                probs = list(PRIOR) if prior else _probabilities(rng, severe)
                truth = int(rng.choice(3, p=[0.6, 0.25, 0.15]))
                rows.append(
                    dict(
                        row_id=rid,
                        condition=vocab.CONDITION_NAMES[condition],
                        level=vocab.LEVEL_NAMES[lv],
                        group=group,
                        probabilities=probs,
                        predicted=vocab.SEVERITIES[int(np.argmax(probs))],
                        truth=vocab.SEVERITIES[truth],
                        loss=round(-math.log(probs[truth]), 4),
                        weight=int(vocab.SEVERITY_WEIGHTS[truth]),
                        prior=prior,
                        crop=None if prior else _data_uri(_crop(rng, truth), "PNG"),
                        cam=None if prior else _data_uri(_cam(rng), "PNG"),
                        distance_mm=None if prior else distances.get(rid),
                        view=None if prior else view_of.get(rid),
                    )
                )

        def mean_loss(rs: list[dict]) -> float:
            return round(sum(r["loss"] * r["weight"] for r in rs) / sum(r["weight"] for r in rs), 4)

        found = [r["distance_mm"] for r in rows if r["distance_mm"] is not None]
        index_studies.append(
            dict(
                study_id=sid,
                series=series,
                missing_series=missing,
                graded=sum(not r["prior"] for r in rows),
                prior=sum(r["prior"] for r in rows),
                warnings=warnings,
                severe_groups=sorted({r["group"] for r in rows if r["predicted"] == "Severe"}),
                loss=mean_loss(rows),
                group_loss={
                    g: mean_loss([r for r in rows if r["group"] == g]) for g in vocab.GROUPS
                },
                point_error_mm=round(sum(found) / len(found), 2),
                thumbnail=_data_uri(
                    np.asarray(Image.fromarray(sag.clip(0, 255).astype(np.uint8)).resize((64, 64))),
                    "JPEG",
                ),
            )
        )
        details.append(dict(study_id=sid, warnings=warnings, views=views, rows=rows))
    index = dict(
        title='spinegrade review: 4 test studies <fixture> & "friends"',
        has_answers=True,
        models={"spinal": "convnext_tiny", "foraminal": "ensemble", "subarticular": "ensemble"},
        severities=list(vocab.SEVERITIES),
        groups=list(vocab.GROUPS),
        summary={"rsna score (localized)": "0.379 [0.28, 0.46]", "point error": "3.1 mm"},
        studies=index_studies,
    )
    return index, details


def without_answers(index: dict, studies: list[dict]) -> tuple[dict, list[dict]]:
    """The same studies as a run without answers would describe them."""
    index, studies = copy.deepcopy(index), copy.deepcopy(studies)
    index["has_answers"] = False
    for s in index["studies"]:
        s.update(loss=None, group_loss=None, point_error_mm=None)
    for d in studies:
        for v in d["views"]:
            v["points"] = [{**p, "distance_mm": None} for p in v["points"] if p["kind"] == "found"]
        for r in d["rows"]:
            r.update(truth=None, loss=None, weight=None, distance_mm=None)
    return index, studies


@pytest.fixture(scope="module")
def review() -> tuple[dict, list[dict]]:
    return build_review()


@pytest.fixture(scope="module")
def page_html(review) -> str:
    return render_page(*review)


# ---------------------------------------------------------------- the HTML


def test_the_fixture_makes_sorting_and_filtering_observable(review):
    index, studies = review
    by_loss = sorted(index["studies"], key=lambda s: -s["loss"])
    by_foraminal = sorted(index["studies"], key=lambda s: -s["group_loss"]["foraminal"])
    assert [s["study_id"] for s in by_loss] != [s["study_id"] for s in by_foraminal]
    assert {s["study_id"]: s["severe_groups"] for s in index["studies"]} == SEVERE
    assert all(len(d["rows"]) == 25 for d in studies)
    missing = studies[list(SEVERE).index(MISSING_STUDY)]
    assert sum(r["prior"] for r in missing["rows"]) == 10


def test_the_page_names_no_external_url(page_html):
    assert "http://" not in page_html
    assert "https://" not in page_html
    assert 'src="//' not in page_html and "url(" not in page_html
    assert "Content-Security-Policy" in page_html and "default-src 'none'" in page_html


def test_the_data_blocks_read_back_to_the_inputs(review, page_html):
    index, studies = review
    blocks = dict(DATA_BLOCK.findall(page_html))
    assert list(blocks) == ["review-index", *(f"study-{s['study_id']}" for s in studies)]
    assert json.loads(blocks["review-index"]) == index
    for study in studies:
        assert json.loads(blocks[f"study-{study['study_id']}"]) == study
    for text in blocks.values():
        assert "</script" not in text.lower() and "<" not in text and "&" not in text
    assert page_html.count("<script") == len(blocks) + 1  # the data blocks and the code
    assert "<title>spinegrade review: 4 test studies &lt;fixture&gt; &amp;" in page_html


def test_script_json_escapes_markup_and_non_finite_numbers():
    text = script_json({"a": "</script><!--&>", "n": float("nan"), "t": (1, 2.5), "u": "\u2028"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"a": "</script><!--&>", "n": None, "t": [1, 2.5], "u": "\u2028"}


def test_write_page_writes_the_rendered_page(review, page_html, tmp_path):
    out = write_page(tmp_path / "sub" / "review.html", *review)
    assert out == tmp_path / "sub" / "review.html"
    assert out.read_text(encoding="utf-8") == page_html
    assert [p.name for p in out.parent.iterdir()] == ["review.html"]  # no temporary left


def test_studies_must_match_the_index(review):
    index, studies = review
    with pytest.raises(ValueError, match="in order"):
        render_page(index, studies[::-1])


# ---------------------------------------------------------------- in a browser


def _ids(page) -> list[int]:
    return [
        int(i)
        for i in page.eval_on_selector_all(
            "#overview tbody tr[data-study-id]", "rows => rows.map(r => r.dataset.studyId)"
        )
    ]


def _loss_cells(page) -> list[str]:
    return page.eval_on_selector_all(
        "#overview tbody tr[data-study-id] td.c-loss .value",
        "cells => cells.map(c => c.textContent)",
    )


def _wait_for_images(page) -> None:
    page.wait_for_function(
        "[...document.querySelectorAll('#study-view img')].every(i => i.complete)", timeout=10_000
    )


@pytest.mark.slow
@pytest.mark.chromium
def test_the_review_page_in_chromium(review, tmp_path):
    if not chromium_path().is_file():
        pytest.fail(MISSING)
    from playwright.sync_api import expect

    index, studies = review
    path = write_page(tmp_path / "review.html", index, studies)
    bare = write_page(tmp_path / "bare.html", *without_answers(index, studies))
    entries = {s["study_id"]: s for s in index["studies"]}
    worst_first = [s["study_id"] for s in sorted(index["studies"], key=lambda s: -s["loss"])]

    with offline_page(path.as_uri()) as (page, errors):
        context = page.context
        page.wait_for_selector("#overview tbody tr[data-study-id]")

        # The overview: every study, worst first; the header's title, models and summary.
        header = page.inner_text("#page-header")
        assert index["title"] in header and "convnext_tiny" in header and "0.379" in header
        assert _ids(page) == worst_first
        assert page.get_attribute("th[data-sort=loss]", "aria-sort") == "descending"
        assert page.inner_text("#study-count") == "4 of 4 studies"
        missing_row = page.locator(f"tr[data-study-id='{MISSING_STUDY}']")
        expect(missing_row.locator(".chip.missing")).to_contain_text("Sagittal T1")
        expect(missing_row.locator(".c-graded")).to_contain_text("+10 prior")

        # Sorting: clicking the loss header reverses the order, then by study id.
        page.click("th[data-sort=loss]")
        assert _ids(page) == worst_first[::-1]
        assert page.get_attribute("th[data-sort=loss]", "aria-sort") == "ascending"
        page.click("th[data-sort=study_id]")
        assert _ids(page) == sorted(entries)
        page.click("th[data-sort=loss]")
        assert _ids(page) == worst_first

        # A group: the loss column shows (and sorts by) that group's loss.
        page.select_option("#group-filter", "foraminal")
        foraminal = sorted(entries, key=lambda i: -entries[i]["group_loss"]["foraminal"])
        assert _ids(page) == foraminal != worst_first
        assert _loss_cells(page) == [
            f"{entries[i]['group_loss']['foraminal']:.3f}" for i in foraminal
        ]
        expect(page.locator("th[data-sort=loss]")).to_contain_text("Loss (foraminal)")

        # Predicted Severe only: in the selected group, then in any group.
        page.check("#severe-filter")
        assert set(_ids(page)) == {i for i, g in SEVERE.items() if "foraminal" in g}
        assert page.inner_text("#study-count") == "2 of 4 studies"
        page.select_option("#group-filter", "")
        assert _ids(page) == [i for i in worst_first if SEVERE[i]]
        page.uncheck("#severe-filter")
        assert _ids(page) == worst_first
        assert _loss_cells(page) == [f"{entries[i]['loss']:.3f}" for i in worst_first]

        # Opening a study with a click: its images, its 25 rows, worst loss first.
        first = worst_first[0]
        page.click(f"tr[data-study-id='{first}'] td.c-series")
        expect(page.locator("#study-view")).to_be_visible()
        expect(page.locator("#overview-view")).to_be_hidden()
        assert page.url.endswith(f"#study-{first}")
        _wait_for_images(page)
        detail = studies[list(SEVERE).index(first)]
        sizes = page.eval_on_selector_all(".view img", "imgs => imgs.map(i => i.naturalWidth)")
        assert len(sizes) == len(detail["views"]) and all(w > 0 for w in sizes)
        rows = page.eval_on_selector_all(
            "#rows tbody tr[data-row-id]", "rows => rows.map(r => r.dataset.rowId)"
        )
        by_loss = sorted(detail["rows"], key=lambda r: -r["loss"])
        assert len(rows) == 25 and set(rows) == {r["row_id"] for r in detail["rows"]}
        assert rows[0] == by_loss[0]["row_id"]
        crops = page.eval_on_selector_all("#rows img.crop", "imgs => imgs.map(i => i.naturalWidth)")
        graded = sum(not r["prior"] for r in detail["rows"])
        assert len(crops) == 2 * graded and all(w == 32 for w in crops)
        # The overlay covers its image exactly, and a row's hover highlights its points.
        boxes = page.eval_on_selector(
            ".view",
            """v => [v.querySelector('img'), v.querySelector('svg.overlay')]
                   .map(e => { const r = e.getBoundingClientRect();
                               return [r.x, r.y, r.width, r.height].map(Math.round); })""",
        )
        assert boxes[0] == boxes[1] and 0 < boxes[0][2] <= 420
        marks = page.locator("#study-view .view").first.locator(".pt")
        expect(marks.locator(".mark-found")).to_have_count(5)
        expect(marks.locator(".mark-labelled")).to_have_count(5)
        spinal = vocab.row_id(first, vocab.CONDITIONS[0], "l3_l4")
        page.hover(f"#rows tr[data-row-id='{spinal}']")
        expect(page.locator(f".pt.hl[data-row-id='{spinal}']")).to_have_count(2)

        # Back returns to the overview.
        page.go_back()
        expect(page.locator("#overview-view")).to_be_visible()
        expect(page.locator("#study-view")).to_be_hidden()
        assert _ids(page) == worst_first

        # The study with a missing series: the warning and the ten prior-filled rows.
        page.click(f"tr[data-study-id='{MISSING_STUDY}'] a.study-link")
        expect(page.locator("#study-view .warnings li").first).to_contain_text(
            "Missing series: Sagittal T1"
        )
        expect(page.locator("#study-view .warnings")).to_contain_text(
            "its 10 foraminal rows are filled with the class prior"
        )
        expect(page.locator("#rows tbody tr[data-row-id]")).to_have_count(25)
        expect(page.locator("#rows tbody tr.prior")).to_have_count(10)
        expect(page.locator("#rows tbody tr.prior .badge.prior")).to_have_count(10)
        expect(page.locator("#rows tbody tr.prior img")).to_have_count(0)
        _wait_for_images(page)
        page.click("a.back-link")
        expect(page.locator("#overview-view")).to_be_visible()

        # The warning that tries to end the script element is shown as text, not run.
        page.goto(f"{path.as_uri()}#study-{PWNED_STUDY}")
        expect(page.locator("#study-view")).to_be_visible()
        expect(page.locator("#study-view h2")).to_have_text(f"Study {PWNED_STUDY}")
        expect(page.locator("#study-view .warnings li")).to_contain_text(PWNED)
        assert page.evaluate("typeof window.__pwned") == "undefined"
        _wait_for_images(page)
        page.go_back()
        expect(page.locator("#overview-view")).to_be_visible()

        # A fresh page opened at a study's hash shows that study.
        direct = context.new_page()
        direct.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
        direct.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        direct.goto(f"{path.as_uri()}#study-4004")
        expect(direct.locator("#study-view h2")).to_have_text("Study 4004")
        expect(direct.locator("#rows tbody tr[data-row-id]")).to_have_count(25)
        _wait_for_images(direct)
        assert direct.evaluate("typeof window.__pwned") == "undefined"

        # Without answers: no loss column, study id order, no truth or labelled points.
        direct.goto(bare.as_uri())
        direct.wait_for_selector("#overview tbody tr[data-study-id]")
        assert _ids(direct) == sorted(entries)
        expect(direct.locator("th[data-sort=loss]")).to_have_count(0)
        direct.click("tr[data-study-id='1001'] td.c-series")
        expect(direct.locator("#rows tbody tr[data-row-id]")).to_have_count(25)
        expect(direct.locator("#rows th.c-truth")).to_have_count(0)
        expect(direct.locator("#study-view .mark-labelled")).to_have_count(0)
        first_rows = direct.eval_on_selector_all(
            "#rows tbody tr[data-row-id]", "rows => rows.map(r => r.dataset.rowId)"
        )
        assert first_rows == [r["row_id"] for r in studies[0]["rows"]]  # as given
        _wait_for_images(direct)

    assert not errors, errors
