"""Run a function on two CPU ranks (gloo), as DistributedSampler + torchmetrics see them under DDP."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any, Callable

import torch


def _rank_entry(rank: int, world_size: int, port: int, worker: Callable, args: tuple, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        result = worker(rank, world_size, *args)
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        torch.distributed.destroy_process_group()


def run_on_two_ranks(worker: Callable[..., Any], args: tuple, out_dir: Path) -> list[Any]:
    """``worker(rank, world_size, *args)`` in two processes; returns their JSON-able results by rank.

    ``worker`` must be a module-level function (it is pickled to the spawned processes).
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torch.multiprocessing.spawn(_rank_entry, args=(2, port, worker, args, str(out_dir)), nprocs=2, join=True)
    return [json.loads((Path(out_dir) / f"rank{r}.json").read_text()) for r in (0, 1)]
