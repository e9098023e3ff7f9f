"""Adaptive heatmaps (task/codec=adaptive): targets of a learned per-landmark covariance against hand values, the
plain Gaussian at initialisation, a spread learned from data, and the parameters trained and saved by a run."""

from __future__ import annotations

import math

import pytest
import torch

from hrexp.codecs.adaptive import AdaptiveGaussianCodec
from hrexp.codecs.heatmap import GaussianHeatmapCodec

STRIDE = 4.0


def _input_px(u: float, v: float) -> list[float]:
    """The input point whose heatmap coordinate is ``(u, v)`` at STRIDE: ``x = (u + 0.5) * s - 0.5``."""
    return [(u + 0.5) * STRIDE - 0.5, (v + 0.5) * STRIDE - 0.5]


def test_targets_match_hand_computed_gaussians_of_the_learned_covariance():
    iso = AdaptiveGaussianCodec(sigma=2.0, covariance="isotropic")
    iso.output_channels(1)
    with torch.no_grad():
        iso.log_scale[0, 0] = math.log(1.5)  # sigma 3
    heat, weights = iso.encode(torch.tensor([[_input_px(5, 3)]]), torch.ones(1, 1), (8, 10), STRIDE)
    assert weights.tolist() == [[1.0]]
    assert heat[0, 0, 3, 5].item() == pytest.approx(4 / 9)  # peak sigma0^2 / sigma^2
    assert heat[0, 0, 3, 7].item() == pytest.approx(4 / 9 * math.exp(-4 / 18))
    assert heat[0, 0, 5, 6].item() == pytest.approx(4 / 9 * math.exp(-5 / 18))

    full = AdaptiveGaussianCodec(sigma=2.0, covariance="full")
    full.output_channels(1)
    with torch.no_grad():  # L = 2 * [[1, 0], [0.5, 0.5]] = [[2, 0], [1, 1]]: S = [[4, 2], [2, 2]], det 4
        full.log_scale[0] = torch.tensor([0.0, math.log(0.5)])
        full.shear[0] = 0.5
    torch.testing.assert_close(full.covariance(), torch.tensor([[[4.0, 2.0], [2.0, 2.0]]]))
    torch.testing.assert_close(full.covariance(STRIDE), torch.tensor([[[4.0, 2.0], [2.0, 2.0]]]) * 16)
    heat, _ = full.encode(torch.tensor([[_input_px(5, 3)]]), torch.ones(1, 1), (8, 10), STRIDE)
    # peak 4 / sqrt(4) = 2; S^-1 = [[0.5, -0.5], [-0.5, 1]]: d = (dx, dy) gives 0.5 dx^2 - dx dy + dy^2
    assert heat[0, 0, 3, 5].item() == pytest.approx(2.0)
    assert heat[0, 0, 4, 6].item() == pytest.approx(2 * math.exp(-0.25))  # d = (1, 1): 0.5
    assert heat[0, 0, 3, 7].item() == pytest.approx(2 * math.exp(-1.0))  # d = (2, 0): 2
    assert heat[0, 0, 4, 5].item() == pytest.approx(2 * math.exp(-0.5))  # d = (0, 1): 1
    assert heat[0, 0, 2, 6].item() == pytest.approx(2 * math.exp(-1.25))  # d = (1, -1): 0.5 + 1 + 1 = 2.5


def test_at_initialisation_the_targets_are_the_gaussian_codecs():
    points = torch.tensor([[[13.3, 7.9], [30.1, 22.6], [-40.0, 5.0]]])
    visible = torch.tensor([[1.0, 1.0, 1.0]])
    for kind in ("isotropic", "full"):
        codec = AdaptiveGaussianCodec(sigma=2.0, covariance=kind)
        codec.output_channels(3)
        heat, weights = codec.encode(points, visible, (12, 10), STRIDE)
        plain, plain_weights = GaussianHeatmapCodec(sigma=2.0).encode(points, visible, (12, 10), STRIDE)
        torch.testing.assert_close(heat, plain)
        assert weights.tolist() == plain_weights.tolist() == [[1.0, 1.0, 0.0]]  # the third lies off the map


def test_encode_then_decode_gives_the_points_back_for_an_anisotropic_spread():
    codec = AdaptiveGaussianCodec(sigma=2.0, covariance="full")
    codec.output_channels(2)
    with torch.no_grad():
        codec.log_scale.copy_(torch.tensor([[0.3, -0.2], [-0.1, 0.4]]))
        codec.shear.copy_(torch.tensor([0.4, -0.3]))
    points = torch.tensor([[[41.3, 27.8], [18.6, 50.2]]])
    heat, _ = codec.encode(points, torch.ones(1, 2), (24, 20), STRIDE)
    decoded, _ = codec.decode(heat.detach(), STRIDE)
    torch.testing.assert_close(decoded, points, atol=0.05, rtol=0)


def test_the_spread_is_learned_from_heatmaps_of_another_width():
    """Outputs that are sigma-3 targets: descending the heatmap MSE moves a sigma-2 start to 3 (alpha 0), and the
    penalty keeps it below (alpha > 0)."""
    truth = AdaptiveGaussianCodec(sigma=2.0)
    truth.output_channels(1)
    with torch.no_grad():
        truth.log_scale.fill_(math.log(1.5))
    points, visible = torch.tensor([[[33.0, 21.0]]]), torch.ones(1, 1)
    outputs = truth.encode(points, visible, (16, 16), STRIDE)[0].detach()

    def fitted(alpha: float) -> float:
        codec = AdaptiveGaussianCodec(sigma=2.0, alpha=alpha)
        codec.output_channels(1)
        optimizer = torch.optim.Adam(codec.parameters(), lr=0.05)
        for _ in range(300):
            optimizer.zero_grad()
            target, _ = codec.encode(points, visible, (16, 16), STRIDE)
            loss = ((outputs - target) ** 2).mean()
            extra = codec.regularizer((16, 16))
            (loss if extra is None else loss + extra).backward()
            optimizer.step()
        return 2.0 * codec.log_scale.exp().item()

    assert fitted(0.0) == pytest.approx(3.0, rel=0.01)
    assert fitted(0.2) < 2.9


def test_the_spread_penalty_by_hand():
    codec = AdaptiveGaussianCodec(sigma=2.0, covariance="full", alpha=0.5)
    codec.output_channels(2)
    with torch.no_grad():  # sqrt(det S) = l11 * l22: 2*e^0.2 * 2*e^-0.1 and 2 * 2
        codec.log_scale.copy_(torch.tensor([[0.2, -0.1], [0.0, 0.0]]))
    expected = 0.5 * (4 * math.exp(0.1) + 4) / 2 / (8 * 10)
    assert codec.regularizer((8, 10)).item() == pytest.approx(expected)
    assert AdaptiveGaussianCodec(alpha=0).regularizer((8, 10)) is None


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="task.codec.covariance"):
        AdaptiveGaussianCodec(covariance="diagonal")
    with pytest.raises(ValueError, match="task.codec.alpha"):
        AdaptiveGaussianCodec(alpha=-1)


def test_a_run_trains_the_spread_and_saves_it_in_the_checkpoint(compose_cfg, tmp_path):
    from tests.fit_helpers import TINY_W18, fit

    cfg = compose_cfg([*TINY_W18, "task/codec=adaptive", "trainer.max_epochs=1", "test=false"])
    trainer, module = fit(cfg)
    codec = module.task.codec
    assert isinstance(codec, AdaptiveGaussianCodec)
    assert codec.log_scale.shape == (cfg.data.get("num_keypoints") or module.task.num_keypoints, 1)
    assert codec.log_scale.abs().sum() > 0, "the spread got no gradient"
    ckpt = torch.load(trainer.checkpoint_callback.best_model_path or next(tmp_path.rglob("*.ckpt")),
                      map_location="cpu", weights_only=True)
    torch.testing.assert_close(ckpt["state_dict"]["task.codec.log_scale"], codec.log_scale.detach())
