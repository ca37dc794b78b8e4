"""Localisation building blocks: CAM upsampling, Integrated Gradients, the joint map, regions.

Covers model/inference/localise.py on tensors and hand-made arrays (IG's completeness axiom, batching
invariance, the method's joint-map formula, 3D components with volumes in ml). Not covered here:
the whole series map of a trained model and its match with lesion masks (test_predict.py,
test_evaluate.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from model.inference import localise
from model.inference.localise import LocalisationSettings
from model.inference.network import WeaklySupervisedNet


def _tiny_net() -> WeaklySupervisedNet:
    torch.manual_seed(1)
    net = WeaklySupervisedNet(widths=(4, 4, 8, 8, 8), depths=(1, 1, 1, 1, 1))
    # Non-trivial BatchNorm statistics, then eval mode (IG needs a deterministic network).
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(8, 1, 32, 32))
    return net.eval()


@pytest.mark.slow
def test_integrated_gradients_completeness_per_scale() -> None:
    net = _tiny_net()
    x = torch.randn(2, 1, 32, 32)
    target = torch.tensor([0, 2])
    attr = localise.integrated_gradients(net, x, target, steps=200, baseline=-1.0, batch=100)
    assert tuple(attr.shape) == (2, 3, 1, 32, 32)
    with torch.no_grad():
        hi = net(x).logits
        lo = net(torch.full_like(x, -1.0)).logits
    for s in range(3):
        delta = (hi[s] - lo[s]).gather(1, target.view(-1, 1)).squeeze(1)
        got = attr[:, s].sum(dim=(1, 2, 3))
        assert torch.allclose(got, delta, atol=0.05 * float(delta.abs().max()) + 1e-3), (s, got, delta)


@pytest.mark.slow
def test_integrated_gradients_batching_does_not_change_result() -> None:
    net = _tiny_net()
    x = torch.randn(3, 1, 32, 32)
    target = torch.tensor([1, 1, 0])
    a = localise.integrated_gradients(net, x, target, steps=5, batch=1)
    b = localise.integrated_gradients(net, x, target, steps=5, batch=7)
    assert torch.allclose(a, b, atol=1e-5)


def test_integrated_gradients_refuses_training_mode() -> None:
    net = _tiny_net().train()
    with pytest.raises(RuntimeError):
        localise.integrated_gradients(net, torch.zeros(1, 1, 32, 32), torch.tensor([0]), steps=2)


def test_visualise_attribution_matches_authors_view() -> None:
    attr = torch.zeros(1, 1, 1, 10, 10)
    attr[0, 0, 0, 0, :] = torch.arange(10, dtype=torch.float32) - 5  # |.| in 0..5
    vis = localise.visualise_attribution(attr)
    assert tuple(vis.shape) == (1, 1, 10, 10)
    assert float(vis.min()) == 0.0 and float(vis.max()) == 1.0


def test_joint_map_formula() -> None:
    maps = np.array([[[[0.0, 1.0]], [[0.5, 1.0]], [[0.0, 0.0]]]])  # (1, 3 scales, 1, 2)
    joint = localise.joint_map(maps)
    assert joint.shape == (1, 1, 2)
    assert joint[0, 0, 0] == pytest.approx(2.0 * 2.5 * 2.0)
    assert joint[0, 0, 1] == pytest.approx(3.0 * 3.0 * 2.0)


def test_min_max_inside_mask_only() -> None:
    values = np.array([[5.0, 7.0, 100.0]])
    mask = np.array([[True, True, False]])
    out = localise.min_max(values, mask)
    assert out.tolist() == [[0.0, 1.0, 0.0]]
    assert localise.min_max(np.ones((2, 2)), np.ones((2, 2), bool)).max() == 0.0


def test_upsample_and_series_normalisation() -> None:
    cams = [torch.ones(2, 2, 2), torch.ones(2, 1, 1) * 3]
    up = localise.upsample_cams(cams, 8)
    assert tuple(up.shape) == (2, 2, 8, 8)
    norm = localise.normalise_cams_series(up)
    assert float(norm.max()) == pytest.approx(1.0)


def test_find_regions_volumes_and_order() -> None:
    heat = np.zeros((6, 20, 20), dtype=np.float32)
    lung = np.ones_like(heat, dtype=bool)
    heat[1:3, 2:6, 2:6] = 0.7  # 2*4*4 = 32 voxels
    heat[4, 10:12, 10:13] = 0.9  # 6 voxels, stronger
    heat[4, 10, 10] = 1.0
    heat[0, 19, 19] = 0.8  # one voxel: dropped by min volume
    lung[0, 19, 19] = True
    labels, regions = localise.find_regions(heat, lung, spacing=(2.0, 0.5, 0.5), threshold=0.5, min_volume_ml=0.002)
    assert [r.index for r in regions] == [1, 2]
    strong, weak = regions
    assert strong.max_score == pytest.approx(1.0) and strong.peak == (4, 10, 10)
    assert strong.slice_range == (4, 4) and strong.bbox == (4, 10, 10, 4, 11, 12)
    assert strong.volume_ml == pytest.approx(6 * 0.5 / 1000)
    assert weak.volume_ml == pytest.approx(32 * 0.5 / 1000) and weak.mean_score == pytest.approx(0.7)
    assert labels.dtype == np.uint16 and int((labels == 2).sum()) == 32 and labels[0, 19, 19] == 0
    assert localise.involvement_percent(labels, lung) == pytest.approx(100 * 38 / lung.sum())


def test_find_regions_respects_lung_mask() -> None:
    heat = np.ones((2, 4, 4), dtype=np.float32)
    lung = np.zeros_like(heat, dtype=bool)
    labels, regions = localise.find_regions(heat, lung, (1.0, 1.0, 1.0), 0.5)
    assert regions == [] and labels.max() == 0
    assert localise.involvement_percent(labels, lung) == 0.0


def test_solid_consolidation_keeps_blobs_not_vessels() -> None:
    hu = np.full((3, 40, 40), -850.0, dtype=np.float32)
    lung = np.ones(hu.shape, dtype=bool)
    hu[1, 5:20, 5:20] = 20.0  # a 15 x 15 mm consolidation
    hu[1, 30, 2:38] = 40.0  # a vessel 1 mm wide, in plane
    hu[1, 25:27, 30:32] = 40.0  # a vessel 2 mm across, through the plane
    hu[2, 5:20, 5:20] = -600.0  # ground glass: not consolidation
    solid = localise.solid_consolidation(hu, lung, (1.0, 1.0), min_hu=-300.0, opening_mm=4.0)
    assert solid[1, 5:20, 5:20].all() and solid.sum() == 225
    lung[1, 5:20, 5:12] = False  # only inside the lungs
    assert localise.solid_consolidation(hu, lung, (1.0, 1.0)).sum() == 15 * 8


def test_solid_consolidation_is_a_slice_by_slice_opening_of_the_dense_lung() -> None:
    """The same voxels as scipy's binary opening with the square (beyond the lungs' box: not
    dense), whatever the blobs' sizes and places, on the edges of the box included."""
    rng = np.random.default_rng(3)
    hu = np.full((6, 90, 120), -850.0, dtype=np.float32)
    lung = np.zeros(hu.shape, dtype=bool)
    lung[1:5, 4:86, 3:117] = True
    for _ in range(40):
        z, y, x = rng.integers(0, 6), rng.integers(0, 90), rng.integers(0, 120)
        h, w = rng.integers(1, 14, size=2)
        hu[z, y : y + h, x : x + w] = 30.0
    hu[rng.random(hu.shape) < 0.02] = 40.0  # specks
    solid = localise.solid_consolidation(hu, lung, (0.8, 0.8), min_hu=-300.0, opening_mm=4.0)
    r = int(round(0.8 * 4.0 / 0.8))
    box = (slice(1, 5), slice(4, 86), slice(3, 117))
    dense = lung[box] & (hu[box] >= -300.0)
    square = np.zeros((1, 2 * r + 1, 2 * r + 1), dtype=bool)
    square[0] = True
    expected = np.zeros(hu.shape, dtype=bool)
    expected[box] = ndimage.binary_opening(dense, structure=square, border_value=0)
    assert solid.sum() > 0 and np.array_equal(solid, expected & lung)


def test_regions_grow_through_what_they_touch_only() -> None:
    heat = np.zeros((2, 20, 20), dtype=np.float32)
    lung = np.ones(heat.shape, dtype=bool)
    heat[0, 2:4, 2:4] = 0.9  # the map's region
    grow = np.zeros(heat.shape, dtype=bool)
    grow[0, 2:10, 2:10] = True  # the consolidation it lies in
    grow[1, 15:18, 15:18] = True  # consolidation the map does not point at
    labels, regions = localise.find_regions(heat, lung, (1.0, 1.0, 1.0), 0.5, grow_into=grow)
    assert len(regions) == 1 and regions[0].volume_ml == pytest.approx(64 / 1000)
    assert regions[0].max_score == pytest.approx(0.9) and regions[0].peak[1:] == (2, 2)
    assert labels[1].max() == 0
    assert localise.find_regions(np.zeros_like(heat), lung, (1.0, 1.0, 1.0), 0.5, grow_into=grow)[1] == []


def test_regions_take_the_fainter_map_around_them_only_with_grow_threshold_and_for_its_classes() -> None:
    heat = np.zeros((2, 20, 20), dtype=np.float32)
    hu = np.full(heat.shape, -850.0, dtype=np.float32)  # aerated: no consolidation to grow through
    lung = np.ones(heat.shape, dtype=bool)
    heat[0, 2:10, 2:10] = 0.25  # faint ground glass around ...
    heat[0, 4:6, 4:6] = 0.6  # ... its hot core
    heat[1, 14:18, 14:18] = 0.25  # faint map with no core: never a region
    spacing = (1.0, 1.0, 1.0)
    plain = LocalisationSettings(threshold=0.5)
    solid = localise.region_growth(hu, heat, lung, spacing, plain, "covid")
    assert solid is not None and not solid.any()  # consolidation growth, here empty
    assert localise.region_growth(hu, heat, lung, spacing, LocalisationSettings(consolidation_hu=None), "covid") is None
    core, _ = localise.find_regions(heat, lung, spacing, 0.5, grow_into=solid)
    assert int((core > 0).sum()) == 4
    faint = LocalisationSettings(threshold=0.5, grow_threshold=0.2)
    grow = localise.region_growth(hu, heat, lung, spacing, faint, "covid")
    labels, regions = localise.find_regions(heat, lung, spacing, 0.5, grow_into=grow)
    assert len(regions) == 1 and int((labels > 0).sum()) == 64 and labels[1].max() == 0
    assert regions[0].max_score == pytest.approx(0.6)
    # A CAP decision keeps its core: by default only COVID-19 regions take the fainter map.
    not_cap = localise.region_growth(hu, heat, lung, spacing, faint, "cap")
    assert not_cap is not None and not not_cap.any()
    both = LocalisationSettings(threshold=0.5, grow_threshold=0.2, grow_classes=["covid", "cap"])  # type: ignore[arg-type]
    assert both.grow_classes == ("covid", "cap")  # a JSON list from metadata becomes a tuple
    cap_grow = localise.region_growth(hu, heat, lung, spacing, both, "cap")
    assert cap_grow is not None and grow is not None and np.array_equal(cap_grow, grow)
    # Outside the region space (the lungs but for the doubtful voxels) the faint map does not count.
    space = lung.copy()
    space[0, 2:10, 8:10] = False
    inside = localise.region_growth(hu, heat, space, spacing, faint, "covid")
    assert inside is not None and not inside[0, 2:10, 8:10].any()


def test_settings_validation() -> None:
    with pytest.raises(ValueError):
        LocalisationSettings(mode="gradcam")
    with pytest.raises(ValueError):
        LocalisationSettings(threshold=1.0)
    with pytest.raises(ValueError, match="cam_floor"):
        LocalisationSettings(cam_floor=1.0)
    with pytest.raises(ValueError, match="density_range_hu"):
        LocalisationSettings(density_range_hu=0.0)
    for bad_share in (-0.1, 1.0):
        with pytest.raises(ValueError, match="density_peak_share"):
            LocalisationSettings(density_peak_share=bad_share)
    with pytest.raises(ValueError, match="density_peak_range_hu"):
        LocalisationSettings(density_peak_range_hu=0.0)
    for bad_grow in (0.0, 0.5, 0.7):
        with pytest.raises(ValueError, match="grow_threshold"):
            LocalisationSettings(threshold=0.5, grow_threshold=bad_grow)
    for bad_classes in (("normal",), ("covid", "flu")):
        with pytest.raises(ValueError, match="grow_classes"):
            LocalisationSettings(grow_classes=bad_classes)
    for bad in (0.4, 1.0):
        with pytest.raises(ValueError, match="region_lung_probability"):
            LocalisationSettings(region_lung_probability=bad)


def test_density_excess_marks_what_is_denser_than_the_slice_lungs() -> None:
    hu = np.full((2, 20, 20), -850.0, np.float32)
    hu[0, 5:10, 5:10] = -500.0  # ground glass: 350 HU above the lung median
    hu[0, 12:14, 12:14] = -700.0  # 150 HU above: half way up the ramp (100 .. 300 HU)
    hu[1] = 40.0  # a slice of soft tissue, not lung
    lung = np.zeros(hu.shape, bool)
    lung[0] = True
    d = localise.density_excess(hu, lung, offset_hu=100.0, range_hu=200.0)
    assert d.dtype == np.float32 and d.shape == hu.shape
    assert np.all(d[0, 5:10, 5:10] == 1.0) and np.allclose(d[0, 12:14, 12:14], 0.25)
    assert d[0, 0, 0] == 0.0 and not d[1].any()  # aerated lung; outside the lungs
    with pytest.raises(ValueError, match="shape"):
        localise.density_excess(hu, lung[:1])


def test_density_excess_keeps_ground_glass_that_fills_most_of_the_slice() -> None:
    # Diffuse COVID-19: ground glass over 70 % of the slice's lung. Measured from the lungs' median
    # (then ground glass itself) the disease would vanish; from their 15th percentile it stays.
    hu = np.full((1, 20, 20), -850.0, np.float32)
    hu[0, 6:, :] = -500.0
    lung = np.ones(hu.shape, bool)
    d = localise.density_excess(hu, lung, offset_hu=100.0, range_hu=200.0)
    assert np.all(d[0, 6:] == 1.0) and not d[0, :6].any()
    assert not localise.density_excess(hu, lung, percentile=50.0)[0, 6:].any()


def test_density_peak_share_makes_a_consolidation_hotter_than_a_vessels_rim_beside_it() -> None:
    # Both lie past the ramp's saturation (300 HU above aerated lung) and weigh the same without the
    # share; with it the consolidation (850 HU above) weighs 1 and the rim (400 above) less, by at
    # most the share; ground glass on the ramp moves by at most the share too.
    hu = np.full((1, 20, 20), -850.0, np.float32)
    hu[0, 2:8, 2:8] = 0.0  # consolidation
    hu[0, 10, 10] = -450.0  # a vessel's partial-volume rim
    hu[0, 14:16, 14:16] = -650.0  # ground glass, half way up the ramp
    lung = np.ones(hu.shape, bool)
    plain = localise.density_excess(hu, lung)
    assert plain[0, 4, 4] == plain[0, 10, 10] == 1.0
    peaked = localise.density_excess(hu, lung, peak_share=0.1, peak_range_hu=600.0)
    assert peaked[0, 4, 4] == 1.0
    assert peaked[0, 10, 10] == pytest.approx(1.0 - 0.1 + 0.1 * 300.0 / 600.0)
    assert peaked[0, 15, 15] == pytest.approx(0.5 * (1.0 - 0.1 + 0.1 * 100.0 / 600.0))
    assert peaked[0, 0, 0] == 0.0
    heat = np.ones(hu.shape, np.float32)
    localise.weight_by_density(heat, hu, lung, peak_share=0.1, peak_range_hu=600.0)
    assert np.array_equal(heat, peaked)


def test_integrated_gradients_equal_captums() -> None:
    """Ours computes the three scales' attributions from one forward pass per batch of steps; Captum's
    IntegratedGradients (the field's reference) needs one run per scale. Same numbers."""
    from captum.attr import IntegratedGradients  # noqa: PLC0415  # a test-only dependency (the test extra)

    torch.manual_seed(0)
    net = WeaklySupervisedNet(num_classes=3, widths=(4, 8, 8, 16, 16), depths=(1, 1, 1, 1, 1)).eval()
    x = torch.randn(2, 1, 32, 64)
    targets = torch.tensor([0, 2])
    ours = localise.integrated_gradients(net, x, targets, steps=16, baseline=-1.0, batch=8)
    for s in range(len(net.heads)):
        ig = IntegratedGradients(lambda inp, s=s: net(inp).logits[s])
        ref = ig.attribute(
            x, baselines=-1.0, target=targets, n_steps=16, method="riemann_middle", internal_batch_size=8
        )
        assert torch.allclose(ours[:, s], ref, atol=1e-5, rtol=1e-4), s
