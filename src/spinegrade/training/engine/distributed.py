"""Several GPUs through torchrun and DistributedDataParallel, from an unchanged stage command.

A training stage hands its body to :func:`launch_stage` (or :func:`launch`), which calls
:func:`relaunch` first: with ``engine.nproc_per_node`` N > 1 and not
yet under torchrun, it runs ``python -m torch.distributed.run --standalone
--nproc_per_node N <the same script and arguments>`` and returns its exit code; under
torchrun (or with N = 1) it returns None and the stage goes on. :func:`process_group` then
joins the processes (NCCL on GPUs, gloo on CPU) and gives each its Runtime; rank 0 is the
one that logs to MLflow and writes outputs.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from spinegrade.core.config.base import Section, load_sections
from spinegrade.core.config.engine import EngineConfig
from spinegrade.core.errors import TrainingError
from spinegrade.core.runtime import Runtime, check, make_runtime, set_threads

log = logging.getLogger(__name__)

# torchrun's environment for each worker process
_RANK, _WORLD, _LOCAL_RANK = "RANK", "WORLD_SIZE", "LOCAL_RANK"


def under_torchrun() -> bool:
    """Whether this process was started by torchrun."""
    return _LOCAL_RANK in os.environ and _WORLD in os.environ


def relaunch(cfg: EngineConfig, script: str, argv: list[str]) -> int | None:
    """Run ``script argv`` under torchrun with ``cfg.nproc_per_node`` processes and return
    its exit code; None when there is nothing to do (one process, or already a worker).

    Before starting processes the settings are checked here, so a bad one fails before any
    process starts (a single process checks them in :func:`make_runtime`).
    """
    if cfg.nproc_per_node <= 1 or under_torchrun():
        return None
    check(cfg)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={cfg.nproc_per_node}",
        script,
        *argv,
    ]
    log.debug("starting %d training processes: %s", cfg.nproc_per_node, " ".join(cmd[1:]))
    return subprocess.call(cmd)


@contextlib.contextmanager
def process_group(cfg: EngineConfig) -> Iterator[Runtime]:
    """This process's Runtime; under torchrun, inside the joined process group (NCCL on
    CUDA, gloo on CPU), torn down on the way out. CPU threads are shared out among the
    processes of a machine."""
    if not under_torchrun():
        set_threads(cfg.threads)
        yield make_runtime(cfg)
        return
    rank, world = int(os.environ[_RANK]), int(os.environ[_WORLD])
    local_rank = int(os.environ[_LOCAL_RANK])
    rt = make_runtime(cfg, rank, world, local_rank)
    if rt.device.type == "cpu":
        set_threads(max(1, cfg.threads // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    else:
        set_threads(cfg.threads)
    backend = "nccl" if rt.device.type == "cuda" else "gloo"
    kwargs = {"device_id": rt.device} if backend == "nccl" else {}
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30), **kwargs)
    try:
        yield rt
    finally:
        dist.destroy_process_group()


def launch(
    cfg: EngineConfig, script: str, argv: list[str], body: Callable[[Runtime], None]
) -> None:
    """Run a training stage's ``body`` with its Runtime: in this process, or (N > 1 and not
    yet under torchrun) in N processes that torchrun starts from ``script argv``.

    Raises:
        TrainingError: a process under torchrun failed (its own error is printed above).
    """
    code = relaunch(cfg, script, argv)
    if code is None:
        with process_group(cfg) as rt:
            body(rt)
    elif code != 0:
        raise TrainingError(
            f"{cfg.nproc_per_node} training processes under torchrun failed (exit code "
            f"{code}); the first error is printed above"
        )


def launch_stage(
    params_path: str,
    script: str,
    argv: list[str] | None,
    train: Callable[[Any, Runtime], None],
    sections: tuple[type[Section], ...],
    engine: Callable[[Any], EngineConfig] = lambda params: params.engine,
) -> None:
    """A training stage's entry: load ``sections`` of ``params_path`` (the engine's among
    them) and run ``train(params, runtime)`` through :func:`launch`, on the engine settings
    ``engine`` picks from the params (``argv`` None: this process's own arguments, for
    torchrun to start ``script`` with)."""
    params = load_sections(params_path, *sections)
    argv = sys.argv[1:] if argv is None else argv
    launch(engine(params), script, argv, lambda rt: train(params, rt))


def all_sum(rt: Runtime, values: list[float]) -> list[float]:
    """``values`` summed over every process (themselves with one process)."""
    if rt.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=rt.device)
    dist.all_reduce(t)
    return t.tolist()


def gather_shards(rt: Runtime, local: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """Reassemble per-sample arrays computed on shards ``range(rank, n, world)`` into
    dataset order (every process gets the whole)."""
    if rt.world == 1:
        return local
    shards: list[dict[str, np.ndarray] | None] = [None] * rt.world
    dist.all_gather_object(shards, local)
    out = {}
    for key in local:
        first = shards[0][key]
        whole = np.empty((n, *first.shape[1:]), dtype=first.dtype)
        for r, shard in enumerate(shards):
            whole[r :: rt.world] = shard[key]
        out[key] = whole
    return out
