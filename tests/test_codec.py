"""GaussianHeatmapCodec: encoding values, masking, round trips and refinement accuracy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hrexp.codecs.heatmap import GaussianHeatmapCodec


def _to_heatmap(x: float, stride: float) -> float:
    """Design-doc mapping, written out independently of the codec."""
    return (x + 0.5) / stride - 0.5


def _numpy_gaussians(centres: np.ndarray, sigma: float, h: int, w: int) -> np.ndarray:
    """[N, 2] heatmap-pixel centres -> [N, h, w] unnormalised Gaussians (peak 1), in numpy."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    d2 = (xs[None] - centres[:, 0, None, None]) ** 2 + (ys[None] - centres[:, 1, None, None]) ** 2
    return np.exp(-d2 / (2 * sigma**2))


# ------------------------------------------------------------------------------------ encode
def test_encode_value_at_a_pixel_matches_hand_computed_gaussian():
    codec = GaussianHeatmapCodec(sigma=2.0)
    # x = 13.0, y = 7.0 at stride 4 -> u = 13.5 / 4 - 0.5 = 2.875, v = 7.5 / 4 - 0.5 = 1.375.
    kpts = torch.tensor([[[13.0, 7.0]]])
    hm, w = codec.encode(kpts, torch.ones(1, 1), heatmap_size=(8, 10), stride=4.0)
    assert hm.shape == (1, 1, 8, 10) and w.shape == (1, 1)
    assert w.item() == 1.0
    # Column 3, row 1: d^2 = 0.125^2 + 0.375^2 = 0.15625.
    expected = math.exp(-0.15625 / 8.0)
    assert hm[0, 0, 1, 3].item() == pytest.approx(expected, rel=1e-6)
    # Column 0, row 5: d^2 = 2.875^2 + 3.625^2.
    assert hm[0, 0, 5, 0].item() == pytest.approx(math.exp(-(2.875**2 + 3.625**2) / 8.0), rel=1e-5)
    # The discrete peak is the pixel nearest to (u, v).
    assert divmod(int(hm[0, 0].argmax()), 10) == (1, 3)
    assert hm.max().item() <= 1.0 and hm.min().item() >= 0.0


def test_encode_peak_is_one_at_an_integer_centre_and_whole_map_matches_numpy():
    sigma, stride, h, w = 3.0, 2.0, 12, 16
    codec = GaussianHeatmapCodec(sigma=sigma)
    # x = (5 + 0.5) * 2 - 0.5 = 10.5 -> u = 5 exactly; y = 6.2 -> v = 2.85 (sub-pixel).
    kpts = torch.tensor([[[10.5, 6.2]]], dtype=torch.float64)
    hm, _ = codec.encode(kpts, torch.ones(1, 1), heatmap_size=(h, w), stride=stride)
    assert hm.dtype == torch.float64
    u, v = _to_heatmap(10.5, stride), _to_heatmap(6.2, stride)
    ref = _numpy_gaussians(np.array([[u, v]]), sigma, h, w)[0]
    np.testing.assert_allclose(hm[0, 0].numpy(), ref, rtol=1e-12, atol=1e-15)
    # Peak value 1 exactly where the centre falls on a pixel column (u = 5) and row (v = 3 is off
    # by 0.15, so the value there is exp(-0.15^2 / 18)).
    assert hm[0, 0, 3, 5].item() == pytest.approx(math.exp(-(0.15**2) / 18.0), rel=1e-12)
    kpts_int = torch.tensor([[[10.5, 4.5]]])  # v = 2 exactly
    hm_int, _ = codec.encode(kpts_int, torch.ones(1, 1), heatmap_size=(h, w), stride=stride)
    assert hm_int[0, 0, 2, 5].item() == 1.0
    assert hm_int.max().item() == 1.0


def test_encode_invisible_and_out_of_bounds_get_zero_weight_and_zero_heatmap():
    codec = GaussianHeatmapCodec(sigma=2.0)
    h, w, stride = 8, 8, 4.0  # input image 32 x 32 px, pixel areas [-0.5, 31.5)
    kpts = torch.tensor(
        [
            [
                [10.0, 10.0],  # 0 visible, inside
                [10.0, 10.0],  # 1 inside but invisible
                [-0.6, 10.0],  # 2 left of the image
                [10.0, 31.5],  # 3 on the bottom edge of the last pixel: outside (half-open)
                [-0.5, -0.5],  # 4 top-left corner of pixel (0, 0): inside
                [31.49, 31.49],  # 5 inside, last pixel
                [float("nan"), 3.0],  # 6 NaN coordinate
                [100.0, 5.0],  # 7 far right
                [31.5, 10.0],  # 8 on the right edge of the last pixel: outside
                [10.0, -0.51],  # 9 just above the image
            ]
        ]
    )
    visible = torch.tensor([[1, 0, 1, 1, 1, 1, 1, 1, 1, 1]], dtype=torch.float32)
    hm, wt = codec.encode(kpts, visible, heatmap_size=(h, w), stride=stride)
    assert wt.tolist() == [[1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]]
    assert torch.isfinite(hm).all()
    for k in (1, 2, 3, 6, 7, 8, 9):
        assert hm[0, k].abs().max().item() == 0.0, k
    for k in (0, 4, 5):
        assert hm[0, k].max().item() > 0.5, k


def test_encode_accepts_bool_visibility_and_unbatched_input():
    codec = GaussianHeatmapCodec(sigma=1.5)
    kpts = torch.tensor([[11.0, 12.0], [5.0, 1.0]])
    hm, wt = codec.encode(kpts, torch.tensor([True, False]), heatmap_size=(24, 24), stride=1.0)
    assert hm.shape == (2, 24, 24) and wt.tolist() == [1.0, 0.0]
    assert hm[0, 12, 11].item() == 1.0 and hm[1].abs().sum().item() == 0.0
    kp, sc = codec.decode(hm, stride=1.0)
    assert kp.shape == (2, 2) and sc.shape == (2,)
    assert torch.allclose(kp[0], kpts[0], atol=1e-4)


# ------------------------------------------------------------------------------------ round trip
@pytest.mark.parametrize("stride", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("sigma", [1.5, 2.0, 3.0])
def test_dark_round_trip_recovers_sub_pixel_points(stride, sigma):
    codec = GaussianHeatmapCodec(sigma=sigma, refine="dark")
    h, w = 40, 56
    # Away from the border by the blur radius + 1: closer in, the zero-padded modulation blur
    # biases the estimate (measured separately in test_dark_near_border_is_bounded).
    margin = codec.blur_kernel // 2 + 2
    gen = torch.Generator().manual_seed(int(stride * 10 + sigma * 100))
    b, k = 4, 64
    u = margin + torch.rand(b, k, generator=gen) * (w - 1 - 2 * margin)
    v = margin + torch.rand(b, k, generator=gen) * (h - 1 - 2 * margin)
    kpts = (torch.stack([u, v], dim=-1) + 0.5) * stride - 0.5
    hm, wt = codec.encode(kpts, torch.ones(b, k), heatmap_size=(h, w), stride=stride)
    assert (wt == 1).all()
    out, scores = codec.decode(hm, stride=stride)
    assert out.shape == (b, k, 2) and scores.shape == (b, k)
    err_hm = ((out - kpts) / stride).norm(dim=-1)  # in heatmap pixels
    assert err_hm.max().item() < 0.1
    # Scores are the heatmap maxima: at least the value half a pixel diagonal from the centre.
    assert scores.min().item() >= math.exp(-0.5 / (2 * sigma**2)) - 1e-6
    assert torch.equal(scores, hm.flatten(2).max(dim=-1).values)


def test_dark_near_border_is_bounded_and_outermost_peak_keeps_integer_argmax():
    codec = GaussianHeatmapCodec(sigma=2.0, refine="dark")
    h = w = 24
    # Centres at distance d from the left edge (row fixed in the interior).
    ds = torch.tensor([0.0, 0.3, 0.49, 0.6, 1.0, 2.0, 4.0, 8.0])
    kpts = torch.stack([ds, torch.full_like(ds, 11.3)], dim=-1)[None]
    hm, _ = codec.encode(kpts, torch.ones(1, len(ds)), heatmap_size=(h, w), stride=1.0)
    out, _ = codec.decode(hm, stride=1.0)
    err_x = (out[0, :, 0] - ds).abs()
    # Argmax in column 0: no x offset (the difference stencil would leave the map), but y is
    # still refined along the border column.
    assert out[0, 0, 0].item() == 0.0 and out[0, 1, 0].item() == 0.0 and out[0, 2, 0].item() == 0.0
    assert err_x.max().item() <= 1.0  # offsets are clamped
    assert err_x[-1].item() < 1e-3  # far enough in: exact
    # The row is unaffected by the x border.
    assert (out[0, :, 1] - 11.3).abs().max().item() < 1e-3


# ------------------------------------------------------------------------------------ refinement
def _synthetic_set(sigma: float, noise: float, seed: int, n: int = 600, size: int = 48):
    """Gaussian heatmaps rendered in numpy (not by the codec) at random interior centres."""
    rng = np.random.default_rng(seed)
    margin = 3 * sigma + 3
    centres = rng.uniform(margin, size - 1 - margin, size=(n, 2))
    hm = _numpy_gaussians(centres, sigma, size, size)
    hm = hm + noise * rng.standard_normal(hm.shape)
    return torch.from_numpy(hm).float()[None], torch.from_numpy(centres).float()


@pytest.mark.parametrize("noise", [0.0, 0.05])
@pytest.mark.parametrize("sigma", [2.0, 3.0])
def test_dark_beats_quarter_beats_none(sigma, noise):
    hm, centres = _synthetic_set(sigma, noise, seed=int(sigma * 10 + noise * 1000))
    errors = {}
    for refine in ("dark", "quarter", "none"):
        out, _ = GaussianHeatmapCodec(sigma=sigma, refine=refine).decode(hm, stride=1.0)
        errors[refine] = (out[0] - centres).norm(dim=-1).mean().item()
    assert errors["dark"] < errors["quarter"] < errors["none"], errors
    if noise == 0.0:
        assert errors["dark"] < 0.01, errors
    else:
        # Not just marginally better: the blur + log fit is what DARK is for.
        assert errors["dark"] < 0.5 * errors["quarter"], errors


def test_dark_recovers_rotated_anisotropic_gaussians():
    # The log of any Gaussian is quadratic, and blurring keeps it Gaussian, so DARK is exact up
    # to discretisation even when the Hessian has a cross term (which isotropic maps never test).
    rng = np.random.default_rng(7)
    n, size = 200, 48
    centres = rng.uniform(16, size - 17, size=(n, 2))
    theta = rng.uniform(0, np.pi, size=n)
    s_major, s_minor = 3.0, 1.5
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    dx = xs[None] - centres[:, 0, None, None]
    dy = ys[None] - centres[:, 1, None, None]
    c, s = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    a, b = c * dx + s * dy, -s * dx + c * dy
    hm = np.exp(-(a**2) / (2 * s_major**2) - b**2 / (2 * s_minor**2))
    out, _ = GaussianHeatmapCodec(sigma=2.0, refine="dark").decode(
        torch.from_numpy(hm).float()[None], stride=1.0
    )
    err = (out[0] - torch.from_numpy(centres).float()).norm(dim=-1)
    assert err.max().item() < 0.05


def test_quarter_and_none_hand_cases():
    hm = torch.zeros(1, 2, 5, 7)
    hm[0, 0, 2, 3] = 1.0
    hm[0, 0, 2, 4] = 0.6  # right neighbour higher than left (0)
    hm[0, 0, 1, 3] = 0.3  # upper neighbour higher than lower (0)
    hm[0, 1, 4, 6] = 0.9  # bottom-right corner: no neighbours on two sides
    stride = 4.0
    q, scores = GaussianHeatmapCodec(refine="quarter").decode(hm, stride=stride)
    n, _ = GaussianHeatmapCodec(refine="none").decode(hm, stride=stride)
    assert q[0, 0].tolist() == [(3.25 + 0.5) * stride - 0.5, (1.75 + 0.5) * stride - 0.5]
    assert n[0, 0].tolist() == [(3 + 0.5) * stride - 0.5, (2 + 0.5) * stride - 0.5]
    corner = [(6 + 0.5) * stride - 0.5, (4 + 0.5) * stride - 0.5]
    assert q[0, 1].tolist() == n[0, 1].tolist() == corner
    assert scores[0].tolist() == pytest.approx([1.0, 0.9])


def test_dark_degenerate_maps_stay_finite():
    codec = GaussianHeatmapCodec(sigma=2.0, refine="dark")
    hm = torch.zeros(2, 3, 16, 16)
    hm[0, 1] = -1.0  # negative everywhere (raw network output)
    hm[0, 2, 7, 7] = 1.0  # a single spike: blurred, it is a Gaussian centred on the pixel
    hm[1, 0] = 0.5  # flat
    hm[1, 1, 3:6, 3:6] = 1.0  # plateau
    hm[1, 2] = float("inf")
    hm[1, 2, 0, 0] = 0.0
    out, _ = codec.decode(hm.half(), stride=4.0)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert torch.allclose(out[0, 2], torch.tensor([7 * 4 + 1.5, 7 * 4 + 1.5]), atol=1e-3)
    # Offsets never exceed one heatmap pixel from the integer argmax.
    none, _ = GaussianHeatmapCodec(refine="none").decode(hm, stride=4.0)
    assert ((out - none).abs() <= 4.0 + 1e-4).all()
    # Two spikes 3 px apart blur into one flat-topped peak whose Newton step from the argmax
    # (column 5) overshoots past 1 px (about 1.16 unclamped): it is clamped to exactly 1.
    bimodal = torch.zeros(1, 1, 16, 16)
    bimodal[0, 0, 8, 5] = 1.0
    bimodal[0, 0, 8, 8] = 0.9
    out, _ = codec.decode(bimodal, stride=1.0)
    assert out[0, 0].tolist() == pytest.approx([6.0, 8.0], abs=1e-5)
    # A spike flanked by two unequal ridges: once blurred, the argmax sits in a valley along x
    # (positive curvature), where a Newton step would head for the minimum; it keeps the argmax.
    saddle = torch.zeros(1, 1, 17, 17)
    saddle[0, 0, 8, 8] = 1.0
    saddle[0, 0, 8, 3:6] = 0.85
    saddle[0, 0, 8, 11:14] = 0.95
    out, _ = codec.decode(saddle, stride=1.0)
    assert out[0, 0].tolist() == [8.0, 8.0]


# ------------------------------------------------------------------------------------ options
def test_unknown_refine_raises_with_option_and_choices():
    with pytest.raises(ValueError) as info:
        GaussianHeatmapCodec(refine="subpixel")
    msg = str(info.value)
    assert "subpixel" in msg and "dark" in msg and "quarter" in msg and "none" in msg


def test_blur_kernel_option_is_validated_and_used():
    with pytest.raises(ValueError):
        GaussianHeatmapCodec(blur_kernel=4)
    codec = GaussianHeatmapCodec(sigma=2.0, blur_kernel=11)
    assert codec.blur_kernel == 11 and codec.blur_sigma == pytest.approx(2.0)
    hm, centres = _synthetic_set(2.0, 0.0, seed=3, n=50)
    out, _ = codec.decode(hm, stride=1.0)
    assert (out[0] - centres).norm(dim=-1).max().item() < 0.05


def test_spread_is_the_peak_width_in_input_pixels():
    """An encoded Gaussian's spread is about sigma * sqrt(2) * stride (radial std), as NumPy computes it on the
    same window; a second peak next to the first widens it."""
    import math

    import numpy as np

    codec = GaussianHeatmapCodec(sigma=2.0)
    keypoints = torch.tensor([[[61.3, 45.8], [30.0, 30.0]]], dtype=torch.float64)
    heatmaps, _ = codec.encode(keypoints, torch.ones(1, 2), heatmap_size=(32, 32), stride=4.0)
    spread = codec.spread(heatmaps, stride=4.0)
    hm = heatmaps[0, 0].numpy()
    py, px = np.unravel_index(hm.argmax(), hm.shape)
    ys, xs = np.mgrid[0:32, 0:32]
    window = (abs(xs - px) <= 6) & (abs(ys - py) <= 6)
    w = np.where(window, hm, 0)
    mx, my = (w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()
    expected = math.sqrt((w * ((xs - mx) ** 2 + (ys - my) ** 2)).sum() / w.sum()) * 4.0
    assert float(spread[0, 0]) == pytest.approx(expected, rel=1e-9)
    assert float(spread[0, 0]) == pytest.approx(2.0 * math.sqrt(2) * 4.0, rel=0.03)
    two = heatmaps.clone()
    two[0, 0] = torch.maximum(two[0, 0], 0.9 * two[0, 0].roll(4, dims=-1))
    # two equal Gaussians 4 cells apart: variance + (4 / 2)^2 in x, sqrt(8 + 4) / sqrt(8) = 1.22 (0.9 of a peak: a little less)
    assert float(codec.spread(two, stride=4.0)[0, 0]) > 1.15 * float(spread[0, 0])


def test_point_covariance_is_the_peaks_own_ellipse_in_input_pixels():
    """A tilted, elongated peak: the codec's covariance equals NumPy's weighted covariance of the same window
    (times stride^2), and its trace is the spread squared; an isotropic Gaussian gives sigma^2 stride^2 on the
    diagonal and no correlation."""
    import numpy as np

    codec = GaussianHeatmapCodec(sigma=2.0)
    ys, xs = np.mgrid[0:32, 0:32].astype(np.float64)
    # a Gaussian of covariance R diag(9, 1) R^T (30 degrees), centred at (14.3, 17.6) heatmap px
    t = np.radians(30)
    rotation = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    sigma = rotation @ np.diag([9.0, 1.0]) @ rotation.T
    d = np.stack([xs - 14.3, ys - 17.6], -1)
    hm = np.exp(-0.5 * np.einsum("...i,ij,...j->...", d, np.linalg.inv(sigma), d))
    maps = torch.from_numpy(hm)[None, None]
    covariance = codec.point_covariance(maps, stride=4.0)[0, 0].numpy()
    py, px = np.unravel_index(hm.argmax(), hm.shape)
    w = np.where((abs(xs - px) <= 6) & (abs(ys - py) <= 6), hm, 0)
    mx, my = (w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()
    expected = np.array([[(w * (xs - mx) ** 2).sum(), (w * (xs - mx) * (ys - my)).sum()],
                         [(w * (xs - mx) * (ys - my)).sum(), (w * (ys - my) ** 2).sum()]]) / w.sum() * 16.0
    np.testing.assert_allclose(covariance, expected, rtol=1e-9)
    assert expected[0, 1] > 0.5 * np.sqrt(expected[0, 0] * expected[1, 1])  # tilted: clearly correlated
    assert float(codec.spread(maps, stride=4.0)) ** 2 == pytest.approx(np.trace(covariance), rel=1e-9)
    # an isotropic encoded Gaussian: sigma^2 * stride^2 per axis (the window cuts a little), no correlation
    heatmaps, _ = codec.encode(torch.tensor([[[61.3, 45.8]]], dtype=torch.float64), torch.ones(1, 1),
                               heatmap_size=(32, 32), stride=4.0)
    iso = codec.point_covariance(heatmaps, stride=4.0)[0, 0].numpy()
    np.testing.assert_allclose(np.diag(iso), [64.0, 64.0], rtol=0.05)
    assert abs(iso[0, 1]) < 1.0
