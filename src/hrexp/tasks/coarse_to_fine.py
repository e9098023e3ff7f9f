"""Landmarks coarse to fine: stage 1 (this task's head on the backbone) predicts every landmark on the
down-sized input; stage 2 (:class:`~hrexp.refine.refiner.Refiner`) refines each in a patch of the original
image (``data.refine_scale``: 1 = native resolution) cut around it. Metrics stay in original pixels."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from hrexp.geometry import apply_affine
from hrexp.refine.patches import aligned_centres, crop_patches
from hrexp.refine.refiner import Refiner
from hrexp.tasks.landmarks import LandmarkTask


class CoarseToFineLandmarkTask(LandmarkTask):
    """:class:`LandmarkTask` plus a second stage on patches of the original image.

    Training: the loss is ``stage1_weight`` x stage 1's loss + the refiner's loss on patches centred on the
    ground truth moved by a random jitter (normal, ``jitter_px`` original px per axis: about stage 1's
    error, so the refiner learns to correct the errors it will see); ``train_patches`` landmarks per image
    (random, visible ones) keep the cost bounded. Evaluation: patches around stage 1's predictions; the
    refined landmarks are the predictions (stage 1's are kept as ``keypoints_coarse``).

    Args:
        refine: ``backbone`` (module), ``head`` (partial), ``codec``, ``loss``, ``patch_size`` (px of the
            reduced original), ``scale`` (= ``data.refine_scale``), ``jitter_px`` (number, or ``auto``: the
            best val/mre of ``stage1_ckpt``'s run), ``train_patches`` (per image; null: all),
            ``stage1_ckpt`` (an hrexp checkpoint whose backbone and head start stage 1),
            ``train_stage1`` (false: stage 1 frozen, only the refiner learns), ``stage1_weight``.
        other arguments: as :class:`LandmarkTask`.
    """

    def __init__(self, head: Any, codec: Any, loss: nn.Module, feature_info: Sequence[Mapping[str, int]],
                 dataset_meta: Mapping[str, Any], refine: Mapping[str, Any], **kwargs: Any):
        super().__init__(head, codec, loss, feature_info, dataset_meta, **kwargs)
        options = dict(refine)
        if not options["codec"].heatmap_targets:  # the refiner's loss is a heatmap loss on one map per patch
            raise ValueError(f"task.refine.codec: {type(options['codec']).__name__} encodes no heatmaps for the "
                             "refiner's heatmap loss; use a heatmap codec (gaussian, udp)")
        self.refiner = Refiner(options["backbone"], options["head"], self.num_keypoints, options["codec"],
                               options["loss"])
        self.patch_size = int(options.get("patch_size", 128))
        self.scale = float(options.get("scale", 1.0))
        self.train_patches = options.get("train_patches")
        self.stage1_ckpt = options.get("stage1_ckpt")
        self.train_stage1 = bool(options.get("train_stage1", True))
        self.stage1_weight = float(options.get("stage1_weight", 1.0))
        self.jitter_px = jitter_from(options.get("jitter_px", 16.0), self.stage1_ckpt)
        if self.patch_size < 8 or self.patch_size % int(self.refiner.stride):
            raise ValueError(f"task.refine.patch_size={self.patch_size}: expected >= 8 and a multiple of the refiner's "
                             f"stride {int(self.refiner.stride)}")
        if not self.train_stage1 and not self.stage1_ckpt:
            raise ValueError("task.refine.train_stage1=false needs task.refine.stage1_ckpt (a trained first stage)")

    # ------------------------------------------------------------------ the module's hook
    def on_module_built(self, module: nn.Module) -> None:
        """Start stage 1 from ``stage1_ckpt`` (backbone and head), and freeze it unless ``train_stage1``."""
        if self.stage1_ckpt:
            from hrexp.training.checkpoint_io import read_checkpoint

            state = read_checkpoint(self.stage1_ckpt)["state_dict"]
            own = module.state_dict()
            stage1 = {k: v for k, v in state.items() if (k.startswith("backbone.") or k.startswith("task.head."))}
            missing = [k for k in own if (k.startswith("backbone.") or k.startswith("task.head.")) and k not in stage1]
            wrong = [k for k, v in stage1.items() if k not in own or own[k].shape != v.shape]
            if missing or wrong:
                raise ValueError(f"task.refine.stage1_ckpt={self.stage1_ckpt}: its backbone / head do not fit this "
                                 f"model (missing {missing[:3]}, mismatched {wrong[:3]})")
            module.load_state_dict(stage1, strict=False)
        if not self.train_stage1:
            for part in (module.backbone, self.head):
                part.requires_grad_(False)
                for layer in part.modules():
                    if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                        layer.momentum = 0.0  # train mode may not move stage 1's statistics

    # ------------------------------------------------------------------ training
    def loss(self, outputs: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        stage1 = super().loss(outputs, batch) if self.train_stage1 else outputs.sum() * 0.0
        truth, visible = batch["keypoints_orig"].float(), batch["visible_orig"] > 0
        # validation draws the same patches every epoch: val/loss compares checkpoints, not random draws
        generator = None if self.training else torch.Generator(device=truth.device).manual_seed(0)
        landmarks = self._training_landmarks(visible, generator)  # [B, M]
        truth = torch.gather(truth, 1, landmarks[..., None].expand(-1, -1, 2))
        visible = torch.gather(visible, 1, landmarks)
        centres = truth + torch.randn(truth.shape, generator=generator, device=truth.device) * self.jitter_px
        patches, origin = self._patches(batch, centres)  # [B, M, 3, P, P], origin in reduced px
        target = self._to_reduced(truth, batch) - origin  # the truth in patch px
        # A sample flipped by the augmentation has its landmarks relabelled by the flip pairs (landmark i is
        # what becomes i in the mirror image): its patches, cut from the unflipped original, are mirrored too.
        flipped = torch.linalg.det(batch["matrix"].float()[:, :2, :2]) < 0
        if bool(flipped.any()):
            patches = torch.where(flipped[:, None, None, None, None], patches.flip(-1), patches)
            mirrored = torch.stack([(self.patch_size - 1) - target[..., 0], target[..., 1]], dim=-1)
            target = torch.where(flipped[:, None, None], mirrored, target)
        maps = self.refiner(patches.flatten(0, 1), landmarks.flatten())
        heatmaps, weights = self.refiner.codec.encode(target.flatten(0, 1)[:, None], visible.flatten()[:, None].float(),
                                                      heatmap_size=tuple(maps.shape[-2:]), stride=self.refiner.stride)
        stage2 = self.refiner.loss_fn(maps, heatmaps.to(maps.dtype), weights.to(maps.dtype))
        return self.stage1_weight * stage1 + stage2

    def _training_landmarks(self, visible: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``[B, M]`` landmark indices per image: ``train_patches`` random visible ones (all when null)."""
        b, k = visible.shape
        m = k if self.train_patches is None else min(int(self.train_patches), k)
        # random order, visible first: the invisible ones are only taken when too few are visible
        score = torch.rand(b, k, generator=generator, device=visible.device) + visible.float()
        return score.topk(m, dim=1).indices

    # ------------------------------------------------------------------ patches
    def _to_reduced(self, points: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        """Original px -> px of ``batch['original']`` (reduced by ``original_scale``; pixel centres kept)."""
        s = batch["original_scale"].float()[:, None, None]
        return (points + 0.5) * s - 0.5

    def _patches(self, batch: Mapping[str, Tensor], centres: Tensor) -> tuple[Tensor, Tensor]:
        """Patches around ``centres [B, M, 2]`` (original px) and each patch's pixel (0, 0) in reduced px."""
        if "original" not in batch:
            raise RuntimeError("coarse-to-fine refinement needs the original images in the batch: set "
                               "data.refine_scale (refine=native sets it)")
        aligned = aligned_centres(self._to_reduced(centres, batch), self.patch_size)
        patches = crop_patches(self.refiner.normalise(batch["original"]), aligned, self.patch_size)
        return patches, aligned - (self.patch_size - 1) / 2

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def predict(self, outputs: Tensor, batch: Mapping[str, Tensor],
                flipped_outputs: Tensor | None = None) -> dict[str, Tensor]:
        """Stage 1's keypoints, then each refined in its patch: ``keypoints`` (refined, original px),
        ``keypoints_coarse`` (stage 1), ``scores`` / ``spread`` of the refined heatmaps."""
        preds = super().predict(outputs, batch, flipped_outputs=flipped_outputs)
        coarse = preds["keypoints"]
        b, k, _ = coarse.shape
        patches, origin = self._patches(batch, coarse)
        landmark = torch.arange(k, device=coarse.device).repeat(b)
        maps = self.refiner(patches.flatten(0, 1), landmark).float()  # [B * K, 1, h, w]
        points, scores = self.refiner.codec.decode(maps, stride=self.refiner.stride)  # [B * K, 1, 2] patch px
        s = batch["original_scale"].float()[:, None, None]
        refined = (points.reshape(b, k, 2) + origin + 0.5) / s - 0.5
        preds.update(keypoints=refined, keypoints_coarse=coarse, scores=scores.reshape(b, k),
                     keypoints_input=apply_affine(refined, batch["matrix"].float()))
        spread = self.refiner.codec.spread(maps, stride=self.refiner.stride)
        if spread is None:
            preds.pop("spread", None)  # stage 1's would describe the coarse points, not the refined ones
        else:
            preds["spread"] = spread.reshape(b, k) / s[..., 0]
        return preds

    def sample_results(self, preds: Mapping[str, Tensor], batch: Mapping[str, Any]) -> list[dict[str, Any]]:
        samples = super().sample_results(preds, batch)
        coarse = preds["keypoints_coarse"].detach().double().cpu().numpy()
        for i, sample in enumerate(samples):
            sample["keypoints_coarse"] = coarse[i]
        return samples


def jitter_from(value: Any, stage1_ckpt: str | None) -> float:
    """``task.refine.jitter_px``: a number of original px, or ``auto``: the best val/mre of the run that wrote
    ``stage1_ckpt`` (its ``results.json``, two folders up), i.e. the error the refiner will have to correct."""
    if value != "auto":
        jitter = float(value)
        if not (math.isfinite(jitter) and jitter >= 0):
            raise ValueError(f"task.refine.jitter_px={value!r}: expected a number of pixels >= 0 or 'auto'")
        return jitter
    if not stage1_ckpt:
        raise ValueError("task.refine.jitter_px=auto needs task.refine.stage1_ckpt (its run's best val/mre)")
    record = Path(stage1_ckpt).resolve().parent.parent / "results.json"
    try:
        best = json.loads(record.read_text())["best"]["val/mre"]["value"]
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"task.refine.jitter_px=auto: no best val/mre in {record} ({err}); give a number") from err
    return float(best)
