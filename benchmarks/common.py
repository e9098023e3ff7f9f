"""What every benchmark shares: start-up, timing, peak memory in a clean process, tables and results files.

Each benchmark module has ``run(args) -> list[Table]`` and an argument parser built by :func:`parser`;
``benchmarks/run.py`` runs them and writes ``benchmarks/results/<name>-<device>.md`` (and ``.json``).
``--smoke`` runs each with a few steps at tiny sizes (what the tests do, so the suite cannot rot).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def startup(threads: int | None = None) -> None:
    """hrexp's start-up (offline hub, resolvers) and the thread count, before timm is imported."""
    from hrexp.startup import startup as hrexp_startup

    hrexp_startup(ROOT)
    import torch

    if threads:
        torch.set_num_threads(threads)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--smoke", action="store_true", help="a few steps at tiny sizes: checks the benchmark runs")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the results files")
    return p


def pick_device(name: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: no CUDA device here")
    return torch.device(name)


def synchronize(device) -> None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize()


def seconds_per_call(fn: Callable[[], Any], device, warmup: int, repeats: int) -> list[float]:
    """Wall seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` calls (device synchronised)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def rss_mb() -> float:
    """Peak resident memory of this process so far, MiB.

    Linux's ``VmHWM``: the high-water mark of this process's own memory since it started (or since its
    exec). Not ``getrusage``'s ``ru_maxrss``, which Linux carries across fork and exec: a child spawned by
    a parent holding 3 GB reported at least those 3 GB as its own peak. Elsewhere ``ru_maxrss`` (KiB).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """Resident memory of this process now, MiB (Linux /proc; the high-water mark where that is absent)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return rss_mb()


def _child(fn: Callable[..., dict], kwargs: dict, queue) -> None:
    try:
        baseline = rss_mb()
        result = fn(**kwargs)
        result.setdefault("peak_rss_mb", rss_mb())
        result["baseline_rss_mb"] = baseline
        queue.put(("ok", result))
    except BaseException as exc:  # noqa: BLE001 -- reported to the parent, which raises
        import traceback

        queue.put(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


def in_fresh_process(fn: Callable[..., dict], **kwargs) -> dict:
    """Run ``fn(**kwargs)`` in a new process (spawn) and return its dict, plus ``peak_rss_mb`` of that
    process: on a CPU the only honest peak-memory figure, as nothing else of this run shares it.
    ``fn`` must be importable (a module-level function)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, kwargs, queue))
    proc.start()
    status, payload = queue.get()
    proc.join()
    if status != "ok":
        raise RuntimeError(f"{fn.__module__}.{fn.__name__}({kwargs}) failed:\n{payload}")
    return payload


@dataclass
class Table:
    """One printed table: a title, column names, rows of cells (numbers, text, or lists of them), notes under
    it. ``formats`` gives a column's number format (e.g. ``".3f"``) where the default 3 significant digits
    are too few; the results' JSON keeps every value at full precision."""

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    formats: dict[str, str] = field(default_factory=dict)

    def add(self, *cells: Any) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{self.title}: {len(cells)} cells for {len(self.columns)} columns")
        self.rows.append(list(cells))

    @staticmethod
    def cell(value: Any, fmt: str | None = None) -> str:
        if isinstance(value, (list, tuple)):
            return ", ".join(Table.cell(v, fmt) for v in value)
        if isinstance(value, float):
            if fmt:
                return format(value, fmt)
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    def cells(self, row: list[Any]) -> list[str]:
        return [self.cell(c, self.formats.get(name)) for name, c in zip(self.columns, row)]

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |",
                 "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(self.cells(row)) + " |" for row in self.rows]
        lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def print(self) -> None:
        from rich.console import Console
        from rich.table import Table as RichTable

        table = RichTable(title=self.title)
        for c in self.columns:
            table.add_column(c)
        for row in self.rows:
            table.add_row(*self.cells(row))
        console = Console(width=max(120, sum(len(c) + 3 for c in self.columns)))
        console.print(table)
        for n in self.notes:
            console.print(f"  {n}")


def machine(device) -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    if getattr(device, "type", "") == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                        text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def _command() -> list[str]:
    """This process's command line as typed (``python -m benchmarks.<name> ...``)."""
    script = Path(sys.argv[0])
    if script.suffix == ".py" and script.parent.name == "benchmarks":
        return ["python", "-m", f"benchmarks.{script.stem}", *sys.argv[1:]]
    return ["python", *sys.argv]


def write_results(name: str, tables: list[Table], device, out: Path, command: list[str] | None = None) -> Path:
    """``<out>/<name>-<device>.md`` (tables, machine, date, command) and the same as ``.json``."""
    out.mkdir(parents=True, exist_ok=True)
    meta = {"benchmark": name, "date": dt.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(command if command is not None else _command()),
            "machine": machine(device)}
    stem = f"{name}-{getattr(device, 'type', device)}"
    header = [f"## {name} ({meta['machine']['device']})", "",
              f"- date: {meta['date']}", f"- command: `{meta['command']}`",
              "- machine: " + ", ".join(f"{k} {v}" for k, v in meta["machine"].items()), ""]
    (out / f"{stem}.md").write_text("\n".join(header) + "\n" + "\n".join(t.markdown() for t in tables))
    (out / f"{stem}.json").write_text(json.dumps({**meta, "tables": [asdict(t) for t in tables]}, indent=1))
    return out / f"{stem}.md"


def main(name: str, run: Callable[[argparse.Namespace], list[Table] | dict[str, list[Table]]],
         p: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    """Parse, run, print and write one benchmark (each module's ``__main__``). ``run`` returns its tables
    (written as ``<name>-<device>``) or, for a benchmark whose parts are rerun alone, a mapping from
    results-file name to tables."""
    args = p.parse_args(argv)
    startup(args.threads)
    args.device = pick_device(args.device)
    results = run(args)
    for file_name, tables in (results.items() if isinstance(results, dict) else [(name, results)]):
        for t in tables:
            t.print()
        print(f"written: {write_results(file_name, tables, args.device, args.out)}")
