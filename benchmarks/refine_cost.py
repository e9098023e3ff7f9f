"""Refinement cost: a coarse-to-fine training step (``refine=native``) against a stage-1 step, at the
default job's settings (``train.py model=hrnet_w32 task=landmarks``: synthetic spines, 256x128 input,
batch 8, 40 landmarks), and a validation batch of each (which refines every landmark of every image).

Issue 27's target: a refined step costs at most 1.3x a stage-1 step. Rows:

* ``stage 1``: the default job's step (the baseline of every ratio);
* ``refine, stage 1 frozen``: the refiner's own run (``task.refine.train_stage1=false``, the two-run recipe of
  the spine and ceph experiments): no stage-1 forward, only patches;
* ``refine, joint``: stage 1 and the refiner trained together (``refine=native`` alone);
* the same two with ``--compare`` settings (by default the refiner before issue 27: a full HRNet-W18 on
  16 patches of 128 px per image), to show what the defaults bought.

All variants are built in one process and timed in turn, the order reversed every round (these machines
are noisy: the ratios are what to read). Validation: ``task.predict`` on one validation batch, no grad.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks.common import Table, main, median, parser

NAME = "refine_cost"
DEFAULT_JOB = ["model=hrnet_w32", "task=landmarks"]
# the refiner of the spine / ceph experiments before issue 27 cut its cost
PREVIOUS = ["task.refine.backbone.stage1_blocks=4", "task.refine.backbone.num_modules=[1,4,3]",
            "task.refine.backbone.num_blocks=[4,4,4]", "task.refine.patch_size=128", "task.refine.train_patches=16"]


def build_parser():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=None, help="timing rounds (default 6; smoke 2)")
    p.add_argument("--steps", type=int, default=None, help="steps per variant per round (default 2; smoke 1)")
    p.add_argument("--compare", nargs="*", default=PREVIOUS,
                   help="overrides of the comparison refiner rows (default: the refiner before issue 27); "
                        "give none to leave those rows out")
    p.add_argument("overrides", nargs="*", default=[], help="extra overrides for every variant (e.g. data.batch_size=4)")
    return p


def _variant(overrides: list[str], out: Path, device):
    """The module, one training batch and one validation batch (on ``device``), and an optimizer."""
    import torch
    from hydra.utils import instantiate

    from benchmarks.overhead import compose
    from hrexp.jobs.train_run import build_run

    cfg = compose(overrides, out)
    datamodule, module, *_ = build_run(cfg)
    datamodule.setup("fit")
    moved = [{k: v.to(device) if hasattr(v, "to") else v for k, v in next(iter(loader)).items()}
             for loader in (datamodule.train_dataloader(), datamodule.val_dataloader())]
    module = module.to(device)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = instantiate(cfg.optimizer)(params)
    torch.manual_seed(0)
    return module, moved[0], moved[1], optimizer


def _train_step(module, batch, optimizer):
    # as HRExpModule.training_step: a task that trains on patches alone skips the stage-1 forward
    module.train()
    outputs = module(batch["image"]) if module.task.trains_on_outputs else None
    loss = module.task.loss(outputs, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _val_batch(module, batch):
    import torch

    module.eval()
    with torch.no_grad():
        module.task.predict(module(batch["image"]), batch)


def run(args) -> list[Table]:
    import torch

    from benchmarks.models import alternate

    smoke = args.smoke
    rounds, steps = args.rounds or (2 if smoke else 6), args.steps or (1 if smoke else 2)
    common = DEFAULT_JOB + list(args.overrides)
    if smoke:
        common += ["model=hrnet_w18", "data.num_train=8", "data.num_test=2", "data.original_size=[128,64]",
                   "data.image_size=[64,32]", "data.batch_size=2", "data.num_workers=0"]
    refined = ["refine=native"] + (["task.refine.patch_size=32"] if smoke else [])
    compare = list(args.compare or [])
    if smoke and compare:
        compare = [o for o in compare if not o.startswith("task.refine.patch_size=")] + ["task.refine.patch_size=48"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        stage1 = _variant(common, tmp / "stage1", args.device)
        ckpt = tmp / "stage1.ckpt"
        torch.save({"state_dict": stage1[0].state_dict()}, ckpt)
        frozen = [f"task.refine.stage1_ckpt={ckpt}", "task.refine.train_stage1=false"]
        variants = {"stage 1": stage1,
                    "refine, stage 1 frozen": _variant(common + refined + frozen, tmp / "frozen", args.device),
                    "refine, joint": _variant(common + refined, tmp / "joint", args.device)}
        if compare:
            variants["compare: refine, stage 1 frozen"] = _variant(common + refined + frozen + compare, tmp / "cf",
                                                                   args.device)
            variants["compare: refine, joint"] = _variant(common + refined + compare, tmp / "cj", args.device)

        def repeat(fn, *a):
            return lambda: [fn(*a) for _ in range(steps)]

        train = alternate([repeat(_train_step, m, b, o) for m, b, _, o in variants.values()], args.device, 1, rounds)
        val = alternate([repeat(_val_batch, m, vb) for m, _, vb, _ in variants.values()], args.device, 1,
                        max(rounds // 2, 1))
    base_train, base_val = median(train[0]) / steps, median(val[0]) / steps
    first = next(iter(variants.values()))[1]
    table = Table(f"Refinement cost at the default job's settings ({args.device.type}, batch "
                  f"{first['image'].shape[0]}, input {tuple(first['image'].shape[-2:])})",
                  ["variant", "train step s", "step ratio", "val batch s", "val ratio", "patches / step",
                   "patch px", "refiner params M"])
    for (name, (module, batch, _, _)), t, v in zip(variants.items(), train, val):
        task = module.task
        refiner = getattr(task, "refiner", None)
        if refiner is None:
            patches, size, params = 0, "", 0.0
        else:
            per_image = task.num_keypoints if task.train_patches is None else min(int(task.train_patches),
                                                                                 task.num_keypoints)
            patches, size = per_image * batch["image"].shape[0], task.patch_size
            params = sum(p.numel() for p in refiner.parameters()) / 1e6
        table.add(name, median(t) / steps, median(t) / steps / base_train, median(v) / steps,
                  median(v) / steps / base_val, patches, size, params)
    table.notes += [
        f"median over {rounds} rounds of {steps} step(s) each (validation: {max(rounds // 2, 1)} rounds), the "
        "variants timed in turn, the order reversed every round; ratios: variant / stage 1",
        "target (issue 27): a refined training step <= 1.3x a stage-1 step",
        "compare rows: " + (" ".join(compare) if compare else "none"),
        "validation refines every landmark of every image (patches = landmarks x batch)"]
    return [table]


if __name__ == "__main__":
    main(NAME, run, build_parser())
