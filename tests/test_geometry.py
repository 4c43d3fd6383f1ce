"""Patient-coordinate geometry, and projection of sagittal points onto axial slices."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from spinegrade.core import vocab
from spinegrade.data.dicom import read_series
from spinegrade.data.geometry import (
    direction_letters,
    nearest_slice,
    orientation_labels,
    pixel_to_world,
    slice_normal,
    world_to_pixel,
)


def test_pixel_world_round_trip():
    iop = np.array([0.0, 1.0, 0.0, 0.0, 0.0, -1.0])  # sagittal
    ipp = np.array([12.0, -100.0, 120.0])
    spacing = np.array([0.7, 0.9])  # row, col
    world = pixel_to_world(10.0, 20.0, ipp, iop, spacing)
    # x (column) moves along R = +y by col spacing; y (row) along C = -z by row spacing.
    np.testing.assert_allclose(world, [12.0, -100.0 + 10 * 0.9, 120.0 - 20 * 0.7])
    x, y, d = world_to_pixel(world, ipp, iop, spacing)
    assert (x, y, d) == pytest.approx((10.0, 20.0, 0.0))


def test_normal_is_cross_of_row_and_column():
    np.testing.assert_allclose(slice_normal([1, 0, 0, 0, 1, 0]), [0, 0, 1])
    np.testing.assert_allclose(slice_normal([0, 1, 0, 0, 0, -1]), [-1, 0, 0])


def test_nearest_slice_across_orientations():
    iops = np.array([[1, 0, 0, 0, 1, 0]] * 3 + [[1, 0, 0, 0, np.cos(0.2), np.sin(0.2)]], float)
    positions = np.array([[0, 0, 0], [0, 0, 5], [0, 0, 10], [0, 0, 40]], float)
    assert nearest_slice(np.array([3.0, 2.0, 6.0]), positions, iops) == (1, pytest.approx(1.0))
    idx, dist = nearest_slice(np.array([0.0, 0.0, 39.0]), positions, iops)
    assert idx == 3 and dist < 2.0


def _study_series(root, study_id):
    series = pd.read_csv(root / "train_series_descriptions.csv")
    return series[series["study_id"] == study_id]


def test_sagittal_point_projects_to_the_labelled_axial_slice(tiny_dataset):
    """A spinal canal point on the sagittal T2 series, taken to patient coordinates and
    projected through the axial series' geometry, lands on the axial slice the generator
    labelled for that level (the subarticular label of the same level)."""
    coords = pd.read_csv(tiny_dataset / "train_label_coordinates.csv")
    checked = 0
    for study_id, study in coords.groupby("study_id"):
        series = _study_series(tiny_dataset, study_id)
        images = tiny_dataset / "train_images" / str(study_id)
        stacks_of = {s: read_series(images / str(s)) for s in series["series_id"]}
        spinal = study[study["condition"] == "Spinal Canal Stenosis"]
        axial = study[
            study["condition"].isin(["Left Subarticular Stenosis", "Right Subarticular Stenosis"])
        ]
        for row in spinal.itertuples():
            (sag,) = stacks_of[row.series_id]
            i = int(np.flatnonzero(sag.instance_numbers == row.instance_number)[0])
            point = pixel_to_world(row.x, row.y, sag.positions[i], sag.orientation, sag.spacing)
            for ax in axial[axial["level"] == row.level].itertuples():
                stacks = stacks_of[ax.series_id]
                positions = np.concatenate([s.positions for s in stacks])
                iops = np.concatenate(
                    [np.tile(s.orientation, (len(s.positions), 1)) for s in stacks]
                )
                insts = np.concatenate([s.instance_numbers for s in stacks])
                idx, dist = nearest_slice(point, positions, iops)
                assert insts[idx] == ax.instance_number, (study_id, row.level)
                assert dist < 3.0
                checked += 1
    assert checked > 10


def test_labelled_points_fall_on_their_anatomy(tiny_dataset):
    """Unaffected (Normal/Mild) canal and recess points are bright CSF on T2; foramina are
    bright fat on T1, brighter than the image median."""
    coords = pd.read_csv(tiny_dataset / "train_label_coordinates.csv")
    labels = pd.read_csv(tiny_dataset / "train.csv").set_index("study_id")
    bright = 0
    total = 0
    for row in coords.itertuples():
        col = f"{vocab.CONDITION_FROM_NAME[row.condition]}_{vocab.LEVEL_FROM_NAME[row.level]}"
        if labels.loc[row.study_id, col] != "Normal/Mild":
            continue
        from pydicom import dcmread

        px = dcmread(
            tiny_dataset
            / "train_images"
            / str(row.study_id)
            / str(row.series_id)
            / f"{row.instance_number}.dcm"
        ).pixel_array.astype(float)
        value = px[int(round(row.y)), int(round(row.x))]
        total += 1
        bright += value > 1.5 * np.median(px[px > 0])
    assert total > 50
    assert bright / total > 0.9


SAGITTAL = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]  # rows run anterior to posterior, columns downward
AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def test_orientation_labels_follow_the_dicom_directions():
    assert orientation_labels(np.array(SAGITTAL)) == {
        "left": "A",
        "right": "P",
        "top": "S",
        "bottom": "I",
    }
    assert orientation_labels(np.array(AXIAL)) == {
        "left": "R",
        "right": "L",
        "top": "A",
        "bottom": "P",
    }
    tilt = np.deg2rad(30)  # an axial slice angled along a disc: rows tip toward superior
    assert direction_letters(np.array([0.0, np.cos(tilt), np.sin(tilt)])) == "PS"
    assert direction_letters(np.array([0.0, np.cos(0.1), -np.sin(0.1)])) == "P"
