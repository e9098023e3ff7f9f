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
UDP needs the input size: the constructor's ``input_size=(H, W)``; when ``None`` (default) it is
``heatmap_size * stride`` (the heatmap size of ``decode`` is its outputs' last two dims), which is
exact whenever the input size is a multiple of the stride (hrexp's inputs are multiples of the
backbone's coarsest stride).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from hrexp.codecs.base import KeypointCodec, check_points, float_dtype, top_two_within
from hrexp.codecs.heatmap import REFINE_OPTIONS, GaussianHeatmapCodec


class UDPHeatmapCodec(KeypointCodec):
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
        input_size: ``(H, W)`` of the network input; None: ``heatmap_size * stride`` (module docstring).

    Targets: heatmaps ``[B, K, h, w]`` (peak 1 at the sub-pixel centre, not truncated), for the task's
    heatmap loss. Weights ``[B, K]``: 1 for a visible keypoint inside the input image
    (``-0.5 <= x < W - 0.5``, same for ``y``), else 0 (its heatmap is all zero).
    """

    name = "udp"
    flippable = True  # K maps in the image frame: the task's flip test flips them back
    heatmap_targets = True
    confidence = "heatmap peak"

    def __init__(self, sigma: float = 2.0, refine: str = "dark", blur_kernel: int | None = None,
                 input_size: Sequence[int] | None = None):
        if refine not in REFINE_OPTIONS:
            raise ValueError(f"refine={refine!r} is not supported; choose one of {REFINE_OPTIONS}")
        if input_size is not None and (len(input_size) != 2 or min(float(s) for s in input_size) <= 1):
            raise ValueError(f"task.codec.input_size={list(input_size)!r}: expected (H, W) larger than 1 x 1 px, "
                             "or null (the heatmap size times the stride)")
        self._gauss = GaussianHeatmapCodec(sigma=sigma, refine=refine, blur_kernel=blur_kernel)
        self.sigma = self._gauss.sigma
        self.refine = refine
        self.input_size = None if input_size is None else (float(input_size[0]), float(input_size[1]))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma={self.sigma}, refine={self.refine!r}, input_size={self.input_size})"

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

    def _input_size(self, heatmap_size: Sequence[int], stride: float) -> tuple[float, float]:
        if self.input_size is not None:
            return self.input_size
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
    ) -> tuple[Tensor, Tensor]:
        """Render UDP Gaussian heatmaps.

        Args:
            keypoints: ``[B, K, 2]`` ``(x, y)`` in input px.
            visible: ``[B, K]``, nonzero where annotated.
            heatmap_size: ``(h, w)``.
            stride: Input px per heatmap px; gives the input size ``heatmap_size * stride``
                unless the codec was built with an ``input_size``.

        Returns:
            ``(heatmaps [B, K, h, w], weights [B, K])``, float32 (float64 for float64 input).
        """
        check_points(keypoints, visible)
        hin, win = self._input_size(heatmap_size, stride)
        kpts = keypoints.to(float_dtype(keypoints))
        coords = self.to_heatmap(kpts, heatmap_size, (hin, win))
        x, y = kpts[..., 0], kpts[..., 1]
        # Inside the input image (pixel areas); implies -0.5 <= u < w - 0.5 for the inner codec.
        inside = (x >= -0.5) & (x < win - 0.5) & (y >= -0.5) & (y < hin - 0.5)
        vis = (visible.to(keypoints.device) != 0) & inside
        return self._gauss.encode(coords, vis, heatmap_size, stride=1.0)

    def decode(self, outputs: Tensor, stride: float) -> tuple[Tensor, Tensor]:
        """Arg-max + refinement (DARK by default) in heatmap coordinates, then UDP's inverse.

        Args:
            outputs: ``[B, K, h, w]`` heatmaps.
            stride: Input px per heatmap px (input size ``(h, w) * stride`` unless the codec has an
                ``input_size``).

        Returns:
            ``(keypoints [B, K, 2] input px, scores [B, K] = heatmap maxima)``.
        """
        heatmaps = outputs
        if heatmaps.dim() != 4:
            raise ValueError(f"heatmaps must be [B, K, h, w], got {tuple(heatmaps.shape)}")
        hm_size = tuple(heatmaps.shape[-2:])
        hin, win = self._input_size(hm_size, stride)
        coords, scores = self._gauss.decode(heatmaps, stride=1.0)  # stride 1: x == u
        return self.to_input(coords, hm_size, (hin, win)), scores

    def tied_points(self, outputs: Tensor, tolerance: float) -> Tensor:
        """``[B, K]``: the map's two highest values within ``tolerance`` (the arg-max is a tie)."""
        return top_two_within(outputs.flatten(-2), tolerance)
