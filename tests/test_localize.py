"""train-localizer: heatmaps, coordinate grids, slice choice, geometry projection, training."""

from __future__ import annotations

import json
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from spinegrade.core import vocab
from spinegrade.core.config.localizer_input import LocalizerInput
from spinegrade.core.config.train_localizer import LocalizerConfig
from spinegrade.core.errors import ConfigError
from spinegrade.data.convert import load_stack
from spinegrade.data.crops import normalize_stack
from spinegrade.data.dicom import Stack
from spinegrade.data.folds import split_folds
from spinegrade.data.geometry import pixel_to_world
from spinegrade.inference.localize import Localizer, project_to_axial
from spinegrade.models.heatmap import (
    HeatmapNet,
    Prediction,
    decode_heatmaps,
    gaussian_heatmaps,
    heatmap_dice,
    locate_points,
    point_errors,
)
from spinegrade.models.points import (
    build_samples,
    from_input,
    input_slices,
    make_sample,
    point_spec,
    to_input,
)
from spinegrade.training.localizers.fit import LocalizerDataset, train_localizer
from spinegrade.training.localizers.losses import heatmap_loss

AXIAL_IOP = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
TINY_INPUT = LocalizerInput(slices=3, step_mm=4.0, image_px=64, epochs=1)


def tiny_config(series: str, seed: int = 42) -> LocalizerConfig:
    return LocalizerConfig(
        series=(series,),
        batch_size=4,
        encoder="mobilenetv2_100",
        decoder_channels=8,
        inputs={series: TINY_INPUT},
        seed=seed,
    )


def make_stack(positions, iop, shape=(40, 50), spacing=(0.8, 0.6), seed=0) -> Stack:
    positions = np.asarray(positions, dtype=np.float64)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 1000, size=(len(positions), *shape)).astype(np.uint16)
    steps = np.diff(positions, axis=0)
    return Stack(
        pixels=pixels,
        positions=positions,
        orientation=np.asarray(iop, dtype=np.float64),
        spacing=np.asarray(spacing, dtype=np.float64),
        instance_numbers=np.arange(1, len(positions) + 1),
        slice_spacing=float(np.linalg.norm(steps, axis=1).mean()) if len(steps) else 1.0,
    )


def axial_stack(n=10, gap=5.0, **kw) -> Stack:
    return make_stack([[0.0, 0.0, i * gap] for i in range(n)], AXIAL_IOP, **kw)


def tilted_stack(t=0.3, n=8, gap=4.0, origin=(-5.0, -3.0, 1.0), **kw) -> Stack:
    iop = np.array([1.0, 0.0, 0.0, 0.0, np.cos(t), np.sin(t)])
    normal = np.cross(iop[:3], iop[3:])
    return make_stack([np.asarray(origin) + i * gap * normal for i in range(n)], iop, **kw)


@contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_tiny(samples, folds, series="sagittal_t2", seed=42, on_epoch=None):
    cfg = tiny_config(series, seed)
    with torch_threads(1):
        return train_localizer(samples, folds, point_spec(series), cfg, on_epoch)


# --------------------------------------------------------------------------- heatmaps


def test_gaussian_decodes_to_its_subpixel_centre():
    points = np.array([[10.3, 7.6], [25.8, 20.1], [14.5, 18.45]])
    maps = gaussian_heatmaps(points, (32, 40), sigma=1.5)
    assert maps.shape == (3, 32, 40) and maps.dtype == np.float32
    got, peaks = decode_heatmaps(maps)
    np.testing.assert_allclose(got, points, atol=0.05)
    np.testing.assert_allclose(peaks, maps.max(axis=(1, 2)))
    assert np.all(peaks > 0.8) and np.all(peaks <= 1.0)


def test_wide_window_decodes_to_the_subpixel_centre():
    points = np.array([[10.3, 7.6], [25.8, 20.1], [14.5, 18.45]])
    got, _ = decode_heatmaps(gaussian_heatmaps(points, (32, 40), sigma=1.5), window=5)
    np.testing.assert_allclose(got, points, atol=0.01)


def test_gaussian_on_a_pixel_centre_decodes_exactly():
    points = np.array([[10.0, 7.0], [0.0, 31.0]])  # the second one in a corner
    got, peaks = decode_heatmaps(gaussian_heatmaps(points, (32, 40), sigma=1.5))
    np.testing.assert_allclose(got[0], points[0], atol=1e-9)
    np.testing.assert_allclose(peaks, 1.0, rtol=1e-6)


def test_gaussian_peak_is_one_at_integer_point():
    maps = gaussian_heatmaps(np.array([[6.0, 3.0]]), (10, 12), sigma=2.0)
    assert maps[0, 3, 6] == pytest.approx(1.0)
    assert maps[0].argmax() == np.ravel_multi_index((3, 6), (10, 12))
    assert maps[0, 3, 8] == pytest.approx(np.exp(-4 / 8), rel=1e-5)


def test_nan_point_gives_zero_map():
    maps = gaussian_heatmaps(np.array([[5.0, 5.0], [np.nan, np.nan], [3.0, np.nan]]), (16, 16), 1.5)
    assert maps[0].max() == pytest.approx(1.0)
    assert not maps[1].any() and not maps[2].any()


def test_point_near_border_still_decodes():
    # one pixel in from the left, top and bottom-right edges of a 32 x 40 map
    points = np.array([[1.0, 15.2], [38.0, 1.0], [38.2, 30.0]])
    maps = gaussian_heatmaps(points, (32, 40), sigma=1.5)
    got, _ = decode_heatmaps(maps)
    assert np.abs(got - points).max() < 0.5


def test_decode_peak_is_the_max_of_any_map():
    rng = np.random.default_rng(3)
    maps = rng.random((4, 9, 11))
    maps[2] = 0.0
    got, peaks = decode_heatmaps(maps)
    np.testing.assert_array_equal(peaks, maps.max(axis=(1, 2)))
    for k in (0, 1, 3):
        y0, x0 = np.unravel_index(maps[k].argmax(), maps[k].shape)
        assert abs(got[k, 0] - x0) <= 2 and abs(got[k, 1] - y0) <= 2
    assert np.isfinite(got).all()


def test_dice_identical_is_one():
    maps = gaussian_heatmaps(np.array([[8.0, 9.0], [20.5, 3.3]]), (24, 32), 1.5)
    np.testing.assert_allclose(heatmap_dice(maps, maps), 1.0, rtol=1e-6)


def test_dice_far_apart_is_near_zero():
    a = gaussian_heatmaps(np.array([[4.0, 4.0]]), (32, 32), 1.5)
    b = gaussian_heatmaps(np.array([[27.0, 27.0]]), (32, 32), 1.5)
    assert heatmap_dice(a, b)[0] < 0.01
    near = gaussian_heatmaps(np.array([[5.0, 4.0]]), (32, 32), 1.5)
    assert heatmap_dice(a, b)[0] < heatmap_dice(a, near)[0] < heatmap_dice(a, a)[0]


def test_dice_is_scale_invariant():
    pred = gaussian_heatmaps(np.array([[8.0, 9.0], [3.0, 3.0]]), (16, 16), 2.0)
    target = gaussian_heatmaps(np.array([[9.5, 8.0], [4.0, 5.0]]), (16, 16), 1.5)
    base = heatmap_dice(pred, target)
    np.testing.assert_allclose(heatmap_dice(pred * 7, target), base, rtol=1e-6)
    np.testing.assert_allclose(heatmap_dice(pred / pred.sum(), target), base, rtol=1e-5)
    assert np.all(base < 1.0)


# -------------------------------------------------------------------- coordinate grids


def test_input_grid_round_trip_non_square():
    rng = np.random.default_rng(1)
    shape = (120, 90)  # rows, cols
    xy = np.column_stack([rng.uniform(-0.5, 89.5, 20), rng.uniform(-0.5, 119.5, 20)])
    np.testing.assert_allclose(from_input(to_input(xy, shape, 64), shape, 64), xy, atol=1e-9)


def test_input_grid_maps_pixel_edges_to_edges():
    shape = (120, 90)
    corners = np.array([[-0.5, -0.5], [89.5, 119.5]])
    np.testing.assert_allclose(to_input(corners, shape, 64), [[-0.5, -0.5], [63.5, 63.5]])
    # the image centre stays the centre; x scales by 64/90 and y by 64/120
    np.testing.assert_allclose(to_input(np.array([44.5, 59.5]), shape, 64), [31.5, 31.5])
    one_col = to_input(np.array([[10.0, 10.0], [11.0, 10.0], [10.0, 11.0]]), shape, 64)
    np.testing.assert_allclose(one_col[1] - one_col[0], [64 / 90, 0.0])
    np.testing.assert_allclose(one_col[2] - one_col[0], [0.0, 64 / 120])


def test_input_slices_nearest_depths():
    depths = np.arange(10) * 3.0  # 0, 3, ..., 27 mm
    # targets 9, 13, 17 mm -> 9 (3), 12 (4), 18 (6)
    np.testing.assert_array_equal(input_slices(depths, 13.0, 3, 4.0), [3, 4, 6])
    # targets 6.2, 10.2, 14.2, 18.2, 22.2 -> 6, 9, 15, 18, 21
    np.testing.assert_array_equal(input_slices(depths, 14.2, 5, 4.0), [2, 3, 5, 6, 7])
    np.testing.assert_array_equal(input_slices(depths, 13.0, 1, 4.0), [4])


def test_input_slices_clamp_to_stack_ends():
    depths = np.arange(10) * 3.0
    # targets -8, -4, 0, 4, 8 -> 0, 0, 0, 3 (1), 9 (3)
    np.testing.assert_array_equal(input_slices(depths, 0.0, 5, 4.0), [0, 0, 0, 1, 3])
    np.testing.assert_array_equal(input_slices(depths, 27.0, 5, 4.0), [6, 8, 9, 9, 9])
    # depths falling along the stack (stacks may run either way along the normal)
    np.testing.assert_array_equal(input_slices(depths[::-1], 27.0, 3, 4.0), [1, 0, 0])


# ------------------------------------------------------------------ axial projection


def test_point_on_a_slice_plane_picks_that_slice():
    stack = axial_stack()
    for i in (0, 4, 9):
        point = pixel_to_world(12.3, 20.7, stack.positions[i], stack.orientation, stack.spacing)
        hit = project_to_axial(point, [(111, 0, stack)], max_mm=10.0)
        assert hit is not None
        assert hit[:3] == (111, 0, i)
        assert hit[3] == pytest.approx(0.0, abs=1e-9)


def test_point_between_slices_picks_the_nearer():
    stack = axial_stack(gap=5.0)
    base = pixel_to_world(30.0, 10.0, stack.positions[4], stack.orientation, stack.spacing)
    hit = project_to_axial(base + [0.0, 0.0, 1.5], [(111, 0, stack)], max_mm=10.0)
    assert hit[:3] == (111, 0, 4) and hit[3] == pytest.approx(1.5)
    hit = project_to_axial(base + [0.0, 0.0, 3.5], [(111, 0, stack)], max_mm=10.0)
    assert hit[:3] == (111, 0, 5) and hit[3] == pytest.approx(1.5)
    hit = project_to_axial(base - [0.0, 0.0, 3.0], [(111, 0, stack)], max_mm=10.0)
    assert hit[:3] == (111, 0, 3) and hit[3] == pytest.approx(2.0)


def test_point_beyond_max_mm_is_not_matched():
    stack = axial_stack(n=10, gap=5.0)  # planes at z = 0 .. 45
    below = pixel_to_world(20.0, 20.0, stack.positions[0], stack.orientation, stack.spacing)
    below = below - [0.0, 0.0, 12.0]
    assert project_to_axial(below, [(111, 0, stack)], max_mm=10.0) is None
    hit = project_to_axial(below, [(111, 0, stack)], max_mm=12.5)
    assert hit[:3] == (111, 0, 0) and hit[3] == pytest.approx(12.0)
    assert project_to_axial(below, [], max_mm=100.0) is None


def test_point_outside_the_image_is_not_matched():
    stack = axial_stack(shape=(40, 50))
    ipp, iop, sp = stack.positions[4], stack.orientation, stack.spacing
    assert project_to_axial(pixel_to_world(49.6, 10.0, ipp, iop, sp), [(1, 0, stack)], 10.0) is None
    assert project_to_axial(pixel_to_world(10.0, -0.7, ipp, iop, sp), [(1, 0, stack)], 10.0) is None
    inside = project_to_axial(pixel_to_world(49.4, 39.4, ipp, iop, sp), [(1, 0, stack)], 10.0)
    assert inside[:3] == (1, 0, 4)


def test_tilted_stack_and_several_series():
    flat = axial_stack(n=10, gap=5.0, shape=(40, 50))
    tilted = tilted_stack(t=0.3, n=8, gap=4.0, shape=(60, 70))
    stacks = [(111, 0, flat), (222, 1, tilted)]
    for i in (2, 5):
        point = pixel_to_world(30.2, 40.6, tilted.positions[i], tilted.orientation, tilted.spacing)
        hit = project_to_axial(point, stacks, max_mm=10.0)
        assert hit[:3] == (222, 1, i) and hit[3] == pytest.approx(0.0, abs=1e-9)
    # a point on a flat slice but outside its image falls to the tilted stack's nearest plane
    point = pixel_to_world(60.0, 45.0, flat.positions[1], flat.orientation, flat.spacing)
    hit = project_to_axial(point, stacks, max_mm=10.0)
    assert hit is not None and hit[:2] == (222, 1)
    d = (point - tilted.positions) @ tilted.normal
    assert hit[2] == int(np.abs(d).argmin()) and hit[3] == pytest.approx(np.abs(d).min())


def _label_slice_map(volumes_dir):
    slices = pd.read_csv(volumes_dir / "slices.csv")
    where = {
        (int(r.series_id), int(r.instance_number)): (int(r.stack), int(r.slice))
        for r in slices.itertuples(index=False)
    }
    return slices, where


def test_spinal_points_project_onto_labelled_axial_slices(tiny_ingest, tiny_volumes):
    volumes_dir, _ = tiny_volumes
    slices, where = _label_slice_map(volumes_dir)
    labels = tiny_ingest.labels.dropna(subset=["series_id", "x"])
    subarticular = list(vocab.GROUPS["subarticular"].conditions)
    agree = pairs = 0
    for study, g in labels.groupby("study_id"):
        spinal = g[
            (g["condition"] == "spinal_canal_stenosis")
            & (g["series_description"] == vocab.SAGITTAL_T2)
        ]
        axial = g[g["condition"].isin(subarticular) & (g["series_description"] == vocab.AXIAL_T2)]
        ax_series = slices.loc[
            (slices["study_id"] == study) & (slices["series_description"] == vocab.AXIAL_T2),
            ["series_id", "stack"],
        ].drop_duplicates()
        stacks = [
            (int(s), int(k), load_stack(volumes_dir / str(study) / str(s), int(k)))
            for s, k in ax_series.itertuples(index=False)
        ]
        for r in spinal.itertuples(index=False):
            labelled = axial[axial["level"] == r.level]
            if labelled.empty:
                continue
            k, i = where[(int(r.series_id), int(r.instance_number))]
            sag = load_stack(volumes_dir / str(study) / str(int(r.series_id)), k)
            point = pixel_to_world(r.x, r.y, sag.positions[i], sag.orientation, sag.spacing)
            expected = {
                (int(a.series_id), *where[(int(a.series_id), int(a.instance_number))])
                for a in labelled.itertuples(index=False)
            }
            hit = project_to_axial(point, stacks, max_mm=10.0)
            pairs += 1
            agree += hit is not None and hit[:3] in expected
    assert pairs >= 5
    assert agree >= 0.9 * pairs, f"{agree}/{pairs} spinal points on the labelled axial slice"


# ----------------------------------------------------------------------------- points


def test_point_spec_keys():
    t2 = point_spec("sagittal_t2")
    assert t2.per_level and t2.keys == [("spinal_canal_stenosis", lv) for lv in vocab.LEVELS]
    t1 = point_spec("sagittal_t1")
    assert len(t1.keys) == 10 and t1.per_level
    assert t1.keys[:5] == [("left_neural_foraminal_narrowing", lv) for lv in vocab.LEVELS]
    assert t1.keys[5:] == [("right_neural_foraminal_narrowing", lv) for lv in vocab.LEVELS]
    ax = point_spec("axial_t2")
    assert not ax.per_level
    assert ax.keys == [("left_subarticular_stenosis", ""), ("right_subarticular_stenosis", "")]


@pytest.mark.parametrize("slug", ["sagittal_t3", "Sagittal T1", ""])
def test_point_spec_unknown_slug(slug):
    with pytest.raises(ConfigError):
        point_spec(slug)


# ------------------------------------------------------------------------------ model


def test_heatmap_net_shapes():
    torch.manual_seed(0)
    net = HeatmapNet("mobilenetv2_100", in_chans=3, n_points=5, channels=8).eval()
    assert net.stride == 2
    with torch.no_grad():
        heat, off = net(torch.rand(2, 3, 64, 64))
    assert heat.shape == (2, 5, 32, 32)
    assert off.shape == (2, 5)
    assert torch.isfinite(heat).all() and torch.isfinite(off).all()


def test_heatmap_net_unknown_encoder():
    with pytest.raises(ConfigError):
        HeatmapNet("no_such_encoder_xyz", in_chans=3, n_points=2)


def test_heatmap_loss_prefers_peaked_logits():
    pts = np.array([[5.0, 6.0], [10.0, 3.0]])
    target = torch.from_numpy(gaussian_heatmaps(pts, (16, 16), 1.5))[None]
    mask = torch.ones(1, 2)
    flat = torch.zeros(1, 2, 16, 16)
    peaked = 8.0 * target
    wrong = 8.0 * torch.from_numpy(gaussian_heatmaps(pts[::-1].copy(), (16, 16), 1.5))[None]
    lp, lf, lw = (float(heatmap_loss(x, target, mask)) for x in (peaked, flat, wrong))
    assert lp < lf < lw
    assert lf == pytest.approx(np.log(256), rel=1e-5)  # uniform softmax over 16 x 16


def test_heatmap_loss_ignores_masked_points():
    rng = torch.Generator().manual_seed(0)
    pts = np.array([[5.0, 6.0], [10.0, 3.0]])
    target = torch.from_numpy(gaussian_heatmaps(pts, (16, 16), 1.5))[None]
    logits = torch.randn(1, 2, 16, 16, generator=rng)
    mask = torch.tensor([[1.0, 0.0]])
    base = float(heatmap_loss(logits, target, mask))
    other = logits.clone()
    other[0, 1] = torch.randn(16, 16, generator=rng) * 10
    assert float(heatmap_loss(other, target, mask)) == pytest.approx(base, rel=1e-6)
    other_target = target.clone()
    other_target[0, 1] = 0.0  # an absent point's map is all zero
    assert float(heatmap_loss(logits, other_target, mask)) == pytest.approx(base, rel=1e-6)
    only_first = float(heatmap_loss(logits[:, :1], target[:, :1], torch.ones(1, 1)))
    assert base == pytest.approx(only_first, rel=1e-6)
    assert float(heatmap_loss(logits, target, torch.ones(1, 2))) != pytest.approx(base)


# ------------------------------------------------------------- sample geometry chain


def _sagittal_sample():
    # a sagittal-like stack: normal along x, 11 slices 3.5 mm apart, 120 x 90 pixels
    iop = np.array([0.0, 1.0, 0.0, 0.0, 0.0, -1.0])
    stack = make_stack(
        [[-17.5 + 3.5 * i, -40.0, 60.0] for i in range(11)],
        iop,
        shape=(120, 90),
        spacing=(0.9, 0.7),
    )
    return stack, make_sample(stack, normalize_stack(stack.pixels), None, TINY_INPUT, 5)


def _orig_of_heatmap_pixel(hx: float, hy: float) -> list[float]:
    """Original (x, y) of heatmap pixel (hx, hy) for the sample above: stride 2, 64 px input
    from 90 columns and 120 rows (pixel centres at integers in every grid)."""
    in_x, in_y = (hx + 0.5) * 2 - 0.5, (hy + 0.5) * 2 - 0.5
    return [(in_x + 0.5) * 90 / 64 - 0.5, (in_y + 0.5) * 120 / 64 - 0.5]


def test_make_sample_centres_on_the_stack_middle():
    stack, s = _sagittal_sample()
    assert s.image.shape == (3, 64, 64) and s.image.dtype == np.float32
    assert s.shape == (120, 90)
    depths = stack.positions @ stack.normal
    assert s.centre_mm == pytest.approx((depths.min() + depths.max()) / 2)
    assert s.centre == 5
    assert np.all(s.slices == -1) and np.isnan(s.points).all()
    axial = make_sample(stack, normalize_stack(stack.pixels), 2, TINY_INPUT, 5)
    assert axial.centre == 2 and axial.centre_mm == pytest.approx(depths[2])


def test_dataset_target_decodes_back_to_the_labelled_point():
    _, s = _sagittal_sample()
    s.points[0] = _orig_of_heatmap_pixel(11, 20)  # on a heatmap pixel centre
    s.points[2] = [23.4, 81.7]  # anywhere
    s.slices[[0, 2]] = [7, 1]
    image, target, mask, offsets = LocalizerDataset([s], stride=2, sigma=1.5)[0]
    assert image.shape == (3, 64, 64) and target.shape == (5, 32, 32)
    np.testing.assert_array_equal(mask.numpy(), [1.0, 0.0, 1.0, 0.0, 0.0])
    assert target[0, 20, 11] == pytest.approx(1.0)
    assert not target[[1, 3, 4]].any()
    assert offsets[0].item() == pytest.approx(s.depths[7] - s.centre_mm, abs=1e-5)
    assert offsets[2].item() == pytest.approx(s.depths[1] - s.centre_mm, abs=1e-5)
    assert np.all(offsets[[1, 3, 4]].numpy() == 0.0)
    # heatmaps -> original grid through locate_points, slice through the offset
    xy, sl, _ = locate_points(s, target.numpy(), offsets.numpy(), stride=2, per_level=True)
    np.testing.assert_allclose(xy[0], s.points[0], atol=1e-6)
    # sub-pixel: within a quarter heatmap pixel (2.8 x 3.75 original pixels per heatmap pixel)
    assert np.all(np.abs(xy[2] - s.points[2]) < [0.25 * 2.8125, 0.25 * 3.75])
    assert sl[0] == 7 and sl[2] == 1
    xy, sl, _ = locate_points(s, target.numpy(), offsets.numpy(), stride=2, per_level=False)
    assert np.all(sl == s.centre)


def test_point_errors_of_a_perfect_prediction():
    _, s = _sagittal_sample()
    s.study_id, s.series_id = 5, 6
    s.points[[0, 3]] = [_orig_of_heatmap_pixel(11, 20), _orig_of_heatmap_pixel(25, 6)]
    s.slices[[0, 3]] = [7, 2]
    spec = point_spec("sagittal_t2")
    _, target, _, offsets = LocalizerDataset([s], stride=2, sigma=1.5)[0]
    heat = target.numpy() + 1e-9
    heat /= heat.sum(axis=(1, 2), keepdims=True)
    pred = Prediction(heat[None], offsets.numpy()[None])
    errors = point_errors([s], pred, spec, stride=2, sigma=1.5)
    assert len(errors) == 2
    assert errors["level"].tolist() == ["l1_l2", "l4_l5"]
    assert (errors["study_id"] == 5).all() and (errors["series_id"] == 6).all()
    assert (errors["slice_error"] == 0).all()
    np.testing.assert_allclose(errors[["error_mm", "inplane_error_mm"]], 0.0, atol=1e-6)
    # one slice off along the offset: the 3D error is the slice gap (3.5 mm), in-plane none
    late = point_errors([s], Prediction(heat[None], offsets.numpy()[None] + 3.5), spec, 2, 1.5)
    assert (late["slice_error"] == 1).all()
    np.testing.assert_allclose(late["error_mm"], 3.5, atol=1e-6)
    np.testing.assert_allclose(late["inplane_error_mm"], 0.0, atol=1e-6)
    # two heatmap pixels right: 2 * 2.8125 columns of 0.7 mm
    moved = np.roll(heat, 2, axis=2)
    off = point_errors([s], Prediction(moved[None], offsets.numpy()[None]), spec, 2, 1.5)
    np.testing.assert_allclose(off["inplane_error_mm"], 2 * 2.8125 * 0.7, atol=1e-6)
    assert np.all(off["dice"].to_numpy() < errors["dice"].to_numpy())
    assert off["dice"].between(0, 1).all()


# --------------------------------------------------------------------- tiny dataset


@pytest.fixture(scope="module")
def samples(tiny_ingest, tiny_volumes):
    volumes_dir, _ = tiny_volumes
    slices = pd.read_csv(volumes_dir / "slices.csv")
    return {
        slug: build_samples(tiny_ingest.labels, slices, volumes_dir, point_spec(slug), TINY_INPUT)
        for slug in vocab.SERIES_FROM_SLUG
    }


def _labelled_rows(labels, slices, slug):
    spec = point_spec(slug)
    rows = labels[
        labels["condition"].isin(spec.conditions)
        & (labels["series_description"] == vocab.SERIES_FROM_SLUG[slug])
        & labels["x"].notna()
    ].dropna(subset=["series_id"])
    rows = rows.astype({"series_id": "int64", "instance_number": "int64"})
    return rows.merge(
        slices[["series_id", "instance_number", "stack", "slice"]],
        on=["series_id", "instance_number"],
    )


@pytest.mark.parametrize("slug", ["sagittal_t2", "sagittal_t1", "axial_t2"])
def test_build_samples(samples, tiny_ingest, tiny_volumes, slug):
    volumes_dir, _ = tiny_volumes
    slices = pd.read_csv(volumes_dir / "slices.csv")
    spec = point_spec(slug)
    got = samples[slug]
    rows = _labelled_rows(tiny_ingest.labels, slices, slug)
    assert got and len(rows)
    for s in got:
        assert s.image.shape == (3, 64, 64) and s.image.dtype == np.float32
        assert s.image.min() >= 0.0 and s.image.max() <= 1.0 and s.image.max() > 0.0
        present = np.isfinite(s.points).all(axis=1)
        assert present.any()
        np.testing.assert_array_equal(present, s.slices >= 0)
        assert np.all(s.slices < len(s.depths)) and np.all(s.slices[~present] == -1)
        assert np.all(np.isnan(s.points[~present]))
        assert 0 <= s.centre < len(s.depths)
        assert s.points.shape == (len(spec.keys), 2)
    if spec.per_level:
        keys = [(s.study_id, s.series_id, s.stack) for s in got]
        assert len(set(keys)) == len(keys)
        assert set(keys) == set(
            map(tuple, rows[["study_id", "series_id", "stack"]].drop_duplicates().values.tolist())
        )
        assert all(s.level == "" for s in got)
    else:
        assert all(s.level in vocab.LEVELS for s in got)
        keys = [(s.study_id, s.level, s.series_id, s.stack, s.centre) for s in got]
        assert len(set(keys)) == len(keys)
        expected = rows[["study_id", "level", "series_id", "stack", "slice"]].drop_duplicates()
        assert set(keys) == set(map(tuple, expected.values.tolist()))
        assert all(np.all(s.slices[s.slices >= 0] == s.centre) for s in got)
    # every labelled point sits in its sample at its key's channel
    index = {k: i for i, k in enumerate(spec.keys)}
    by_key = {
        (s.study_id, s.series_id, s.stack, s.level if not spec.per_level else ""): s for s in got
    }
    assert sum(int((s.slices >= 0).sum()) for s in got) == len(rows)
    for r in rows.itertuples(index=False):
        s = by_key[(r.study_id, r.series_id, r.stack, "" if spec.per_level else r.level)]
        i = index[(r.condition, r.level if spec.per_level else "")]
        np.testing.assert_allclose(s.points[i], [r.x, r.y])
        assert s.slices[i] == r.slice


@pytest.fixture(scope="module")
def folds(tiny_ingest):
    return split_folds(tiny_ingest.labels, n_folds=4, seed=0)


@pytest.fixture(scope="module")
def trained(samples, folds):
    rows: list[dict] = []
    result = train_tiny(samples["sagittal_t2"], folds, on_epoch=lambda e, row: rows.append(row))
    return result, rows


def test_train_localizer_end_to_end(trained, samples, folds):
    result, rows = trained
    fold_of = dict(zip(folds["study_id"], folds["fold"], strict=True))
    val = [s for s in samples["sagittal_t2"] if fold_of[s.study_id] == 0]
    assert val and len(val) < len(samples["sagittal_t2"])
    assert isinstance(result.state, dict) and result.state
    assert all(isinstance(v, torch.Tensor) for v in result.state.values())
    assert len(result.history) == 1 and len(rows) == 1
    assert {"epoch", "train_loss", "val_loss"} <= set(result.history.columns)
    assert np.isfinite(result.history[["train_loss", "val_loss"]].to_numpy()).all()
    errors = result.errors
    assert len(errors) == sum(int((s.slices >= 0).sum()) for s in val)
    assert set(errors["study_id"]) == {s.study_id for s in val}
    assert (errors["error_mm"] >= 0).all() and (errors["inplane_error_mm"] >= 0).all()
    assert errors["dice"].between(0, 1).all()
    m = result.metrics
    for key in ("point_error_mm_median", "point_error_mm_p90", "heatmap_dice"):
        assert np.isfinite(m[key])
    assert m["point_error_mm_p90"] >= m["point_error_mm_median"] >= 0
    assert m["heatmap_dice"] == pytest.approx(errors["dice"].mean())
    assert m["val_samples"] == len(val)
    assert result.meta["stride"] == 2 and result.meta["n_points"] == 5


def test_localizer_round_trip(trained, tiny_ingest, tiny_volumes, tmp_path):
    result, _ = trained
    (tmp_path / "localizer.json").write_text(json.dumps(result.meta))
    save_file(result.state, str(tmp_path / "weights.safetensors"))
    loc = Localizer.load(tmp_path)
    assert loc.spec == point_spec("sagittal_t2") and loc.inp == TINY_INPUT
    for name, value in loc.model.state_dict().items():
        torch.testing.assert_close(value, result.state[name], rtol=0, atol=0)
    volumes_dir, _ = tiny_volumes
    slices = pd.read_csv(volumes_dir / "slices.csv")
    row = slices[slices["series_description"] == vocab.SAGITTAL_T2].iloc[0]
    stack = load_stack(volumes_dir / str(row.study_id) / str(row.series_id), int(row.stack))
    (df,) = loc.locate(stack, normalize_stack(stack.pixels))
    assert list(zip(df["condition"], df["level"], strict=True)) == loc.spec.keys
    assert df["slice"].between(0, len(stack.positions) - 1).all()
    h, w = stack.pixels.shape[1:]
    assert np.isfinite(df[["x", "y", "peak"]].to_numpy()).all()
    assert df["x"].between(-0.5, w - 0.5).all() and df["y"].between(-0.5, h - 0.5).all()
    with pytest.raises(FileNotFoundError):
        Localizer.load(tmp_path / "missing")


def test_train_localizer_is_deterministic(trained, samples, folds):
    result, _ = trained
    again = train_tiny(samples["sagittal_t2"], folds)
    cols = ["train_loss", "val_loss"]
    np.testing.assert_array_equal(again.history[cols].to_numpy(), result.history[cols].to_numpy())
    pd.testing.assert_frame_equal(again.errors, result.errors)
    other = train_tiny(samples["sagittal_t2"], folds, seed=43)
    assert other.history["train_loss"].iloc[0] != result.history["train_loss"].iloc[0]


def test_train_localizer_needs_a_fold_for_every_study(samples, folds):
    sag = samples["sagittal_t2"]
    missing = folds[folds["study_id"] != sag[0].study_id]
    with pytest.raises(ValueError, match="without a fold"):
        train_tiny(sag, missing)
    with pytest.raises(ValueError, match="need samples"):
        train_tiny(sag, folds.assign(fold=0))
