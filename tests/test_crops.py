"""crop-rois: millimetre-sized 2.5D crops centred on the point, padded at edges."""

from __future__ import annotations

import numpy as np
import pytest

from spinegrade.core import vocab
from spinegrade.data.crops import crop_25d, normalize_stack


def _dot_volume(shape=(5, 100, 80), at=(2, 40, 30)):
    vol = np.zeros(shape, dtype=np.float32)
    s, y, x = at
    vol[s, y - 1 : y + 2, x - 1 : x + 2] = 1.0
    return vol


def test_crop_is_centred_on_the_point():
    vol = _dot_volume()
    crop, padded, inplane = crop_25d(
        vol, 2, x=30.0, y=40.0, spacing=(1.0, 1.0), size_mm=16.0, size_px=16, k=3
    )
    assert crop.shape == (3, 16, 16)
    assert padded == 0 and not inplane
    peak = np.unravel_index(np.argmax(crop), crop.shape)
    assert peak[0] == 1  # the labelled slice is the middle channel
    assert abs(peak[1] - 7.5) <= 1 and abs(peak[2] - 7.5) <= 1


def test_crop_size_is_in_millimetres():
    """The same 20 mm window at two pixel spacings shows the same anatomy."""
    fine = np.zeros((1, 200, 200), np.float32)
    fine[0, 90:110, 90:110] = 1.0  # 10 mm square at 0.5 mm/px
    coarse = np.zeros((1, 100, 100), np.float32)
    coarse[0, 45:55, 45:55] = 1.0  # the same 10 mm square at 1 mm/px
    a, *_ = crop_25d(fine, 0, 99.5, 99.5, (0.5, 0.5), size_mm=20.0, size_px=20, k=1)
    b, *_ = crop_25d(coarse, 0, 49.5, 49.5, (1.0, 1.0), size_mm=20.0, size_px=20, k=1)
    assert (a > 0.5).sum() == pytest.approx((b > 0.5).sum(), rel=0.15)
    assert (a > 0.5).sum() == pytest.approx(100, rel=0.25)  # a quarter of the 20 x 20 crop


def test_anisotropic_spacing():
    vol = np.zeros((1, 100, 100), np.float32)
    vol[0, 50, :] = 1.0  # a row line
    crop, *_ = crop_25d(vol, 0, 50.0, 50.0, (2.0, 0.5), size_mm=40.0, size_px=40, k=1)
    assert crop.shape == (1, 40, 40)
    assert crop[0].max(axis=1).argmax() in (19, 20)


def test_edges_are_padded_not_dropped():
    vol = _dot_volume(at=(0, 2, 2))
    crop, padded, inplane = crop_25d(
        vol, 0, x=2.0, y=2.0, spacing=(1.0, 1.0), size_mm=20.0, size_px=20, k=5
    )
    assert padded == 2 and inplane
    assert np.all(crop[:2] == 0)
    assert crop[2].max() > 0.5


def test_normalize_stack_range():
    vol = np.random.default_rng(0).integers(0, 3000, size=(3, 20, 20)).astype(np.uint16)
    out = normalize_stack(vol)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0


def test_build_crops_per_group(tiny_ingest, tiny_crops):
    groups, report = tiny_crops
    labels = tiny_ingest.labels.dropna(subset=["series_id"])
    assert set(groups) == set(vocab.GROUPS)
    for name, g in groups.items():
        expected = labels[labels["condition"].isin(vocab.GROUPS[name].conditions)]
        assert g.crops.shape == (len(expected), 3, 32, 32)
        assert g.crops.dtype == np.uint8
        assert len(g.index) == len(expected) == report["groups"][name]["crops"]
        assert set(g.index["side"]) == ({"left", "right"} if name != "spinal" else {""})
        np.testing.assert_array_equal(
            g.index["label"], g.index["severity"].map(vocab.SEVERITY_INDEX)
        )
        assert g.crops.reshape(len(g.index), -1).std(axis=1).min() > 0  # no blank crops


def test_severity_is_visible_in_foraminal_crops(tiny_crops):
    """Brighter (fat) area in the centre of a foraminal crop shrinks with severity."""
    groups, _ = tiny_crops
    g = groups["foraminal"]
    centre = g.crops[:, 1, 8:24, 8:24].astype(float)
    bright = (centre > 200).mean(axis=(1, 2))
    by_label = [
        bright[g.index["label"] == k].mean() for k in range(3) if (g.index["label"] == k).any()
    ]
    assert by_label[0] > by_label[-1]
