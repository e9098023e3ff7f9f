"""Does this CPU's bf16 autocast give finite outputs for hrexp's HRNet? The check behind the fp32 default.

    .venv/bin/python scripts/bf16_check.py            # the cases below, each in a fresh process (~1 min)
    .venv/bin/python scripts/bf16_check.py --smoke    # two cases

Each case builds a scratch HRNet (``hrexp.models.hrnet``, seed 0), runs one forward pass in training mode and one
in eval mode under ``torch.autocast("cpu", bfloat16)`` on random input and reports how many of the four branch
outputs are finite in each. A fresh process
per case, because the failures seen with torch 2.14.1 came from the first call of a shape (oneDNN creates its
kernels then): HRNet-W32 at 64x32 returned NaN in channels_last at batch 2, 3 and 4, and the same input run
after a batch-1 call of the same shape did not. fp32 never did. Writes ``docs/results/bf16_check.json`` and
``.table.md`` (command, commit, machine, date).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from timed_runs import RESULTS, ROOT, write_results

# (height, width, batch, HRNet width, layout, autocast dtype): tiny inputs (a 4x2 or 2x1 px stride-32 map) and
# the sizes hrexp's recipes use
CASES = [(64, 32, b, 32, layout, "bf16") for layout in ("channels_last", "NCHW") for b in (1, 2, 3, 4)] + [
    (64, 32, 4, 18, "channels_last", "bf16"), (64, 32, 4, 32, "channels_last", "fp32"),
    (128, 64, 2, 32, "channels_last", "bf16"), (256, 192, 4, 32, "channels_last", "bf16"),
    (384, 320, 4, 18, "channels_last", "bf16")]
SMOKE = [(64, 32, 1, 18, "NCHW", "bf16"), (64, 32, 1, 18, "NCHW", "fp32")]

WORKER = """
import sys, torch
from hrexp.models.hrnet import HighResolutionNet
h, w, batch, width = map(int, sys.argv[1:5]); layout, dtype = sys.argv[5], sys.argv[6]
torch.manual_seed(0)
net = HighResolutionNet(width=width).train()  # conf/model/hrnet_w<width>.yaml: the constructor defaults
x = torch.randn(batch, 3, h, w)
if layout == "channels_last":
    net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
    train = net(x)
    net.eval()
    with torch.no_grad():
        evaluated = net(x)
print(";".join(",".join(str(bool(torch.isfinite(f).all())) for f in feats) for feats in (train, evaluated)))
"""


def check(case: tuple) -> dict:
    h, w, batch, width, layout, dtype = case
    proc = subprocess.run([sys.executable, "-c", WORKER, *map(str, case)], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"case {case} failed:\n{proc.stderr[-2000:]}")
    train, evaluated = (part.split(",") for part in proc.stdout.strip().splitlines()[-1].split(";"))
    return {"input": f"{h}x{w}", "batch": batch, "model": f"hrnet_w{width}", "layout": layout, "autocast": dtype,
            "finite_train": f"{train.count('True')}/{len(train)}", "finite_eval": f"{evaluated.count('True')}/{len(evaluated)}",
            "finite": all(f == "True" for f in [*train, *evaluated])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="two cases (checks the script runs)")
    parser.add_argument("--results", type=Path, default=None, help="folder for bf16_check.json / .table.md")
    args = parser.parse_args(argv)
    rows = []
    for case in SMOKE if args.smoke else CASES:
        rows.append(check(case))
        print(rows[-1])
    notes = ["SMOKE RUN, not a result"] if args.smoke else [
        "a forward pass in training mode, then one in eval mode; first call of the shape in a fresh process, seed 0, random input"]
    write_results("bf16_check", "bf16 autocast on this CPU: finite HRNet outputs?", rows,
                  ("input", "batch", "model", "layout", "autocast", "finite_train", "finite_eval", "finite"),
                  args.results or (ROOT / "logs" / "bf16_check" if args.smoke else RESULTS), notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
