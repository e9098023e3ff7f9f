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
from hrexp.metrics.direction import output_mode
from hrexp.metrics.landmark_error import LandmarkError
from hrexp.refine.conditioning import check_channels, gaussian_maps, nearest_others
from hrexp.refine.gate import GateData, RefinementGate, fit_gate
from hrexp.refine.patches import aligned_centres, crop_patches
from hrexp.refine.refiner import Refiner
from hrexp.tasks.base import STAGES
from hrexp.tasks.landmarks import LandmarkTask

# The stages' own errors are logged beside the headline (gated) ones: val/mre_coarse, val/mre_refined, ...
STAGE_SUFFIXES = ("coarse", "refined")


class CoarseToFineLandmarkTask(LandmarkTask):
    """:class:`LandmarkTask` plus a second stage on patches of the original image.

    Training: the loss is ``stage1_weight`` x stage 1's loss + the refiner's loss on patches centred on the
    ground truth moved by a random jitter (normal, ``jitter_px`` original px per axis: about stage 1's
    error, so the refiner learns to correct the errors it will see; clipped so that the truth stays inside
    the patch, a heatmap sigma from its edge: a patch without its landmark teaches nothing);
    ``train_patches`` landmarks per image (random, visible ones) keep the cost bounded. With stage 1 frozen
    (``train_stage1=false``) a training step does not run stage 1 at all (``trains_on_outputs``): its
    patches sit around the truth. Evaluation: patches around stage 1's predictions; the gate
    (:mod:`hrexp.refine.gate`) keeps each refined point or stage 1's, per landmark, by the distance moved and
    the refined peak. Every validation epoch refits it on that epoch's predictions (so the gated val error is
    never above stage 1's), and it is saved in the checkpoint with the weights. The metrics (``val/mre``...)
    score the gated points; ``..._coarse`` and ``..._refined`` score stage 1 and stage 2 alone, and
    ``refined_used`` is the share of landmarks the gate passed.

    Args:
        refine: ``backbone`` (module), ``head`` (partial), ``codec``, ``loss``, ``patch_size`` (px of the
            reduced original), ``scale`` (= ``data.refine_scale``), ``jitter_px`` (per-axis sigma in original
            px, or ``auto``: the sigma whose radial mean is the best val/mre of ``stage1_ckpt``'s run),
            ``train_patches`` (per image; null: all), ``gate`` (false: no gate, stage 2 everywhere),
            ``condition`` (extra input channels, :mod:`hrexp.refine.conditioning`: ``centre``, ``neighbours``;
            the refiner's backbone takes 3 + that many channels), ``num_neighbours``, ``neighbour_sigma``
            (patch px),
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
        self.offsets = str(options.get("offsets", "normal"))
        if self.offsets not in OFFSETS:
            raise ValueError(f"task.refine.offsets={self.offsets!r}: expected one of {list(OFFSETS)}")
        # stage 1's errors (point - truth, original px) on the last validation, and which were seen: what
        # offsets=empirical draws from (not saved: a resumed run draws normal offsets until its next validation)
        self.register_buffer("residuals", torch.zeros(0, self.num_keypoints, 2), persistent=False)
        self.register_buffer("residual_seen", torch.zeros(0, self.num_keypoints, dtype=torch.bool), persistent=False)
        if self.patch_size < 8 or self.patch_size % int(self.refiner.stride):
            raise ValueError(f"task.refine.patch_size={self.patch_size}: expected >= 8 and a multiple of the refiner's "
                             f"stride {int(self.refiner.stride)}")
        if not self.train_stage1 and not self.stage1_ckpt:
            raise ValueError("task.refine.train_stage1=false needs task.refine.stage1_ckpt (a trained first stage)")
        self.max_offset_px = self._max_offset_px(options["codec"])
        self.condition = check_channels(options.get("condition") or [])
        self.num_neighbours = int(options.get("num_neighbours", 8))
        self.neighbour_sigma = float(options.get("neighbour_sigma", 4.0))
        # The centre prior's width, patch px: the jitter's, kept in the checkpoint (a rebuilt config has no
        # stage-1 run to read jitter_px=auto from).
        self.register_buffer("centre_sigma", torch.tensor(max(self.jitter_px * self.scale, 1.0)))
        first_conv = next((m for m in self.refiner.backbone.modules() if isinstance(m, nn.Conv2d)), None)
        channels = 3 + len(self.condition)
        if first_conv is not None and first_conv.in_channels != channels:
            raise ValueError(f"task.refine.condition={self.condition} gives the refiner {channels} input channels (3 "
                             f"image + {len(self.condition)}), but task.refine.backbone takes {first_conv.in_channels}: "
                             f"set task.refine.backbone.in_chans={channels}")
        self.gate = RefinementGate(self.num_keypoints)
        self.gated = bool(options.get("gate", True))  # false: never fitted, stage 2 everywhere (ablations)
        self.gate_data = GateData()
        self.stage_errors = nn.ModuleDict({f"{stage}_{which}": LandmarkError(self.num_keypoints, self.sdr_radii)
                                           for stage in STAGES for which in STAGE_SUFFIXES})

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # checkpoints written before the centre prior existed: its width as this config gives it
        state_dict.setdefault(prefix + "centre_sigma", self.centre_sigma.clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def trains_on_outputs(self) -> bool:  # type: ignore[override]
        """A frozen stage 1's outputs would only be multiplied by 0: its forward is skipped in training."""
        return self.train_stage1

    def _max_offset_px(self, codec: Any) -> float:
        """The largest jitter per axis, original px, that keeps the truth inside its training patch with a
        heatmap sigma (at least one stride) to spare from the edge, after the centre's rounding to a pixel."""
        margin = float(getattr(codec, "sigma", 1.0)) * self.refiner.stride
        half = (self.patch_size - 1) / 2 - max(margin, self.refiner.stride) - 0.5
        return max(half, 0.0) / self.scale

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
        every_truth, every_visible = batch["keypoints_orig"].float(), batch["visible_orig"] > 0
        stage1 = (super().loss(outputs, batch) if self.train_stage1 and outputs is not None
                  else every_truth.new_zeros(()))
        # validation draws the same patches every epoch: val/loss compares checkpoints, not random draws
        generator = None if self.training else torch.Generator(device=every_truth.device).manual_seed(0)
        # where a stage 1 would put every landmark: the truth moved by an error like its own
        guesses = every_truth + self._offsets(every_truth, generator).clamp(-self.max_offset_px, self.max_offset_px)
        landmarks = self._training_landmarks(every_visible, generator)  # [B, M]
        index = landmarks[..., None].expand(-1, -1, 2)
        truth, visible = torch.gather(every_truth, 1, index), torch.gather(every_visible, 1, landmarks)
        centres = torch.gather(guesses, 1, index)
        patches, origin = self._patches(batch, centres)  # [B, M, 3, P, P], origin in reduced px
        patches = self._conditioned(batch, patches, origin, centres, landmarks, guesses, every_visible)
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

    def _offsets(self, like: Tensor, generator: torch.Generator | None) -> Tensor:
        """``[B, K, 2]`` offsets (original px) of the training patches' centres from the truth: normal with a
        per-axis sigma ``jitter_px``, or (``offsets=empirical``, in training, once a validation has measured
        them) each landmark's own stage-1 errors of that validation drawn at random, plus a quarter of that
        normal noise (the shape of the real errors, not their 22 exact values)."""
        normal = torch.randn(like.shape, generator=generator, device=like.device) * self.jitter_px
        if self.offsets != "empirical" or not self.training or self.residuals.shape[0] == 0:
            return normal
        b, k, _ = like.shape
        seen = self.residual_seen.to(like.device)
        weights = seen.T.float() + (~seen.any(0))[:, None].float()  # a landmark never seen: any row (replaced below)
        pick = torch.multinomial(weights, b, replacement=True, generator=generator).T  # [B, K] rows of residuals
        drawn = self.residuals.to(like)[pick, torch.arange(k, device=like.device)]
        return torch.where(seen.any(0)[None, :, None], drawn + EMPIRICAL_NOISE * normal, normal)

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

    def _conditioned(self, batch: Mapping[str, Tensor], patches: Tensor, origin: Tensor, centres: Tensor,
                     landmarks: Tensor, everyone: Tensor, present: Tensor) -> Tensor:
        """``patches`` with the ``condition`` channels appended (``[B, M, 3 + C, P, P]``): drawn from the patches'
        own points ``centres [B, M, 2]`` and every landmark's point ``everyone [B, K, 2]`` (original px; stage
        1's, or the jittered truth in training), ``present [B, K]`` which of those are known."""
        if not self.condition:
            return patches
        b, m = landmarks.shape
        size = self.patch_size
        extra = []
        for name in self.condition:
            if name == "centre":
                own = (self._to_reduced(centres, batch) - origin)[:, :, None]  # [B, M, 1, 2] patch px
                maps = gaussian_maps(own.flatten(0, 1), size, float(self.centre_sigma))
            else:  # neighbours
                others = nearest_others(centres, landmarks, everyone, present, self.num_neighbours)  # [B, M, n, 2]
                s = batch["original_scale"].float()[:, None, None, None]
                others = (others + 0.5) * s - 0.5 - origin[:, :, None]
                maps = gaussian_maps(others.flatten(0, 1), size, self.neighbour_sigma)
            extra.append(maps.reshape(b, m, 1, size, size).to(patches.dtype))
        return torch.cat([patches, *extra], dim=2)

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
        every = torch.arange(k, device=coarse.device).expand(b, k)
        known = torch.ones_like(every, dtype=torch.bool)  # stage 1 puts every landmark somewhere
        patches = self._conditioned(batch, patches, origin, coarse, every, coarse, known)
        landmark = every.flatten()
        maps = self.refiner(patches.flatten(0, 1), landmark).float()  # [B * K, 1, h, w]
        points, scores = self.refiner.codec.decode(maps, stride=self.refiner.stride)  # [B * K, 1, 2] patch px
        s = batch["original_scale"].float()[:, None, None]
        refined = (points.reshape(b, k, 2) + origin + 0.5) / s - 0.5
        refined_scores = scores.reshape(b, k)
        gated, accepted = self.gate(coarse, refined, refined_scores)
        preds.update(keypoints=gated, keypoints_coarse=coarse, keypoints_refined=refined, refined_used=accepted,
                     scores_refined=refined_scores, scores=torch.where(accepted, refined_scores, preds["scores"]),
                     keypoints_input=apply_affine(gated, batch["matrix"].float()))
        covariance = self.refiner.codec.point_covariance(maps, stride=self.refiner.stride)
        coarse_covariance = preds.pop("covariance", None)
        if covariance is not None and (coarse_covariance is not None or bool(accepted.all())):
            # patch px^2 -> original px^2 (the patch is the original reduced by original_scale); each point's own stage's
            covariance = covariance.reshape(b, k, 2, 2) / (s[..., None] ** 2)
            preds["covariance"] = (covariance if coarse_covariance is None
                                   else torch.where(accepted[..., None, None], covariance, coarse_covariance))
        spread = self.refiner.codec.spread(maps, stride=self.refiner.stride)
        coarse_spread = preds.pop("spread", None)
        if spread is not None and (coarse_spread is not None or bool(accepted.all())):
            spread = spread.reshape(b, k) / s[..., 0]
            # each point's spread is its own stage's
            preds["spread"] = spread if coarse_spread is None else torch.where(accepted, spread, coarse_spread)
        return preds

    # ------------------------------------------------------------------ metrics: gated, and each stage alone
    def update_metrics(self, stage: str, preds: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> None:
        if not (stage == "val" and self.gated):  # gated validation is scored at its end, with the refitted gate
            super().update_metrics(stage, preds, batch)
        truth, visible, spacing = batch["keypoints_orig"], batch["visible_orig"], batch["spacing"]
        for which in STAGE_SUFFIXES:
            self.stage_errors[f"{stage}_{which}"].update(preds[f"keypoints_{which}"], truth, visible, spacing)
        if stage == "val":  # the gate's data, and stage 1's errors that offsets=empirical draws from
            self.gate_data.update(preds["keypoints_coarse"], preds["keypoints_refined"], preds["scores_refined"],
                                  truth, visible > 0, spacing)

    def compute_metrics(self, stage: str) -> dict[str, Tensor]:
        """The gated metrics (after validation: with the gate refitted on this epoch's predictions), each
        stage's alone (``<stage>/mre_coarse``, ``<stage>/mre_refined``...) and ``<stage>/refined_used``."""
        data = None
        if stage == "val" and self.gate_data.update_count > 0:
            # every rank's predictions (cat across DDP ranks)
            device = self.gate.use.device
            data = {k: v.to(device) for k, v in GateData.shaped(self.gate_data.compute(), self.num_keypoints).items()}
            self.gate_data.reset()
            self.residuals, self.residual_seen = (data["coarse"] - data["truth"]).float(), data["visible"].clone()
        if data is not None and self.gated:
            self.gate.set(*fit_gate(data["coarse"], data["refined"], data["scores"], data["truth"], data["visible"]))
            gated, accepted = self.gate(data["coarse"], data["refined"], data["scores"])
            # the gated error of the whole (gathered) epoch with the refitted gate: computed here, not synced again
            metric = LandmarkError(self.num_keypoints, self.sdr_radii, sync_on_compute=False).to(device)
            metric.update(gated, data["truth"], data["visible"], data["spacing"])
            values = {f"{stage}/{name}": value for name, value in metric.compute().items() if self.is_defined(value)}
            seen = data["visible"]
            used = accepted[seen].double().mean() if bool(seen.any()) else None
        else:
            values = super().compute_metrics(stage)
            used = None
        for which in STAGE_SUFFIXES:
            errors = self.stage_errors[f"{stage}_{which}"]
            values.update({f"{stage}/{name}_{which}": value for name, value in errors.compute().items()
                           if self.is_defined(value)})
            errors.reset()
        if used is not None:
            values[f"{stage}/refined_used"] = used.float()
        return values

    def metric_mode(self, name: str) -> str | None:
        """A stage's own error (``val/mre_coarse``) goes the way of the gated one (``val/mre``)."""
        stage, _, key = name.partition("/")
        for which in STAGE_SUFFIXES:
            if key.endswith(f"_{which}") and stage in STAGES:
                return output_mode(self.metrics[stage], key[: -len(which) - 1])
        if key == "refined_used":
            return None
        return super().metric_mode(name)

    def sample_results(self, preds: Mapping[str, Tensor], batch: Mapping[str, Any]) -> list[dict[str, Any]]:
        samples = super().sample_results(preds, batch)
        coarse = preds["keypoints_coarse"].detach().double().cpu().numpy()
        refined = preds["keypoints_refined"].detach().double().cpu().numpy()
        used = preds["refined_used"].detach().cpu().numpy()
        for i, sample in enumerate(samples):
            sample.update(keypoints_coarse=coarse[i], keypoints_refined=refined[i], refined_used=used[i])
        return samples


OFFSETS = ("normal", "empirical")
# offsets=empirical: the normal noise added to each drawn stage-1 error, as a share of jitter_px
EMPIRICAL_NOISE = 0.25

# The mean length of a 2-D isotropic normal offset with per-axis sigma 1 (Rayleigh mean, sqrt(pi / 2)).
RAYLEIGH_MEAN = math.sqrt(math.pi / 2)


def jitter_from(value: Any, stage1_ckpt: str | None) -> float:
    """``task.refine.jitter_px``: a per-axis sigma in original px, or ``auto``: the sigma whose radial mean is
    the best val/mre of the run that wrote ``stage1_ckpt`` (its ``results.json``, two folders up), i.e. the
    error the refiner will have to correct: val/mre / sqrt(pi / 2), not val/mre (which would train on
    offsets 1.25x the real ones)."""
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
    return float(best) / RAYLEIGH_MEAN
