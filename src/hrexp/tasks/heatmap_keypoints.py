"""What every keypoint task shares: head, target encoding, loss, decoding, the flip test, prediction and export.

The task talks to its codec through :class:`~hrexp.codecs.base.KeypointCodec` alone (the head's channels,
where the targets go, whether the flip test applies, confidences, the exported outputs), so a new codec
needs no edit here. A concrete task (:class:`~hrexp.tasks.landmarks.LandmarkTask`,
:class:`~hrexp.tasks.pose.PoseTask`) adds its metrics and reports; drawing (ground truth green,
prediction red) is shared here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from hrexp.codecs.base import KeypointCodec, Outputs
from hrexp.data.transforms import flip_permutation
from hrexp.geometry import apply_affine, invert_affine
from hrexp.prediction.writers import KeypointPredictionWriter, PredictionWriter
from hrexp.reports.drawing import draw_keypoints
from hrexp.tasks.base import Task


class HeatmapKeypointTask(Task):
    """Keypoints by heatmap regression, predictions mapped back to original image pixels.

    Targets are encoded from the batch's keypoints at the head's own output stride; predictions are
    decoded and mapped through the inverse of each sample's affine matrix.

    Flip test: the module also runs the horizontally flipped image (``flip_test``); its heatmaps are
    flipped back, their flip pairs swapped, and averaged with the plain ones. The classic HRNet code
    also shifts the flipped-back maps one heatmap pixel to the right (``flip_shift``); that shift
    corrects the biased coordinate rule ``u = x / stride`` of that code. hrexp's codec uses the
    pixel-centre rule ``u = (x + 0.5) / stride - 0.5``, under which a flip maps heatmap column ``u``
    to ``w - 1 - u`` exactly, so the shift is off by default here (a test shows both facts).

    Args:
        head: Partial head constructor, called as ``head(feature_info=..., num_outputs=...)`` with the
            codec's ``output_channels(K)``.
        codec: The target codec, a :class:`~hrexp.codecs.base.KeypointCodec`.
        loss: ``loss(outputs, targets, weights) -> scalar``: the task's heatmap loss for a codec with
            ``heatmap_targets``, else the codec's own loss.
        feature_info: The backbone's feature description.
        dataset_meta: ``num_keypoints``, ``keypoint_names``, ``flip_pairs`` (and task-specific keys).
        flip_test: Average with the flipped image's heatmaps at evaluation.
        flip_shift: Shift the flipped-back heatmaps one pixel right (the classic, biased convention).
        num_keypoints: When set, the data must have exactly this many keypoints.
        monitor: The metric that selects the best checkpoint (``{"metric": ..., "mode": ...}``).
    """

    task_name = "keypoints"

    def __init__(
        self,
        head: Callable[..., nn.Module],
        codec: KeypointCodec,
        loss: nn.Module,
        feature_info: Sequence[Mapping[str, int]],
        dataset_meta: Mapping[str, Any],
        flip_test: bool = False,
        flip_shift: bool = False,
        num_keypoints: int | None = None,
        monitor: Mapping[str, str] | None = None,
    ):
        if "num_keypoints" not in dataset_meta or int(dataset_meta["num_keypoints"]) < 1:
            raise ValueError(f"task={self.task_name} needs dataset_meta.num_keypoints >= 1, got {dict(dataset_meta)}")
        k = int(dataset_meta["num_keypoints"])
        if num_keypoints is not None and int(num_keypoints) != k:
            raise ValueError(
                f"task.num_keypoints={num_keypoints}: the head would have {num_keypoints} outputs, but the data "
                f"defines {k} keypoints"
            )
        if not isinstance(codec, KeypointCodec):  # the one contract this task talks to
            raise ValueError(f"task.codec: {type(codec).__name__} is not a hrexp.codecs.base.KeypointCodec; a keypoint "
                             "task's codec derives from it (docs/design.md, Codecs)")
        # The codec says how many channels the head outputs (offset codec: 3 per keypoint).
        super().__init__(head, feature_info, codec.output_channels(k), monitor or {"metric": "val/loss", "mode": "min"})
        self.num_keypoints = k
        self.keypoint_names = list(dataset_meta.get("keypoint_names") or [f"kp{i}" for i in range(self.num_keypoints)])
        self.flip_pairs = [(int(a), int(b)) for a, b in (dataset_meta.get("flip_pairs") or [])]
        if flip_test and not codec.flippable:
            raise ValueError(f"task.flip_test=true but the codec {type(codec).__name__} has no flip test (its outputs "
                             "are not keypoint maps in the image frame); set task.flip_test=false")
        if flip_test and not self.flip_pairs:
            raise ValueError(
                "task.flip_test=true but the data defines no flip pairs: flipped-back heatmaps would keep left "
                "keypoints labelled left; define flip pairs in the keypoint metadata or set task.flip_test=false"
            )
        if not callable(loss):
            # `task.loss=adaptive_wing` (a dot) sets the loss to that string; the group is chosen with a slash.
            raise ValueError(f"task.loss={loss!r}: expected a loss module; choose one with task/loss=<name> "
                             "(heatmap_mse, adaptive_wing)")
        self.flip_test = bool(flip_test)
        self.flip_shift = bool(flip_shift)
        perm = torch.from_numpy(flip_permutation(self.num_keypoints, self.flip_pairs)).long()
        self.register_buffer("flip_permutation", perm, persistent=False)
        self.codec = codec
        self.loss_fn = loss

    def has_targets(self, batch: Mapping[str, torch.Tensor]) -> bool:
        """False for a batch without any labelled keypoint (e.g. detection boxes): no loss then."""
        return bool(batch["visible"].any())

    def heatmap_size(self, batch: Mapping[str, torch.Tensor]) -> tuple[int, int]:
        """The output grid the targets are encoded on: the input over the head's stride (heads give ``ceil(H / s)``)."""
        return tuple(math.ceil(int(s) / self.stride) for s in batch["image"].shape[-2:])

    def loss(self, outputs: Outputs, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The loss against targets the codec encodes from ``batch['keypoints']`` at the head's stride.

        A codec with ``heatmap_targets`` (gaussian, udp) gives one heatmap tensor for the task's heatmap loss;
        the others a dict of targets for their own loss (offset, integral, simcc). Targets are cast to the
        outputs' dtype (half under mixed precision).
        """
        size = self.heatmap_size(batch)
        targets, weights = self.codec.encode(batch["keypoints"], batch["visible"], heatmap_size=size, stride=self.stride)
        dtype = self.codec.output_tensors(outputs)[0].dtype
        if self.codec.heatmap_targets:
            targets = targets.to(dtype)
        else:
            targets = {key: value.to(dtype) for key, value in targets.items()}
        loss = self.loss_fn(outputs, targets, weights.to(dtype))
        extra = self.codec.regularizer(size)  # a learned codec's penalty (codecs/adaptive.py)
        return loss if extra is None else loss + extra

    def flip_back(self, heatmaps: torch.Tensor) -> torch.Tensor:
        """Heatmaps of a horizontally flipped input, in the frame and keypoint order of the original."""
        out = heatmaps.flip(-1)[:, self.flip_permutation]
        if self.flip_shift:
            out = torch.cat([out[..., :1], out[..., :-1]], dim=-1)
        return out

    @torch.no_grad()
    def predict(
        self,
        outputs: Outputs,
        batch: Mapping[str, torch.Tensor],
        flipped_outputs: Outputs | None = None,
    ) -> dict[str, torch.Tensor]:
        """Decode the outputs (with the flip test: maps averaged with the flipped-back ones) to input, then
        original pixels; ``spread`` and ``covariance`` (``[B, K, 2, 2]``, original px^2) where the codec measures
        them."""
        if flipped_outputs is not None:  # only with flip_test, which the constructor allows for a flippable codec
            outputs = 0.5 * (outputs.detach().float() + self.flip_back(flipped_outputs.detach().float()))
        keypoints, scores = self.codec.decode(outputs, stride=self.stride)
        to_original = invert_affine(batch["matrix"].float())
        original = apply_affine(keypoints, to_original)
        preds = {"keypoints_input": keypoints, "keypoints": original, "scores": scores}
        spread = self.codec.spread(outputs, stride=self.stride)
        if spread is not None:
            # Input px -> original px: the affine's area scale (the warp is a similarity up to aspect).
            scale = torch.linalg.det(to_original[:, :2, :2]).abs().sqrt()
            preds["spread"] = spread * scale[:, None]
        covariance = self.codec.point_covariance(outputs, stride=self.stride)
        if covariance is not None:  # input px^2 -> original px^2: M S M^T with M the affine's linear part
            linear = to_original[:, None, :2, :2]
            preds["covariance"] = linear @ covariance.float() @ linear.transpose(-1, -2)
        return preds

    # ------------------------------------------------------------------ prediction and export hooks
    def prediction_writer(self, out_dir: Path, per_instance: bool) -> PredictionWriter:
        """``predictions.csv`` and COCO-style ``predictions.json`` of the keypoints in original pixels."""
        return KeypointPredictionWriter(out_dir, self.keypoint_names, per_instance, self.codec.confidence)

    def export_output_names(self, decode: bool) -> list[str]:
        """The codec's raw outputs (``maps``; SimCC ``simcc_x``, ``simcc_y``), then ``keypoints``, ``scores``."""
        return [*self.codec.graph_output_names, *(("keypoints", "scores") if decode else ())]

    def export_outputs(self, outputs: Outputs, decode: bool) -> tuple[torch.Tensor, ...]:
        """The codec's raw output tensors and, with ``decode``, its decoding: keypoints ``[B, K, 2]`` (input px)
        and scores ``[B, K]``."""
        raw = self.codec.output_tensors(outputs)
        if not decode:
            return raw
        return (*raw, *self.codec.decode(outputs, stride=self.stride))

    def export_covariance(self, outputs: Outputs) -> torch.Tensor | None:
        """The codec's covariance of each peak (input px^2; None for a codec without one), as :meth:`predict`."""
        return self.codec.point_covariance(outputs, stride=self.stride)

    def tied_points(self, outputs: Outputs, tolerance: float) -> torch.Tensor | None:
        """The keypoints whose decoding is a tie at ``tolerance`` (the codec's ``tied_points``)."""
        return self.codec.tied_points(outputs, tolerance)

    # Batch keys each sample's results carry besides the predictions (a task adds its metric's inputs).
    sample_batch_keys: tuple[str, ...] = ("keypoints_orig", "visible_orig", "matrix")

    def sample_results(self, preds: Mapping[str, torch.Tensor], batch: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Per sample: ``index``, predicted ``keypoints`` (original px), ``scores`` (peak values), ``spread``
        (peak width, original px), ``covariance`` (the peak's, original px^2) and the batch's
        ``sample_batch_keys`` (truth, matrix, ...), as NumPy."""
        columns = {key: preds[key] for key in ("keypoints", "scores", "spread", "covariance") if key in preds}
        columns.update({key: batch[key] for key in self.sample_batch_keys})
        arrays = {key: value.detach().float().cpu().numpy().astype(np.float64) for key, value in columns.items()}
        indices = batch["index"].cpu().tolist()
        return [{"index": int(index), **{key: value[i] for key, value in arrays.items()}}
                for i, index in enumerate(indices)]

    def combine_members(self, members: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
        """The members' mean keypoints (original px) and mean scores, spreads and covariances; ``member_spread`` is
        the root-mean-square distance of the members' keypoints from that mean (the ensemble's uncertainty) and
        ``member_covariance`` ``[K, 2, 2]`` their covariance about it (original px^2)."""
        first = members[0]
        for m, member in enumerate(members[1:], start=2):
            if [s["index"] for s in member] != [s["index"] for s in first]:
                raise ValueError(f"ensemble member {m} scored other samples than member 1: not the same split")
        combined = []
        for i, sample in enumerate(first):
            points = np.stack([member[i]["keypoints"] for member in members])  # [M, K, 2]
            mean = points.mean(axis=0)
            out = {key: value for key, value in sample.items()}
            out["keypoints"] = mean
            for key in ("scores", "spread", "covariance"):
                if key in sample:
                    out[key] = np.mean([member[i][key] for member in members], axis=0)
            out["member_spread"] = np.sqrt(((points - mean) ** 2).sum(axis=-1).mean(axis=0))
            deviation = points - mean
            out["member_covariance"] = np.einsum("mki,mkj->kij", deviation, deviation) / len(members)
            combined.append(out)
        return combined

    def update_metrics(self, stage: str, preds: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def draw_predictions(self, images: Sequence[np.ndarray], batch: Mapping[str, Any],
                         preds: Mapping[str, Any], scale: int = 1) -> list[tuple[np.ndarray, str]]:
        """Ground truth (green) and prediction (red) in input pixels, joined by a yellow line.

        Each caption gives the sample's mean error in ORIGINAL image pixels (the unit of the metrics).
        """
        pred_in = preds["keypoints_input"].float().cpu().numpy()
        gt_in = batch["keypoints"].float().cpu().numpy()
        vis_in = batch["visible"].cpu().numpy() > 0
        dist = (preds["keypoints"].float() - batch["keypoints_orig"].float()).norm(dim=-1).cpu()
        vis_orig = batch["visible_orig"].cpu() > 0
        out = []
        for i, image in enumerate(images):
            err = float(dist[i][vis_orig[i]].mean()) if bool(vis_orig[i].any()) else math.nan
            picture = draw_keypoints(image, gt_in[i], pred_in[i], vis_in[i], scale=scale)
            out.append((picture, "" if math.isnan(err) else f"mean error {err:.2f} px"))
        return out
