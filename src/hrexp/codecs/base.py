"""The one contract between a keypoint task and its target encoding: :class:`KeypointCodec`.

A keypoint task (:class:`~hrexp.tasks.heatmap_keypoints.HeatmapKeypointTask`) talks to its codec through
this class alone, so a new codec (a file of its own and a ``task/codec`` YAML) needs no edit anywhere else:

* the head: :meth:`~KeypointCodec.output_channels` (``num_outputs`` of the head) and
  :attr:`~KeypointCodec.output_keys` (None: the network outputs one tensor of maps ``[B, C, h, w]``;
  otherwise a dict of tensors with these keys, as SimCC's head gives ``{"x", "y"}``);
* the loss: :attr:`~KeypointCodec.heatmap_targets` (True: :meth:`~KeypointCodec.encode` gives one
  tensor of heatmaps ``[B, K, h, w]`` for the task's heatmap loss, ``task/loss=heatmap_mse |
  adaptive_wing``; False: a dict of named targets for the codec's own loss, ``task/loss=<codec>``);
  every loss is called ``loss(outputs, targets, weights)``; :meth:`~KeypointCodec.regularizer` adds the
  codec's own term (a learned spread's penalty, ``codecs/adaptive.py``); a codec that learns is an
  ``nn.Module``, whose parameters the task holds and trains;
* training and evaluation: :meth:`~KeypointCodec.encode` and :meth:`~KeypointCodec.decode`, which mirror
  each other (a round trip gives the points back), with the same signatures in every codec;
* the flip test: :attr:`~KeypointCodec.flippable` (the outputs are one tensor of K maps in the image's
  frame, so a flipped image's outputs flip back by mirroring them and swapping the flip pairs);
* confidences: :meth:`~KeypointCodec.decode`'s scores (what they are: :attr:`~KeypointCodec.confidence`)
  and :meth:`~KeypointCodec.spread` (a peak width in input px, or None for a codec without one) and
  :meth:`~KeypointCodec.point_covariance` (the peak's 2x2 covariance in input px^2, or None);
* export: :attr:`~KeypointCodec.graph_output_names` and :meth:`~KeypointCodec.output_tensors` (the
  network's outputs as the exported graph's tensors), :meth:`~KeypointCodec.tied_points` (the points whose
  decoding is a tie, which the export check does not compare).

Configuration-time inputs (SimCC's input size) are constructor arguments, wired in ``conf/task/codec/``.
Conventions: keypoints are ``(x, y)`` in input pixels, the centre of pixel ``(0, 0)`` at ``(0.0, 0.0)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor

# What a network gives a codec: one tensor of maps, or a dict of named tensors (``output_keys``).
Outputs = Tensor | Mapping[str, Tensor]
# What encode gives the loss: heatmaps ``[B, K, h, w]`` (``heatmap_targets``) or a dict of named targets.
Targets = Tensor | dict[str, Tensor]


class KeypointCodec(ABC):
    """Keypoints ``[B, K, 2]`` <-> the network's outputs (see the module docstring for who uses what).

    Subclasses implement :meth:`output_channels`, :meth:`encode` and :meth:`decode` and declare the class
    attributes below; :meth:`spread`, :meth:`point_covariance`, :meth:`regularizer`, :meth:`keypoint_maps`,
    :meth:`output_tensors` and :meth:`tied_points` have defaults.
    """

    #: None: the network outputs one tensor ``[B, output_channels(K), h, w]``; else a dict with these keys.
    output_keys: ClassVar[tuple[str, ...] | None] = None
    #: Names of :meth:`output_tensors` in an exported graph (before the decoded ``keypoints``, ``scores``).
    graph_output_names: ClassVar[tuple[str, ...]] = ("maps",)
    #: True: :meth:`encode` gives one heatmap tensor for the task's heatmap loss; False: a dict for the
    #: codec's own loss (its ``task/codec`` YAML picks that loss).
    heatmap_targets: ClassVar[bool] = False
    #: The outputs are one tensor of K maps in the image's frame: the flip test can mirror them back.
    flippable: ClassVar[bool] = False
    #: What :meth:`decode`'s scores are (predict.py's README names it).
    confidence: ClassVar[str] = "score"

    @abstractmethod
    def output_channels(self, num_keypoints: int) -> int:
        """The head's ``num_outputs`` for ``num_keypoints`` keypoints."""

    @abstractmethod
    def encode(self, keypoints: Tensor, visible: Tensor, heatmap_size: tuple[int, int],
               stride: float) -> tuple[Targets, Tensor]:
        """Targets for ``keypoints`` ``[B, K, 2]`` (input px), ``visible`` ``[B, K]``.

        Args:
            heatmap_size: ``(h, w)`` of the network's output grid (input size over the head's stride).
            stride: Input px per output cell.

        Returns:
            ``(targets, weights)``: the targets (:attr:`heatmap_targets`: a tensor ``[B, K, h, w]``, else a
            dict) and weights ``[B, K]``, 0 for a keypoint the loss must ignore (not visible, or outside).
        """

    @abstractmethod
    def decode(self, outputs: Outputs, stride: float) -> tuple[Tensor, Tensor]:
        """The network's outputs -> ``(keypoints [B, K, 2] in input px, scores [B, K])``, float32 (float64 for
        float64 outputs); half-precision outputs decode in float32."""

    def spread(self, outputs: Outputs, stride: float) -> Tensor | None:
        """How wide each keypoint's peak is, ``[B, K]`` in input px (a confidence beside the scores); None when
        the codec has no such measure."""
        return None

    def point_covariance(self, outputs: Outputs, stride: float) -> Tensor | None:
        """Each keypoint's own uncertainty as a covariance ``[B, K, 2, 2]`` in input px^2 (``(x, y)`` order; what
        conformal ellipses are scaled by, :mod:`hrexp.conformal`), or None when the codec has no such measure."""
        return None

    def regularizer(self, heatmap_size: tuple[int, int]) -> Tensor | None:
        """A term the task adds to its loss (a learned codec's penalty), or None. ``heatmap_size`` is the grid the
        targets were encoded on."""
        return None

    def keypoint_maps(self, outputs: Outputs, num_keypoints: int) -> Tensor | None:
        """One map per keypoint ``[B, K, h, w]`` to draw (eval's heatmap figure), or None for a codec whose outputs
        hold no such map. Default: the first K channels of a single output tensor (the offset codec's heatmaps
        come before its offsets)."""
        if self.output_keys is not None:
            return None
        return outputs[:, :num_keypoints]

    def output_tensors(self, outputs: Outputs) -> tuple[Tensor, ...]:
        """The outputs as tensors, in the order of :attr:`graph_output_names` (an exported graph's outputs)."""
        if self.output_keys is None:
            return (outputs,)
        return tuple(outputs[key] for key in self.output_keys)

    def tied_points(self, outputs: Outputs, tolerance: float) -> Tensor | None:
        """``[B, K]`` True where :meth:`decode` picks between values within ``tolerance`` of each other (two
        arg-max candidates): outputs equal up to ``tolerance`` may decode such a point anywhere. None: the
        decoding has no ties (a continuous function of the outputs)."""
        return None


def top_two_within(values: Tensor, tolerance: float) -> Tensor:
    """``[..., N]`` -> ``[...]``: True where the two largest values lie within ``tolerance`` (an arg-max tie)."""
    top = values.detach().float().topk(2, dim=-1).values
    return (top[..., 0] - top[..., 1]) <= tolerance


def check_points(keypoints: Tensor, visible: Tensor) -> None:
    """Refuses malformed encode inputs: ``keypoints`` ``[B, K, 2]`` and ``visible`` ``[B, K]``."""
    if keypoints.dim() != 3 or keypoints.shape[-1] != 2:
        raise ValueError(f"keypoints must be [B, K, 2], got {tuple(keypoints.shape)}")
    if visible.shape != keypoints.shape[:2]:
        raise ValueError(f"visible must be {tuple(keypoints.shape[:2])}, got {tuple(visible.shape)}")


def float_dtype(t: Tensor) -> torch.dtype:
    """float64 stays float64; anything else (half, integer) computes in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32
