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

from benchmarks.common import ROOT

BENCHMARKS = ["overhead", "models", "data_pipeline", "heatmap_resolution"]


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
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


def _is_option_value(argv: list[str], arg: str) -> bool:
    i = argv.index(arg)
    return i > 0 and argv[i - 1].startswith("--") and argv[i - 1] not in ("--smoke",)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
