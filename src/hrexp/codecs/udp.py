"""UDP heatmap codec: Gaussian heatmaps with the corner-aligned "unbiased data processing" transform.

Huang, Zhu, Guo, Huang, "The Devil Is in the Details: Delving Into Unbiased Data Processing for
Human Pose Estimation", CVPR 2020. UDP measures sizes in *intervals between pixel centres*
(``size - 1``) rather than in pixels, so its input -> heatmap transform is corner-aligned
(``align_corners=True``)::

    u = x * (w_hm - 1) / (w_in - 1),        x = u * (w_in - 1) / (w_hm - 1)

(the same per axis with heights for ``y``), and the Gaussian is rendered at the exact sub-pixel
``(u, v)`` (no rounding of the centre to a heatmap pixel).

Does hrexp's pixel-centre convention already give UDP's unbiased transform?
---------------------------------------------------------------------------
hrexp maps ``u = (x + 0.5) / s - 0.5`` (``align_corners=False``: pixel *areas* line up). It is
unbiased in the sense UDP's paper cares about, but it is *not the same map*:

* Both are exact affine inverses of their decode, have no rounding, and are flip-consistent: with
  ``w_in = s * w_hm``, flipping the image (``x -> w_in - 1 - x``) flips the heatmap
  (``u -> w_hm - 1 - u``) under either convention. The bias UDP removed (the classical
  ``u = x / s`` together with flip testing, which shifts flipped predictions by ``(s - 1) / s``
  heatmap px, and the rounding of the encoded centre) is absent from both.
* They differ in scale: hrexp's slope is ``1 / s``, UDP's ``(w_hm - 1) / (w_in - 1)``. Both map
  the image centre ``x = (w_in - 1) / 2`` to the heatmap centre ``u = (w_hm - 1) / 2``, and away
  from it they drift apart linearly. For input 256 and heatmap 64 (stride 4):

  ========  ===================  ==========================
  x         hrexp u              UDP u
  ========  ===================  ==========================
  0         -0.375               0
  127.5     31.5                 31.5
  255       63.375               63
  ========  ===================  ==========================

  UDP puts the centres of the outermost input pixels on the centres of the outermost heatmap
  pixels; hrexp puts the outer *edges* (``-0.5``, ``w_in - 0.5``) on the outer edges. Mixing
  them (encode with one, decode with the other) costs ``|u_hrexp - u_udp| * s`` input px: 1.5 px
  at ``x = 0`` and ``x = 255``, 0 at the centre.
* They are equal everywhere only when ``s = 1`` (both the identity); for ``s > 1`` only at the
  centre.

So UDP's transform is implemented here separately (:meth:`UDPHeatmapCodec.to_heatmap`,
:meth:`UDPHeatmapCodec.to_input`) so the two conventions can be compared as codecs. Note that
UDP's paper also warps the *image* with the corner-aligned convention; hrexp's data transforms use
the pixel-centre one, which this codec leaves alone (the codec only defines targets).

Input size
----------
UDP needs the input size. :meth:`~UDPHeatmapCodec.encode` / :meth:`~UDPHeatmapCodec.decode` take
it as ``input_size=(H, W)``; when ``None`` (default) it is ``heatmap_size * stride`` (the heatmap
size of ``decode`` is its outputs' last two dims), which is exact whenever the input size is a
multiple of the stride.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from hrexp.codecs.heatmap import REFINE_OPTIONS, GaussianHeatmapCodec


def _float_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


class UDPHeatmapCodec:
    """Gaussian heatmaps with UDP's corner-aligned coordinate transform (see the module docstring).

    Rendering and sub-pixel decoding (arg-max + DARK, or quarter / none) are those of
    :class:`~hrexp.codecs.heatmap.GaussianHeatmapCodec`, used by composition *at stride 1*, where
    its transform is the identity (``u = (x + 0.5) / 1 - 0.5 = x``): this codec maps input px to
    UDP heatmap coordinates, lets the Gaussian codec render / decode in heatmap coordinates, and
    maps back with UDP's inverse.

    Args:
        sigma: Standard deviation of the Gaussian in heatmap pixels.
        refine: ``"dark"`` (default), ``"quarter"`` or ``"none"``, as in the Gaussian codec.
        blur_kernel: DARK's blur kernel, as in the Gaussian codec.

    Targets: ``{"heatmaps": [B, K, h, w]}`` (peak 1 at the sub-pixel centre, not truncated).
    Weights ``[B, K]``: 1 for a visible keypoint inside the input image
    (``-0.5 <= x < W - 0.5``, same for ``y``), else 0 (its heatmap is all zero).
    """

    name = "udp"
    flippable = True  # K maps in the image frame: the task's flip test flips them back

    def __init__(self, sigma: float = 2.0, refine: str = "dark", blur_kernel: int | None = None):
        if refine not in REFINE_OPTIONS:
            raise ValueError(f"refine={refine!r} is not supported; choose one of {REFINE_OPTIONS}")
        self._gauss = GaussianHeatmapCodec(sigma=sigma, refine=refine, blur_kernel=blur_kernel)
        self.sigma = self._gauss.sigma
        self.refine = refine

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma={self.sigma}, refine={self.refine!r})"

    def output_channels(self, num_keypoints: int) -> int:
        """One heatmap per keypoint."""
        return int(num_keypoints)

    # ------------------------------------------------------------------ transform
    @staticmethod
    def _scales(heatmap_size: Sequence[int], input_size: Sequence[float]) -> tuple[float, float]:
        h, w = (int(s) for s in heatmap_size)
        hin, win = (float(s) for s in input_size)
        if h < 2 or w < 2:
            raise ValueError(f"UDP needs a heatmap of at least 2 x 2 (size - 1 > 0), got {heatmap_size!r}")
        if hin <= 1 or win <= 1:
            raise ValueError(f"UDP needs an input larger than 1 x 1 px, got {input_size!r}")
        return (w - 1) / (win - 1), (h - 1) / (hin - 1)

    @staticmethod
    def _input_size(heatmap_size: Sequence[int], stride: float, input_size) -> tuple[float, float]:
        if input_size is not None:
            return float(input_size[0]), float(input_size[1])
        if not stride > 0:
            raise ValueError(f"stride must be > 0, got {stride!r}")
        return float(heatmap_size[0]) * stride, float(heatmap_size[1]) * stride

    @classmethod
    def to_heatmap(cls, keypoints: Tensor, heatmap_size, input_size) -> Tensor:
        """UDP's forward transform ``u = x * (w_hm - 1) / (w_in - 1)`` per axis; sizes are ``(h, w)``."""
        sx, sy = cls._scales(heatmap_size, input_size)
        scale = keypoints.new_tensor([sx, sy])
        return keypoints * scale

    @classmethod
    def to_input(cls, coords: Tensor, heatmap_size, input_size) -> Tensor:
        """UDP's inverse transform ``x = u * (w_in - 1) / (w_hm - 1)`` per axis; sizes are ``(h, w)``."""
        sx, sy = cls._scales(heatmap_size, input_size)
        scale = coords.new_tensor([1.0 / sx, 1.0 / sy])
        return coords * scale

    # ------------------------------------------------------------------ encode / decode
    def encode(
        self,
        keypoints: Tensor,
        visible: Tensor,
        heatmap_size: tuple[int, int],
        stride: float,
        input_size: tuple[int, int] | None = None,
    ) -> tuple[dict[str, Tensor], Tensor]:
        """Render UDP Gaussian heatmaps.

        Args:
            keypoints: ``[B, K, 2]`` ``(x, y)`` in input px.
            visible: ``[B, K]``, nonzero where annotated.
            heatmap_size: ``(h, w)``.
            stride: Input px per heatmap px; gives the input size ``heatmap_size * stride``
                unless ``input_size`` is given.
            input_size: ``(H, W)`` of the network input, or None.

        Returns:
            ``({"heatmaps": [B, K, h, w]}, weights [B, K])``, float32 (float64 for float64 input).
        """
        if keypoints.dim() != 3 or keypoints.shape[-1] != 2:
            raise ValueError(f"keypoints must be [B, K, 2], got {tuple(keypoints.shape)}")
        if visible.shape != keypoints.shape[:2]:
            raise ValueError(f"visible must be {tuple(keypoints.shape[:2])}, got {tuple(visible.shape)}")
        hin, win = self._input_size(heatmap_size, stride, input_size)
        kpts = keypoints.to(_float_dtype(keypoints))
        coords = self.to_heatmap(kpts, heatmap_size, (hin, win))
        x, y = kpts[..., 0], kpts[..., 1]
        # Inside the input image (pixel areas); implies -0.5 <= u < w - 0.5 for the inner codec.
        inside = (x >= -0.5) & (x < win - 0.5) & (y >= -0.5) & (y < hin - 0.5)
        vis = (visible.to(keypoints.device) != 0) & inside
        heatmaps, weights = self._gauss.encode(coords, vis, heatmap_size, stride=1.0)
        return {"heatmaps": heatmaps}, weights

    def decode(
        self,
        outputs: Tensor | Mapping[str, Tensor],
        stride: float,
        input_size: tuple[int, int] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Arg-max + refinement (DARK by default) in heatmap coordinates, then UDP's inverse.

        Args:
            outputs: ``[B, K, h, w]`` heatmaps or ``{"heatmaps": ...}``.
            stride: Input px per heatmap px (input size ``(h, w) * stride`` unless ``input_size``).
            input_size: ``(H, W)`` of the network input, or None.

        Returns:
            ``(keypoints [B, K, 2] input px, scores [B, K] = heatmap maxima)``.
        """
        heatmaps = outputs["heatmaps"] if isinstance(outputs, Mapping) else outputs
        if heatmaps.dim() != 4:
            raise ValueError(f"heatmaps must be [B, K, h, w], got {tuple(heatmaps.shape)}")
        hm_size = tuple(heatmaps.shape[-2:])
        hin, win = self._input_size(hm_size, stride, input_size)
        coords, scores = self._gauss.decode(heatmaps, stride=1.0)  # stride 1: x == u
        return self.to_input(coords, hm_size, (hin, win)), scores
