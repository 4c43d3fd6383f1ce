"""`spinegrade score`: in-process and as a subprocess, on tiny CSVs written per test."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from spinegrade.cli.main import SCORE_NAME, main
from spinegrade.core import vocab
from spinegrade.scoring.metrics import TERMS, rsna_score, solution_from_wide

N, M, S = vocab.SEVERITIES
MISSING_ROW = "20_spinal_canal_stenosis_l4_l5"


@pytest.fixture
def files(tmp_path) -> tuple[Path, Path, pd.DataFrame]:
    """(labels.csv, predictions.csv, the predictions table) for two studies.

    Study 10 has every cell labelled with one Severe spinal level; study 20 has its
    subarticular cells empty (unscored) and a Moderate spinal level.
    """
    rows = []
    for study in (10, 20):
        cells = dict.fromkeys(vocab.TRAIN_COLUMNS, N)
        if study == 10:
            cells["spinal_canal_stenosis_l3_l4"] = S
            cells["left_neural_foraminal_narrowing_l5_s1"] = M
        else:
            cells["spinal_canal_stenosis_l4_l5"] = M
            for col in vocab.TRAIN_COLUMNS:
                if "subarticular" in col:
                    cells[col] = ""
        rows.append({"study_id": study, **cells})
    labels = tmp_path / "labels.csv"
    pd.DataFrame(rows, columns=list(vocab.TRAIN_CSV_HEADER)).to_csv(labels, index=False)

    preds = pd.DataFrame(
        [
            {"row_id": f"{study}_{col}", "normal_mild": 0.7, "moderate": 0.2, "severe": 0.1}
            for study in (10, 20)
            for col in vocab.TRAIN_COLUMNS
        ],
        columns=list(vocab.SUBMISSION_HEADER),
    )
    preds.loc[preds["row_id"] == "10_spinal_canal_stenosis_l3_l4", vocab.SEVERITY_COLUMNS] = [
        0.2,
        0.2,
        0.6,
    ]
    predictions = tmp_path / "predictions.csv"
    preds.to_csv(predictions, index=False)
    return labels, predictions, preds


def expected(labels: Path, preds: pd.DataFrame) -> dict[str, float]:
    wide = pd.read_csv(labels, dtype={"study_id": "int64"})
    return rsna_score(solution_from_wide(wide), preds)


def test_text_output_shows_score_and_four_terms(files, capsys):
    labels, predictions, preds = files
    assert main(["score", "--labels", str(labels), "--predictions", str(predictions)]) == 0
    out = capsys.readouterr().out
    assert SCORE_NAME in out
    want = expected(labels, preds)
    assert list(want) == ["score", *TERMS]
    for name, value in want.items():
        line = next(line for line in out.splitlines() if line.split()[:1] == [name])
        assert f"{value:.6f}" in line


def test_json_output_matches_rsna_score(files, capsys):
    labels, predictions, preds = files
    argv = ["score", "--labels", str(labels), "--predictions", str(predictions), "--json"]
    assert main(argv) == 0
    got = json.loads(capsys.readouterr().out)
    assert got == pytest.approx(expected(labels, preds), rel=1e-12)
    assert list(got) == ["score", *TERMS]


def test_missing_row_fails_in_a_subprocess_naming_it(files, tmp_path):
    labels, _, preds = files
    short = tmp_path / "short.csv"
    preds[preds["row_id"] != MISSING_ROW].to_csv(short, index=False)
    proc = subprocess.run(
        [sys.executable, "-m", "spinegrade.cli", "score"]
        + ["--labels", str(labels), "--predictions", str(short)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert MISSING_ROW in proc.stderr
    assert str(short) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert proc.stdout == ""


def test_missing_row_in_process(files, tmp_path, caplog):
    labels, _, preds = files
    short = tmp_path / "short.csv"
    preds[preds["row_id"] != MISSING_ROW].to_csv(short, index=False)
    with caplog.at_level(logging.ERROR):
        code = main(["score", "--labels", str(labels), "--predictions", str(short)])
    assert code == 1
    assert MISSING_ROW in caplog.text and "1 of 40" in caplog.text


def test_unlabelled_rows_may_be_absent(files, tmp_path, capsys):
    labels, _, preds = files
    labelled_only = tmp_path / "labelled.csv"
    preds[~preds["row_id"].str.startswith("20_") | ~preds["row_id"].str.contains("subart")].to_csv(
        labelled_only, index=False
    )
    argv = ["score", "--labels", str(labels), "--predictions", str(labelled_only), "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(expected(labels, preds))


@pytest.mark.parametrize(
    "header",
    [
        "row_id,normal,moderate,severe",  # misspelt class
        "row_id,normal_mild,moderate",  # missing class
        "row_id,normal_mild,severe,moderate",  # out of order
        "id,row_id,normal_mild,moderate,severe",  # pandas index written out
    ],
)
def test_wrong_prediction_header_fails_naming_the_file(files, tmp_path, caplog, header):
    labels, _, _ = files
    bad = tmp_path / "bad_header.csv"
    bad.write_text(header + "\n" + "10_spinal_canal_stenosis_l1_l2,1,0,0,0\n")
    with caplog.at_level(logging.ERROR):
        code = main(["score", "--labels", str(labels), "--predictions", str(bad)])
    assert code == 1
    assert str(bad) in caplog.text and "wrong header" in caplog.text


def test_bad_value_and_bad_label_fail_naming_them(files, tmp_path, caplog):
    labels, predictions, preds = files
    text = predictions.read_text().replace(
        "10_spinal_canal_stenosis_l1_l2,0.7", "10_spinal_canal_stenosis_l1_l2,-1"
    )
    bad_preds = tmp_path / "negative.csv"
    bad_preds.write_text(text)
    bad_labels = tmp_path / "bad_labels.csv"
    bad_labels.write_text(labels.read_text().replace("Moderate", "Mod", 1))
    with caplog.at_level(logging.ERROR):
        assert main(["score", "--labels", str(labels), "--predictions", str(bad_preds)]) == 1
        assert main(["score", "--labels", str(bad_labels), "--predictions", str(predictions)]) == 1
    assert (
        f"{bad_preds}: " in caplog.text
        and "10_spinal_canal_stenosis_l1_l2 normal_mild" in caplog.text
    )
    assert f"{bad_labels}: " in caplog.text and "'Mod'" in caplog.text
    assert "left_neural_foraminal_narrowing_l5_s1" in caplog.text


def test_help_explains_the_score_and_the_formats(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["score", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert SCORE_NAME in out
    assert "row_id,normal_mild,moderate,severe" in out
    assert "--json" in out and "--labels" in out


def test_top_level_help_keeps_synthesize(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "synthesize" in out and "score" in out


def test_synthesize_studies_is_validated_as_the_params_are(tmp_path, caplog):
    """--studies goes through the section's validation (not model_copy, which skips it)."""
    code = main(["synthesize", "--out", str(tmp_path / "raw"), "--studies", "0"])
    assert code == 1
    assert "--studies 0: Input should be greater than or equal to 1" in caplog.text
    assert not (tmp_path / "raw").exists()
