"""Run the benchmark suite (``make bench``): each benchmark in its own process, one after the other.

    python -m benchmarks.run                      # all, results in benchmarks/results/
    python -m benchmarks.run overhead models      # some
    python -m benchmarks.run --smoke --out /tmp/b # a few steps each (what the tests run)

Options after the names go to every benchmark (``--device``, ``--threads``, ``--out``, ``--smoke``).
"""

from __future__ import annotations

import subprocess
import sys
import time

from pathlib import Path

from benchmarks.common import RESULTS, ROOT

BENCHMARKS = ["overhead", "models", "data_pipeline", "heatmap_resolution", "throughput", "refine_cost"]
# The results files, in the index's order (models and heatmap_resolution write one per table or part, so
# each can be rerun alone).
RESULT_FILES = ["overhead", "models_scratch_timm", "models_latency", "models_scaling", "data_pipeline", "heatmap_resolution", "heatmap_resolution_accuracy",
                "throughput", "refine_cost"]


def main(argv: list[str]) -> int:
    names = [a for a in argv if not a.startswith("-") and a in BENCHMARKS]
    unknown = [a for a in argv if not a.startswith("-") and a not in BENCHMARKS and not _is_option_value(argv, a)]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; expected some of {BENCHMARKS}", file=sys.stderr)
        return 2
    options = [a for a in argv if a not in names]
    failed = []
    for name in names or BENCHMARKS:
        t0 = time.time()
        print(f"=== benchmarks.{name} {' '.join(options)}", flush=True)
        rc = subprocess.call([sys.executable, "-m", f"benchmarks.{name}", *options], cwd=ROOT)
        print(f"=== benchmarks.{name}: exit {rc} after {time.time() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    out = Path(options[options.index("--out") + 1]) if "--out" in options else RESULTS
    write_index(out)
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


HEADER = """# Benchmark results

Written by `python -m benchmarks.run` (`make bench`) from the per-benchmark files beside this one; each
section says its machine, date and command. Timings are medians; read the ratios, which were measured
side by side in one run (the machines are noisy). Targets from issue 14: framework overhead <= 1.02,
scratch / timm HRNet <= 1.0, the data pipeline faster than the model at the default settings, the
1/4-resolution heatmaps leaner than full-resolution ones at equal or better accuracy; from issue 27, a
refined (coarse-to-fine) training step at most 1.3x a stage-1 step.

**GPU: not yet measured.** No GPU was at hand when these were run. On a GPU run
`python -m benchmarks.run --device cuda` (all of them), or `python -m benchmarks.throughput --device
cuda` for the fast path alone (training images/s of HRNet-W32 pose at 256x192 and landmarks at
512x512, peak memory, model FLOP utilisation; fp32 against bf16-mixed, channels_last and
`trainer=gpu_fast`); until then there are no GPU numbers here, and none are estimated.
"""


def write_index(out: Path) -> Path:
    """``out/README.md``: the header and every ``<benchmark>-<device>.md`` in ``out``, in suite order."""
    parts = [HEADER]
    for name in RESULT_FILES:
        for path in sorted(out.glob(f"{name}-*.md")):
            parts.append(path.read_text())
    index = out / "README.md"
    index.write_text("\n".join(parts))
    return index


def _is_option_value(argv: list[str], arg: str) -> bool:
    i = argv.index(arg)
    return i > 0 and argv[i - 1].startswith("--") and argv[i - 1] not in ("--smoke",)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
