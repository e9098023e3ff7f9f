"""UDP, SimCC, offset and integral-regression codecs, the SimCC head and their losses.

"Perfect network output" for each round trip (decode of what a network at the loss optimum gives):
- UDP: the target heatmaps (one tensor: a heatmap codec's targets go to the task's heatmap loss).
- SimCC: the target labels, and also ``log(label) / beta + c`` (the optimum of SimCCLoss with
  ``label_softmax=False``) and ``label + c`` (optimum with ``label_softmax=True``).
- offset: the target heatmaps + offsets (as a dict and packed as the ``[B, 3K, h, w]`` layout).
- integral: logits ``log(target Gaussian) / beta``, whose softmax is the normalised Gaussian
  centred at the point (the JS regulariser's optimum).
"""

from __future__ import annotations

import math

import pytest
import torch

from hrexp.codecs.heatmap import GaussianHeatmapCodec
from hrexp.codecs.integral import IntegralRegressionCodec
from hrexp.codecs.offset import OffsetHeatmapCodec
from hrexp.codecs.simcc import SimCCCodec
from hrexp.codecs.udp import UDPHeatmapCodec
from hrexp.losses.integral import IntegralRegressionLoss
from hrexp.losses.offset import OffsetHeatmapLoss
from hrexp.losses.simcc import SimCCLoss
from hrexp.models.simcc_head import SimCCHead

B, K = 3, 5
INPUT = (256, 192)  # (H, W)
STRIDE = 4.0
HM = (64, 48)
CODECS = ["udp", "simcc", "offset", "integral"]


def _codec(name: str):
    return {
        "udp": UDPHeatmapCodec(sigma=2.0),
        "simcc": SimCCCodec(input_size=INPUT, split_ratio=2.0),
        "offset": OffsetHeatmapCodec(sigma=2.0, radius=2.0),
        "integral": IntegralRegressionCodec(beta=1.0, sigma=2.0),
    }[name]


def _margin_px(name: str) -> float:
    """3 sigma from the border, in input px (UDP: DARK's blur radius + 2 cells, as test_codec)."""
    if name == "simcc":
        return 3 * 5.66 / 2.0
    if name == "udp":
        return (UDPHeatmapCodec(sigma=2.0)._gauss.blur_kernel // 2 + 2) * STRIDE
    return 3 * 2.0 * STRIDE


def _points(gen: torch.Generator, margin: float, dtype=torch.float32) -> torch.Tensor:
    h, w = INPUT
    x = margin + torch.rand(B, K, generator=gen, dtype=dtype) * (w - 1 - 2 * margin)
    y = margin + torch.rand(B, K, generator=gen, dtype=dtype) * (h - 1 - 2 * margin)
    return torch.stack([x, y], dim=-1)


def _perfect_output(name: str, codec, targets):
    if name == "udp":
        return targets
    if name == "integral":
        return torch.log(targets["heatmaps"].clamp_min(1e-30)) / codec.beta
    return targets


# ------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("name", CODECS)
def test_round_trip_recovers_sub_pixel_points(name):
    codec = _codec(name)
    gen = torch.Generator().manual_seed(CODECS.index(name))
    worst = 0.0
    for _ in range(20):  # 20 batches of B x K = 300 random points
        kpts = _points(gen, _margin_px(name))
        targets, weights = codec.encode(kpts, torch.ones(B, K), heatmap_size=HM, stride=STRIDE)
        assert (weights == 1).all()
        out, scores = codec.decode(_perfect_output(name, codec, targets), stride=STRIDE)
        assert out.shape == (B, K, 2) and scores.shape == (B, K)
        worst = max(worst, (out - kpts).norm(dim=-1).max().item())
    assert worst < 0.1, worst


def test_target_shapes_and_output_channels():
    kpts = _points(torch.Generator().manual_seed(0), 30.0)
    vis = torch.ones(B, K)
    udp, _ = _codec("udp").encode(kpts, vis, HM, STRIDE)
    assert udp.shape == (B, K, *HM) and _codec("udp").output_channels(K) == K
    simcc = _codec("simcc")
    t, _ = simcc.encode(kpts, vis, HM, STRIDE)
    assert simcc.lengths == (384, 512)
    assert t["x"].shape == (B, K, 384) and t["y"].shape == (B, K, 512)
    off = _codec("offset")
    t, _ = off.encode(kpts, vis, HM, STRIDE)
    assert off.output_channels(K) == 3 * K
    assert t["heatmaps"].shape == (B, K, *HM) and t["offsets"].shape == (B, 2 * K, *HM)
    assert t["offset_mask"].shape == (B, K, *HM)
    integral = _codec("integral")
    t, _ = integral.encode(kpts, vis, HM, STRIDE)
    assert integral.output_channels(K) == K
    assert t["keypoints"].shape == (B, K, 2) and t["heatmaps"].shape == (B, K, *HM)
    assert torch.allclose(t["keypoints"], (kpts + 0.5) / STRIDE - 0.5)


def test_simcc_decodes_logits_whatever_their_offset():
    codec = SimCCCodec(input_size=INPUT, split_ratio=2.0, sigma=(4.9, 5.66))
    kpts = _points(torch.Generator().manual_seed(5), 9.0)
    t, _ = codec.encode(kpts, torch.ones(B, K), HM, STRIDE)
    beta = 10.0
    # label_softmax=False optimum: log(label) / beta + c is an exact parabola.
    logits = {a: torch.log(t[a].double().clamp_min(1e-300)) / beta - 3.0 for a in ("x", "y")}
    out, _ = codec.decode(logits, STRIDE)
    assert (out - kpts.double()).abs().max().item() < 1e-6
    # label_softmax=True optimum: label + c.
    out, scores = codec.decode({a: t[a] + 7.0 for a in ("x", "y")}, STRIDE)
    assert (out - kpts).norm(dim=-1).max().item() < 0.1
    # Score: the smaller of the two maxima.
    t2 = {"x": t["x"].clone(), "y": 0.5 * t["y"]}
    _, s2 = codec.decode(t2, STRIDE)
    assert torch.allclose(s2, 0.5 * t["y"].amax(-1))


def test_offset_decode_reads_the_packed_layout():
    codec = OffsetHeatmapCodec(sigma=2.0, radius=2.0)
    kpts = _points(torch.Generator().manual_seed(6), 24.0)
    t, _ = codec.encode(kpts, torch.ones(B, K), HM, STRIDE)
    packed = torch.cat([t["heatmaps"], t["offsets"]], dim=1)  # [B, 3K, h, w]
    assert packed.shape == (B, 3 * K, *HM)
    out, scores = codec.decode(packed, STRIDE)
    assert (out - kpts).abs().max().item() < 1e-3
    assert torch.equal(scores, t["heatmaps"].flatten(2).amax(-1))
    # Offsets: cell centre -> keypoint, in cells; x offsets first, then y.
    u = (kpts[0, 0] + 0.5) / STRIDE - 0.5
    i, j = int(round(u[0].item())), int(round(u[1].item()))
    assert t["offsets"][0, 0, j, i].item() == pytest.approx(u[0].item() - i, abs=1e-5)
    assert t["offsets"][0, K, j, i].item() == pytest.approx(u[1].item() - j, abs=1e-5)
    # The mask is the disc of radius 2 cells around (u, v).
    ys, xs = torch.meshgrid(torch.arange(HM[0]), torch.arange(HM[1]), indexing="ij")
    disc = ((xs - u[0]) ** 2 + (ys - u[1]) ** 2) <= 4.0
    assert torch.equal(t["offset_mask"][0, 0].bool(), disc)
    assert (t["offsets"][0, 0][~disc] == 0).all()


# ------------------------------------------------------------------------------------ dtype / device
@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device_are_preserved(name, dtype):
    codec = _codec(name)
    kpts = _points(torch.Generator().manual_seed(1), 32.0, dtype=dtype)
    targets, weights = codec.encode(kpts, torch.ones(B, K, dtype=torch.bool), HM, STRIDE)
    assert weights.dtype == dtype and weights.device == kpts.device
    for value in (targets,) if codec.heatmap_targets else targets.values():
        assert value.dtype == dtype and value.device == kpts.device
    out, scores = codec.decode(_perfect_output(name, codec, targets), stride=STRIDE)
    assert out.dtype == dtype and scores.dtype == dtype
    assert out.device == kpts.device and scores.device == kpts.device


@pytest.mark.parametrize("name", CODECS)
def test_half_outputs_decode_in_float32(name):
    codec = _codec(name)
    kpts = _points(torch.Generator().manual_seed(2), 32.0)
    targets, _ = codec.encode(kpts, torch.ones(B, K), HM, STRIDE)
    out = _perfect_output(name, codec, targets)
    out = {k: v.half() for k, v in out.items()} if isinstance(out, dict) else out.half()
    dec, scores = codec.decode(out, stride=STRIDE)
    assert dec.dtype == torch.float32 and scores.dtype == torch.float32
    assert torch.isfinite(dec).all()


# ------------------------------------------------------------------------------------ visibility
@pytest.mark.parametrize("name", CODECS)
def test_invisible_and_outside_keypoints_get_zero_weight_and_zero_targets(name):
    codec = _codec(name)
    kpts = torch.tensor(
        [[[50.0, 60.0], [50.0, 60.0], [-0.6, 60.0], [191.5, 10.0], [float("nan"), 3.0]]]
    )
    vis = torch.tensor([[1, 0, 1, 1, 1]])
    targets, weights = codec.encode(kpts, vis, HM, STRIDE)
    assert weights.tolist() == [[1.0, 0.0, 0.0, 0.0, 0.0]]
    for key, value in ({"heatmaps": targets} if codec.heatmap_targets else targets).items():
        assert torch.isfinite(value).all(), key
        # offsets are [B, 2K, h, w] (x block, then y block): fold them to one entry per keypoint.
        per_kpt = value[:, :5].abs() + value[:, 5:].abs() if key == "offsets" else value.abs()
        flat = per_kpt.reshape(1, 5, -1)
        assert flat[0, 0].sum() > 0, key
        assert (flat[0, 1:] == 0).all(), key


# ------------------------------------------------------------------------------------ UDP transform
def test_udp_transform_versus_hrexp_pixel_centre_convention():
    hm_size, in_size = (64, 64), (256, 256)
    x = torch.tensor([[[0.0, 0.0], [127.5, 127.5], [255.0, 255.0], [40.0, 40.0]]], dtype=torch.float64)
    udp = UDPHeatmapCodec.to_heatmap(x, hm_size, in_size)[0, :, 0]
    hrexp = ((x + 0.5) / 4.0 - 0.5)[0, :, 0]
    # As the UDP module docstring states: corner-aligned vs pixel-area aligned.
    assert udp.tolist()[:3] == pytest.approx([0.0, 31.5, 63.0], abs=1e-12)
    assert hrexp.tolist()[:3] == pytest.approx([-0.375, 31.5, 63.375], abs=1e-12)
    # Equal only at the centre; the gap grows linearly, (x - 127.5) * (1/4 - 63/255).
    gap = (hrexp - udp).tolist()
    assert gap == pytest.approx([(v - 127.5) * (0.25 - 63 / 255) for v in (0.0, 127.5, 255.0, 40.0)], abs=1e-12)
    # Both are flip-consistent: x -> W - 1 - x maps to u -> w - 1 - u.
    flipped = 255.0 - x
    assert torch.allclose(UDPHeatmapCodec.to_heatmap(flipped, hm_size, in_size), 63.0 - UDPHeatmapCodec.to_heatmap(x, hm_size, in_size))
    assert torch.allclose((flipped + 0.5) / 4 - 0.5, 63.0 - ((x + 0.5) / 4 - 0.5))
    # At stride 1 the two are the same map (the identity).
    same = UDPHeatmapCodec.to_heatmap(x, (256, 256), (256, 256))
    assert torch.allclose(same, (x + 0.5) / 1.0 - 0.5)
    # Inverse.
    assert torch.allclose(UDPHeatmapCodec.to_input(UDPHeatmapCodec.to_heatmap(x, hm_size, in_size), hm_size, in_size), x)


def test_udp_encoded_maps_decoded_with_hrexp_convention_are_off_by_the_predicted_gap():
    """Mixing conventions costs (u_hrexp - u_udp) * stride input px: 0 at the centre, ~1 px at x = 40."""
    udp = UDPHeatmapCodec(sigma=2.0)
    xs = torch.tensor([40.0, 127.5, 200.0], dtype=torch.float64)
    kpts = torch.stack([xs, xs], dim=-1)[None]
    t, _ = udp.encode(kpts, torch.ones(1, 3), (64, 64), 4.0)
    mixed, _ = GaussianHeatmapCodec(sigma=2.0).decode(t, stride=4.0)
    own, _ = udp.decode(t, stride=4.0)
    assert (own - kpts).abs().max().item() < 1e-3
    predicted = xs * (4 * 63 / 255 - 1) + 1.5  # decoded - true
    assert torch.allclose(mixed[0, :, 0] - xs, predicted, atol=1e-3)
    assert abs(predicted[0].item() - 1.0294) < 1e-3 and abs(predicted[1].item()) < 1e-12


def test_udp_input_size_option_overrides_heatmap_times_stride():
    udp = UDPHeatmapCodec(sigma=2.0, input_size=(255, 190))
    kpts = torch.tensor([[[100.3, 77.7]]], dtype=torch.float64)
    t, _ = udp.encode(kpts, torch.ones(1, 1), (64, 48), 4.0)
    centre = kpts[0, 0] * torch.tensor([47 / 189, 63 / 254], dtype=torch.float64)
    j, i = divmod(int(t[0, 0].argmax()), 48)
    assert (i, j) == (round(centre[0].item()), round(centre[1].item()))
    out, _ = udp.decode(t, 4.0)
    assert (out - kpts).abs().max().item() < 1e-3
    # without it, 64 x 48 cells at stride 4 mean a 256 x 192 input: another transform, another point
    assert (UDPHeatmapCodec(sigma=2.0).decode(t, 4.0)[0] - kpts).abs().max().item() > 1.0


# ------------------------------------------------------------------------------------ SimCC head / loss
def test_simcc_head_output_shapes_and_stride():
    info = [{"num_chs": 16, "reduction": 4}, {"num_chs": 32, "reduction": 8}]
    head = SimCCHead(info, num_outputs=K, input_size=(64, 48), split_ratio=2.0, hidden=32)
    assert head.stride == 4 and head.lengths == (96, 128)
    feats = [torch.randn(2, 16, 16, 12), torch.randn(2, 32, 8, 6)]
    out = head(feats)
    assert out["x"].shape == (2, K, 96) and out["y"].shape == (2, K, 128)
    codec = SimCCCodec(input_size=(64, 48), split_ratio=2.0)
    assert codec.lengths == head.lengths
    dec, scores = codec.decode(out, stride=head.stride)
    assert dec.shape == (2, K, 2) and scores.shape == (2, K)
    with pytest.raises(ValueError, match="SimCCHead"):
        head([torch.randn(2, 16, 8, 8)])
    with pytest.raises(ValueError, match="SimCCHead"):
        SimCCHead([], num_outputs=K, input_size=(64, 48))


def test_simcc_loss_is_zero_for_a_perfect_prediction_and_grows_with_a_shift():
    codec = SimCCCodec(input_size=INPUT, split_ratio=2.0)
    kpts = _points(torch.Generator().manual_seed(3), 20.0)
    t, w = codec.encode(kpts, torch.ones(B, K), HM, STRIDE)
    shifted, _ = codec.encode(kpts + 3.0, torch.ones(B, K), HM, STRIDE)
    loss = SimCCLoss(beta=10.0, label_softmax=True)
    assert loss(t, t, w).item() < 1e-6
    assert loss(shifted, t, w).item() > 0.1
    # Without label softmax the optimum is log(normalised label) / beta.
    plain = SimCCLoss(beta=10.0, label_softmax=False)
    perfect = {a: torch.log(t[a].clamp_min(1e-30)) / 10.0 for a in ("x", "y")}
    assert abs(plain(perfect, t, w).item()) < 1e-5
    assert plain(shifted, t, w).item() > plain(perfect, t, w).item() + 0.1


def test_simcc_loss_hand_computed_two_bins():
    # B = 1, K = 2, two bins per axis; keypoint 1 has weight 0 and a NaN prediction.
    pred = {"x": torch.tensor([[[0.0, 0.1], [float("nan"), 0.0]]]), "y": torch.tensor([[[0.2, 0.0], [0.0, 0.0]]])}
    target = {"x": torch.tensor([[[1.0, 0.0], [1.0, 0.0]]]), "y": torch.tensor([[[0.5, 0.5], [1.0, 0.0]]])}
    weights = torch.tensor([[1.0, 0.0]])
    beta = 10.0

    def softmax2(a, b):
        ea, eb = math.exp(beta * a), math.exp(beta * b)
        return ea / (ea + eb), eb / (ea + eb)

    def kl(p, q):
        return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)

    # label_softmax=True: p = softmax(beta * t).
    kx = kl(softmax2(1.0, 0.0), softmax2(0.0, 0.1))
    ky = kl(softmax2(0.5, 0.5), softmax2(0.2, 0.0))
    expected = (kx + ky) / 2  # mean over B * K = 2 keypoints, the second weighted 0
    got = SimCCLoss(beta=beta, label_softmax=True)(pred, target, weights).item()
    assert got == pytest.approx(expected, rel=1e-5)
    # label_softmax=False: p = t / sum(t) (0 * log 0 = 0).
    kx = kl((1.0, 0.0), softmax2(0.0, 0.1))
    ky = kl((0.5, 0.5), softmax2(0.2, 0.0))
    got = SimCCLoss(beta=beta, label_softmax=False)(pred, target, weights).item()
    assert got == pytest.approx((kx + ky) / 2, rel=1e-5)
    # Without target weights the NaN keypoint poisons the loss (it is counted).
    assert math.isnan(SimCCLoss(beta=beta, use_target_weight=False)(pred, target, weights).item())


# ------------------------------------------------------------------------------------ offset loss
def test_offset_loss_ignores_cells_outside_the_mask():
    codec = OffsetHeatmapCodec(sigma=2.0, radius=2.0)
    kpts = _points(torch.Generator().manual_seed(4), 24.0)
    vis = torch.ones(B, K)
    vis[0, 1] = 0
    t, w = codec.encode(kpts, vis, HM, STRIDE)
    loss = OffsetHeatmapLoss(offset_weight=1.0)
    packed = torch.cat([t["heatmaps"], t["offsets"]], dim=1)
    assert loss(packed, t, w).item() == 0.0
    # Garbage (even NaN) outside the mask and in the invisible keypoint's channels: still 0.
    outside = torch.cat([t["offset_mask"], t["offset_mask"]], dim=1) == 0
    bad = packed.clone()
    bad[:, K:][outside] = float("nan")
    bad[0, 1] = float("nan")
    bad[0, K + 1] = 123.0
    bad[0, 2 * K + 1] = 123.0
    assert loss(bad, t, w).item() == 0.0
    # Inside the mask it counts: +0.5 on every supervised x offset -> L1 mean = 0.25 (x and y entries).
    inside = bad.clone()
    inside[:, K : 2 * K] = torch.where(t["offset_mask"] > 0, t["offsets"][:, :K] + 0.5, inside[:, K : 2 * K])
    assert loss(inside, t, w).item() == pytest.approx(0.25, rel=1e-5)
    assert OffsetHeatmapLoss(offset_weight=2.0)(inside, t, w).item() == pytest.approx(0.5, rel=1e-5)
    # The heatmap part is WeightedHeatmapMSE.
    hm_bad = packed.clone()
    hm_bad[:, :K] += 0.1
    assert loss(hm_bad, t, w).item() == pytest.approx(0.01 * (B * K - 1) / (B * K), rel=1e-4)


# ------------------------------------------------------------------------------------ integral loss
def test_integral_loss_equals_hand_l1_and_backpropagates():
    # One 2 x 3 map: softmax of [[0, 1, 2], [0, 0, 0]].
    logits = torch.tensor([[[[0.0, 1.0, 2.0], [0.0, 0.0, 0.0]]]], requires_grad=True)
    e = [1.0, math.e, math.e**2, 1.0, 1.0, 1.0]
    z = sum(e)
    u = (e[1] + 2 * e[2] + e[4] + 2 * e[5]) / z
    v = (e[3] + e[4] + e[5]) / z
    target = {"keypoints": torch.tensor([[[0.5, 0.25]]])}
    loss = IntegralRegressionLoss(kind="l1")(logits, target, torch.ones(1, 1))
    assert loss.item() == pytest.approx(abs(u - 0.5) + abs(v - 0.25), rel=1e-6)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # Decoded keypoint is the same soft-argmax in input px.
    out, score = IntegralRegressionCodec().decode(logits.detach(), stride=2.0)
    assert out[0, 0].tolist() == pytest.approx([(u + 0.5) * 2 - 0.5, (v + 0.5) * 2 - 0.5], rel=1e-6)
    assert score.item() == pytest.approx(e[2] / z, rel=1e-6)
    # normalize="relu": relu(z) / sum; [[0, 1, -1], [3, 0, 0]] -> mass 1/4 at (1, 0), 3/4 at (0, 1).
    relu = IntegralRegressionCodec(normalize="relu")
    coords, _ = relu.expectation(torch.tensor([[[[0.0, 1.0, -1.0], [3.0, 0.0, 0.0]]]]))
    assert coords[0, 0].tolist() == pytest.approx([0.25, 0.75])
    # Weight 0: no loss, no gradient.
    logits.grad = None
    IntegralRegressionLoss()(logits, target, torch.zeros(1, 1)).backward()
    assert logits.grad.abs().sum().item() == 0.0


def test_integral_loss_regulariser_is_js_and_zero_at_its_optimum():
    codec = IntegralRegressionCodec(beta=1.0, sigma=2.0)
    kpts = _points(torch.Generator().manual_seed(8), 24.0, dtype=torch.float64)
    t, w = codec.encode(kpts, torch.ones(B, K), HM, STRIDE)
    loss = IntegralRegressionLoss(regulariser_weight=1.0, sigma=2.0, codec=codec)
    perfect = torch.log(t["heatmaps"].clamp_min(1e-300))  # softmax = the normalised Gaussian
    assert loss(perfect, t, w).item() < 1e-3
    flat = torch.zeros(B, K, *HM, dtype=torch.float64, requires_grad=True)
    value = loss(flat, t, w)
    value.backward()
    assert value.item() > 0.5 and torch.isfinite(flat.grad).all()
    # JS of two disjoint distributions is log 2.
    p = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    q = torch.zeros_like(p)
    p[..., 0, 0], q[..., 1, 1] = 1.0, 1.0
    assert IntegralRegressionLoss.js_divergence(p, q).item() == pytest.approx(math.log(2))
