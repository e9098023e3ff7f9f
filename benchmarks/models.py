"""HRNet backbones and the heatmap model: speed and memory, hrexp's scratch HRNet against timm's.

Three tables, every number measured side by side in one run (the machine is noisy: read the
ratios more than the absolute times; times are medians over repeats):

1. Scratch vs timm HRNet: ``hrexp.models.hrnet.HighResolutionNet(width=W)`` against timm's
   ``hrnet_w{W}`` through ``TimmBackbone`` (raw branches, ``feature_location=""``: the same network),
   W18/W32/W48 at 256x192 and 512x512: forward (eval, no_grad), training step (forward, loss = sum
   over the 4 branches of mean(f**2), backward, AdamW) and its peak memory; the scratch model also
   in channels_last. The three are timed in one process, called in turn (A B C, C B A, ...), so that
   drift of the machine hits them alike; each one's peak memory comes from a process of its own.
   Each cell also checks that the two are the same network: timm's weights loaded into the scratch
   model (``load_timm_hrnet_state_dict``), both outputs on one input must agree in value
   (``torch.allclose``), not only in shape.
2. Inference latency of HRNet-W32 + ``HeatmapHead`` (``head(backbone(x))`` as hrexp's module does),
   batch 1 and 32: eager and channels_last (called alternately), and ``torch.compile`` (default
   mode; on CUDA always, on CPU only with ``--compile``).
3. Scaling of the W32 + HeatmapHead training step (MSE against random heatmaps, AdamW) with the
   input size (256..768 square, 40 landmarks) and the landmark count (17..200 at 256x256): the
   heatmaps the model outputs (K x h x w), step time, peak memory, and the time of backbone (fwd +
   bwd), head + loss (fwd + bwd) and optimizer
   from steps timed part by part (the head reads detached features, then the backbone's backward
   runs from their gradients: the same work as a step).

Peak memory is what the training steps need beyond the built model (activations, gradients, AdamW
state): on CUDA ``torch.cuda.max_memory_allocated`` minus the memory allocated before the steps; on
CPU each measurement runs in a fresh process (``common.in_fresh_process``): its peak RSS minus its
RSS right after building the model and optimizer.

    python -m benchmarks.models [--smoke] [--device cpu|cuda|auto] [--batch N] [--compile] [--rounds N]
                                [--tables scratch_timm latency scaling]

``--smoke`` runs tiny sizes on 1 torch thread unless ``--threads`` is given.
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from benchmarks import common
from benchmarks.common import Table, in_fresh_process, median, seconds_per_call, synchronize

NAME = "models"
SIZE_SWEEP_LANDMARKS = 40


class HeatmapModel(nn.Module):
    """Scratch HRNet + HeatmapHead, called as hrexp's module calls them: head(backbone(x))."""

    def __init__(self, num_outputs: int, width: int = 32) -> None:
        super().__init__()
        from hrexp.models.heads import HeatmapHead
        from hrexp.models.hrnet import HighResolutionNet

        self.backbone = HighResolutionNet(width=width, pretrained=False)
        self.head = HeatmapHead(self.backbone.feature_info, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


# --- workers: module level, so that in_fresh_process can spawn them ------------------------------

def _mem_mark(dev: torch.device) -> float:
    """After the model is built: CUDA memory allocated now (peak statistics reset), or the RSS."""
    if dev.type == "cuda":
        synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        return torch.cuda.memory_allocated(dev) / 2**20
    # The RSS now, not the high-water mark: building may have peaked above what the steps need.
    return common.current_rss_mb()


def _mem_peak(dev: torch.device, mark: float) -> dict:
    if dev.type == "cuda":
        return {"peak_mb": torch.cuda.max_memory_allocated(dev) / 2**20 - mark}
    return {"rss_after_build_mb": mark, "peak_rss_mb": common.rss_mb()}


def memory_worker(kind: str, width: int, size: tuple[int, int], batch: int, channels_last: bool,
                  steps: int, device: str, threads: int | None = None) -> dict:
    """Table 1, one (model, layout, size) alone in its process: the training steps' peak memory and the
    output shapes."""
    common.startup(threads)  # in a fresh process: offline hub and thread count, before timm
    dev = torch.device(device)
    model = _backbone(kind, width, dev, channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, 3, *size, device=dev).contiguous(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    mark = _mem_mark(dev)
    for _ in range(steps):  # the first allocates AdamW's state; the peak is reached by the second
        opt.zero_grad(set_to_none=True)
        outputs = model(x)
        sum(f.pow(2).mean() for f in outputs).backward()
        opt.step()
    synchronize(dev)
    return {**_mem_peak(dev, mark), "shapes": [list(f.shape) for f in outputs]}


def same_weights_outputs(width: int, size: tuple[int, int], device: str) -> dict:
    """Table 1's check that scratch and timm HRNet are the same network: timm's (random) weights loaded
    into the scratch model, both run on one input (training mode: batch statistics, so activations are
    O(1) whatever the running statistics; no_grad). ``allclose``: ``torch.allclose`` of every branch
    (rtol 1e-4, atol 1e-5 x the branch's largest value); ``rel_diff``: the largest ``|scratch - timm|``
    over the largest ``|timm|``, over the branches."""
    from hrexp.models.hrnet import load_timm_hrnet_state_dict

    dev = torch.device(device)
    timm_model = _backbone("timm", width, dev, False)
    scratch = _backbone("scratch", width, dev, False)
    load_timm_hrnet_state_dict(scratch, timm_model.model.state_dict())
    torch.manual_seed(1)
    x = torch.randn(2, 3, *size, device=dev)
    with torch.no_grad():
        ours, theirs = scratch(x), timm_model(x)
    if [o.shape for o in ours] != [t.shape for t in theirs]:
        return {"allclose": False, "rel_diff": float("inf")}
    close = all(torch.allclose(o, t, rtol=1e-4, atol=1e-5 * float(t.abs().max())) for o, t in zip(ours, theirs))
    diff = max(float((o - t).abs().max() / t.abs().max()) for o, t in zip(ours, theirs))
    return {"allclose": close, "rel_diff": diff}


def _backbone(kind: str, width: int, dev: torch.device, channels_last: bool) -> nn.Module:
    torch.manual_seed(0)
    if kind == "timm":
        from hrexp.models.timm_backbone import TimmBackbone

        model = TimmBackbone(model_name=f"hrnet_w{width}", pretrained=False, out_indices=[1, 2, 3, 4],
                             feature_location="")
    else:
        from hrexp.models.hrnet import HighResolutionNet

        model = HighResolutionNet(width=width, pretrained=False)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return model.to(dev, memory_format=fmt).train()


def timing_worker(variants: dict[str, tuple[str, bool]], width: int, size: tuple[int, int], batch: int,
                  warmup: int, repeats: int, device: str, threads: int | None = None) -> dict:
    """Table 1 times, one (width, size): every variant in this one process, called in turn (the order
    reversed each repeat), so that the machine's drift hits them all alike."""
    common.startup(threads)
    dev = torch.device(device)
    models, steps, forwards = {}, [], []
    for name, (kind, cl) in variants.items():
        model = _backbone(kind, width, dev, cl)
        fmt = torch.channels_last if cl else torch.contiguous_format
        x = torch.randn(batch, 3, *size, device=dev).contiguous(memory_format=fmt)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(model=model, x=x, opt=opt) -> None:
            opt.zero_grad(set_to_none=True)
            sum(f.pow(2).mean() for f in model(x)).backward()
            opt.step()

        def forward(model=model, x=x) -> None:
            with torch.no_grad():
                model(x)

        models[name] = model
        steps.append(step)
        forwards.append(forward)
    step_s = alternate(steps, dev, warmup, repeats)
    for model in models.values():
        model.eval()
    fwd_s = alternate(forwards, dev, warmup, repeats)
    return {name: {"step_s": step_s[i], "fwd_s": fwd_s[i]} for i, name in enumerate(variants)}


def scaling_worker(size: int, num_outputs: int, batch: int, warmup: int, repeats: int, device: str,
                   threads: int | None = None) -> dict:
    """Table 3, one (input size, landmarks): whole training steps, then steps timed part by part."""
    common.startup(threads)  # in a fresh process: offline hub and thread count, before timm
    dev = torch.device(device)
    torch.manual_seed(0)
    model = HeatmapModel(num_outputs).to(dev).train()
    out = -(-size // model.head.stride)  # features are ceil(H / stride)
    x = torch.randn(batch, 3, size, size, device=dev)
    target = torch.rand(batch, num_outputs, out, out, device=dev)
    mse = nn.functional.mse_loss
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    mark = _mem_mark(dev)
    shape = None

    def step() -> None:
        nonlocal shape
        opt.zero_grad(set_to_none=True)
        heatmaps = model(x)
        shape = list(heatmaps.shape[1:])
        mse(heatmaps, target).backward()
        opt.step()

    step_s = seconds_per_call(step, dev, warmup, repeats)
    result = _mem_peak(dev, mark)

    def clock() -> float:
        synchronize(dev)
        return time.perf_counter()

    parts: dict[str, list[float]] = {"backbone": [], "head": [], "optimizer": []}
    for _ in range(repeats):
        opt.zero_grad(set_to_none=True)
        t0 = clock()
        feats = model.backbone(x)
        t1 = clock()
        leaf = feats[0].detach().requires_grad_()
        mse(model.head([leaf, *(f.detach() for f in feats[1:])]), target).backward()
        t2 = clock()
        feats[0].backward(leaf.grad)
        t3 = clock()
        opt.step()
        t4 = clock()
        parts["backbone"].append(t1 - t0 + t3 - t2)
        parts["head"].append(t2 - t1)
        parts["optimizer"].append(t4 - t3)
    return {**result, "step_s": step_s, "heatmaps": shape, **{f"{part}_s": v for part, v in parts.items()}}


# --- the tables ------------------------------------------------------------------------------------

def _measure(fn, args, **kwargs) -> dict:
    """``fn`` in a fresh process on CPU (the only clean peak RSS); in this process on CUDA."""
    kwargs.update(device=str(args.device), threads=args.threads)
    if args.device.type != "cuda":
        return in_fresh_process(fn, **kwargs)
    result = fn(**kwargs)
    torch.cuda.empty_cache()
    return result


def _peak_mb(r: dict) -> float:
    return r["peak_mb"] if "peak_mb" in r else r["peak_rss_mb"] - r["rss_after_build_mb"]


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def _ms(runs: list[dict], key: str) -> float:
    return 1e3 * median([t for r in runs for t in r[key]])


def alternate(fns, device, warmup: int, repeats: int) -> list[list[float]]:
    """Seconds of each call of each fn, the fns called in turn (order reversed every repeat)."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for r in range(repeats):
        for i in (range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))):
            synchronize(device)
            t0 = time.perf_counter()
            fns[i]()
            synchronize(device)
            times[i].append(time.perf_counter() - t0)
    return times


def scratch_vs_timm(args, s: dict) -> Table:
    t = Table("Scratch HRNet vs timm HRNet",
              ["width", "input", "batch", "scratch layout", "scratch fwd ms", "timm fwd ms", "fwd ratio",
               "scratch step ms", "timm step ms", "step ratio", "scratch peak MB", "timm peak MB",
               "memory ratio", "same outputs (timm weights)", "output rel. diff"])
    variants = {"NCHW": ("scratch", False), "channels_last": ("scratch", True), "timm": ("timm", False)}
    ratios: dict[str, list[float]] = {"fwd": [], "step": [], "memory": [], "cl fwd": [], "cl step": []}
    shape_notes = []
    for width in s["widths"]:
        for size in s["sizes"]:
            same = same_weights_outputs(width, size, str(args.device))
            times = [_measure(timing_worker, args, variants=variants, width=width, size=size, batch=s["batch"],
                              warmup=s["warmup"], repeats=s["repeats"]) for _ in range(s["rounds"])]
            memory = {v: _measure(memory_worker, args, kind=kind, width=width, size=size, batch=s["batch"],
                                  channels_last=cl, steps=2) for v, (kind, cl) in variants.items()}
            m = {v: {"fwd": _ms([t[v] for t in times], "fwd_s"), "step": _ms([t[v] for t in times], "step_s"),
                     "mem": _peak_mb(memory[v])} for v in variants}
            tm = m["timm"]
            for layout in ("NCHW", "channels_last"):
                a = m[layout]
                t.add(f"W{width}", f"{size[0]}x{size[1]}", s["batch"], layout, a["fwd"], tm["fwd"],
                      a["fwd"] / tm["fwd"], a["step"], tm["step"], a["step"] / tm["step"], a["mem"],
                      tm["mem"], _ratio(a["mem"], tm["mem"]), same["allclose"], same["rel_diff"])
            ratios["fwd"].append(m["NCHW"]["fwd"] / tm["fwd"])
            ratios["step"].append(m["NCHW"]["step"] / tm["step"])
            ratios["memory"].append(_ratio(m["NCHW"]["mem"], tm["mem"]))
            ratios["cl fwd"].append(m["channels_last"]["fwd"] / m["NCHW"]["fwd"])
            ratios["cl step"].append(m["channels_last"]["step"] / m["NCHW"]["step"])
            scratch_shapes, timm_shapes = memory["NCHW"]["shapes"], memory["timm"]["shapes"]
            if scratch_shapes != timm_shapes:
                shape_notes.append(f"W{width} {size}: scratch {scratch_shapes} vs timm {timm_shapes}")
    cpu = args.device.type != "cuda"
    t.notes += [
        "ratio = scratch / timm (the project's target: <= 1.0); timm always NCHW; step = forward, "
        "sum of the 4 branches' mean(f**2), backward, AdamW",
        "peak MB = the training step's memory beyond the built model (activations, gradients, AdamW state): "
        + ("peak RSS of a fresh process per model and cell minus its RSS after building" if cpu
           else "torch.cuda.max_memory_allocated minus memory allocated before the steps"),
        f"times: the three models in one process, called in turn (order reversed each repeat): {s['warmup']} "
        f"warm-up + {s['repeats']} timed calls each, {s['rounds']} process(es) per cell; medians",
        "NCHW scratch / timm, median over cells: fwd x{:.3g}, step x{:.3g}, memory x{:.3g}".format(
            *(median(ratios[k]) for k in ("fwd", "step", "memory"))),
        "scratch channels_last / NCHW, median over cells: fwd x{:.3g}, step x{:.3g} (< 1: channels_last "
        "helps)".format(median(ratios["cl fwd"]), median(ratios["cl step"])),
        "output shapes: " + ("; ".join(shape_notes) or "scratch and timm identical in every cell"),
        "same outputs: timm's weights loaded into the scratch model, both on one batch of 2 (training-mode "
        "BatchNorm, no_grad): torch.allclose of every branch (rtol 1e-4, atol 1e-5 x its largest value); "
        "rel. diff = largest |scratch - timm| / largest |timm|",
    ]
    return t


def inference(args, s: dict) -> Table:
    dev = args.device
    t = Table("Inference latency, HRNet-W32 + heatmap head",
              ["input", "batch", "eager ms", "channels_last ms", "compile ms", "images/s (best)"])
    compiling = dev.type == "cuda" or args.compile
    compile_notes = []
    for (h, w), k in s["infer"]:
        torch.manual_seed(0)
        eager = HeatmapModel(k).to(dev).eval()
        cl = copy.deepcopy(eager).to(memory_format=torch.channels_last)
        for b in s["infer_batches"]:
            x = torch.randn(b, 3, h, w, device=dev)
            xcl = x.contiguous(memory_format=torch.channels_last)
            with torch.no_grad():
                te, tc = alternate([lambda: eager(x), lambda: cl(xcl)], dev, s["infer_warmup"],
                                   s["infer_repeats"])
                cells = [1e3 * median(te), 1e3 * median(tc)]
                if compiling:
                    try:
                        torch._dynamo.reset()
                        compiled = torch.compile(eager, dynamic=False)
                        t0 = time.perf_counter()
                        compiled(x)
                        synchronize(dev)
                        compile_notes.append(f"{h}x{w} b{b} {time.perf_counter() - t0:.0f}s")
                        cells.append(1e3 * median(seconds_per_call(lambda: compiled(x), dev, s["infer_warmup"],
                                                                   s["infer_repeats"])))
                    except Exception as exc:  # noqa: BLE001 -- a failed compile is a result, not a crash
                        compile_notes.append(f"{h}x{w} b{b} failed: {type(exc).__name__}: {str(exc)[:200]}")
            best = min(c for c in cells if isinstance(c, float))
            if len(cells) == 2:
                cells.append("not run (CPU: use --compile)" if not compiling else "failed (see notes)")
            t.add(f"{h}x{w}", b, *cells, 1e3 * b / best)
    t.notes += [
        f"eval, no_grad; outputs: {', '.join(f'{k} heatmaps at {h}x{w}' for (h, w), k in s['infer'])}; "
        f"{s['infer_warmup']} warm-up + {s['infer_repeats']} timed calls, eager and channels_last alternating",
        "compile: torch.compile(eager model, dynamic=False), default mode; first call (compile time): "
        + (", ".join(compile_notes) if compile_notes else "not run"),
    ]
    return t


def scaling(args, s: dict) -> Table:
    t = Table("Scaling, HRNet-W32 + heatmap head training step",
              ["sweep", "input", "landmarks", "batch", "heatmaps (K x h x w)", "step ms", "step x", "peak MB",
               "memory x", "backbone ms", "head+loss ms", "optimizer ms", "backbone %", "head+loss %"])
    cache: dict[tuple[int, int], dict] = {}
    sweeps = {"input size": [(n, SIZE_SWEEP_LANDMARKS) for n in s["scale_sizes"]],
              "landmarks": [(s["k_size"], k) for k in s["scale_k"]]}
    for sweep, configs in sweeps.items():
        rows = []
        for size, k in configs:
            if (size, k) not in cache:
                r = _measure(scaling_worker, args, size=size, num_outputs=k, batch=s["batch"],
                             warmup=s["warmup"], repeats=s["repeats"])
                cache[size, k] = {"step": _ms([r], "step_s"), "mem": _peak_mb(r),
                                  "heatmaps": " x ".join(str(v) for v in r["heatmaps"]),
                                  **{p: _ms([r], f"{p}_s") for p in ("backbone", "head", "optimizer")}}
            rows.append(c := cache[size, k])
            parts = c["backbone"] + c["head"] + c["optimizer"]
            t.add(sweep, f"{size}x{size}", k, s["batch"], c["heatmaps"], c["step"], c["step"] / rows[0]["step"],
                  c["mem"], _ratio(c["mem"], rows[0]["mem"]), c["backbone"], c["head"], c["optimizer"],
                  100 * c["backbone"] / parts, 100 * c["head"] / parts)
        (n0, k0), (n1, k1) = configs[0], configs[-1]
        span = (f"{n0} -> {n1} (pixels x{(n1 / n0) ** 2:.3g})" if sweep == "input size"
                else f"{k0} -> {k1} (x{k1 / k0:.3g})")
        g = {key: _ratio(rows[-1][key], rows[0][key]) for key in ("step", "mem", "backbone", "head", "optimizer")}
        t.notes.append(f"{sweep} {span}: step time x{g['step']:.3g}, memory x{g['mem']:.3g}; backbone "
                       f"x{g['backbone']:.3g}, head+loss x{g['head']:.3g}, optimizer x{g['optimizer']:.3g}: "
                       f"fastest growing: {max(('backbone', 'head', 'optimizer'), key=g.get)}")
    t.notes += [
        "step: forward, MSE against random heatmaps at the output size (1/4), backward, AdamW; step x and "
        "memory x relative to the sweep's first row; a configuration in both sweeps is measured once",
        "parts from separately timed steps (device synchronised between parts): backbone = forward + "
        "backward, head+loss = head forward, loss, their backward; optimizer = AdamW step",
        "peak MB as in the first table (beyond the built model, "
        + ("fresh process per row, peak RSS)" if args.device.type != "cuda" else "max_memory_allocated)"),
    ]
    return t


def settings(args) -> dict:
    cuda = args.device.type == "cuda"
    if args.smoke:
        s = dict(widths=[18], sizes=[(64, 64)], batch=1, rounds=1, warmup=1, repeats=2,
                 infer=[((64, 64), 17)], infer_batches=[1, 2], infer_warmup=1, infer_repeats=2,
                 scale_sizes=[64, 96], scale_k=[17, 40], k_size=64)
    else:
        s = dict(widths=[18, 32, 48], sizes=[(256, 192), (512, 512)], batch=32 if cuda else 2,
                 rounds=1, warmup=3 if cuda else 1, repeats=10 if cuda else 5,
                 infer=[((256, 192), 17), ((512, 512), 40)], infer_batches=[1, 32],
                 infer_warmup=5 if cuda else 1, infer_repeats=20 if cuda else 3,
                 scale_sizes=[256, 384, 512, 768], scale_k=[17, 40, 68, 200], k_size=256)
    if args.batch:
        s["batch"] = args.batch
    if args.rounds:
        s["rounds"] = args.rounds
    return s


def run(args) -> dict[str, list[Table]]:
    """Each table to its own results file (``models_<table>-<device>``), so each can be rerun alone."""
    if args.smoke and args.threads is None:
        # A smoke run checks that the benchmark works, often beside other jobs: with every core's
        # OpenMP thread contended, a step can take 100x longer. The workers get the same count.
        args.threads = 1
        torch.set_num_threads(1)
    s = settings(args)
    return {f"{NAME}_{name}": [TABLES[name](args, s)] for name in args.tables}


TABLES = {"scratch_timm": scratch_vs_timm, "latency": inference, "scaling": scaling}


def build_parser():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=None,
                   help="training batch of the first and third tables (default 2 on CPU, 32 on CUDA, 1 in smoke)")
    p.add_argument("--rounds", type=int, default=None,
                   help="timing processes per cell of the first table (default 1)")
    p.add_argument("--tables", nargs="+", choices=list(TABLES), default=list(TABLES), help="which tables (default all)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile on CPU (minutes of compiling)")
    return p


if __name__ == "__main__":
    common.main(NAME, run, build_parser())
