"""Where and how torch runs: device, precision, seeding, CPU threads, and what ran.

Every stage and command that runs a model goes through here, so "which device", "which
precision", "how deterministic" and "how many threads" have one answer each. Settings are
checked before any work starts: a device or precision the machine does not have, or more
processes than devices, is a ConfigError naming the param to change.
"""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from spinegrade.core.errors import ConfigError

if TYPE_CHECKING:  # annotations only: tracking imports this module, not the engine section
    from spinegrade.core.config.engine import EngineConfig

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# cuBLAS needs this before its first call to be deterministic on CUDA (torch's docs).
_CUBLAS_DETERMINISTIC = ":4096:8"


def device(setting: str = "auto", index: int = 0) -> torch.device:
    """The torch device for ``engine.device``: ``auto`` is CUDA when visible, else CPU.

    Raises:
        ConfigError: ``cuda`` asked for where no CUDA GPU is visible.
    """
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda":
        if not torch.cuda.is_available():
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            why = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
            raise ConfigError(
                f"engine.device is cuda but no CUDA GPU is visible to torch{why}: "
                "set engine.device to cpu or auto"
            )
        return torch.device("cuda", index)
    if setting != "cpu":
        raise ConfigError(f"engine.device must be auto, cpu or cuda, got {setting!r}")
    return torch.device("cpu")


def _cpu_supports(dtype: torch.dtype) -> bool:
    """Whether a small matmul runs under CPU autocast to ``dtype`` (oneDNN kernels exist)."""
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    try:
        with torch.autocast("cpu", dtype=dtype):
            out = torch.ones(4, 4) @ torch.ones(4, 4)
    except RuntimeError:
        return False
    return out.dtype == dtype


def has_bf16(dev: torch.device) -> bool:
    """Whether ``dev`` runs bf16 autocast natively: a CUDA GPU from Ampere on, or a CPU
    with AVX-512 bf16 or AMX (oneDNN kernels)."""
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return _cpu_supports(torch.bfloat16)


def resolve_precision(dev: torch.device, precision: str) -> str:
    """``engine.precision`` on ``dev``: ``auto`` is bf16 where the device has it, else fp32;
    any other setting is itself."""
    if precision != "auto":
        return precision
    return "bf16" if has_bf16(dev) else "fp32"


def check_precision(dev: torch.device, precision: str) -> None:
    """ConfigError unless ``dev`` runs ``precision`` (fp32 and auto always do)."""
    if precision in ("fp32", "auto"):
        return
    if precision not in AMP_DTYPES:
        raise ConfigError(f"engine.precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if dev.type == "cuda":
        if precision == "bf16" and not has_bf16(dev):
            name = torch.cuda.get_device_name(dev)
            raise ConfigError(
                f"engine.precision bf16: {name} has no bf16 support (needs compute "
                "capability 8.0, Ampere, or newer): use fp16 or fp32"
            )
        return
    if precision == "fp16":
        # it runs, through reference kernels: a ResNet step measured 30x slower than fp32
        raise ConfigError(
            "engine.precision fp16 is for CUDA GPUs: on the CPU it has no fast kernels; "
            "use bf16 (if the CPU has it) or fp32"
        )
    if not has_bf16(dev):
        raise ConfigError(
            f"engine.precision {precision}: this CPU ({cpu_name()}) has no AVX-512 bf16 or "
            "AMX for autocast: use fp32, or a GPU"
        )


def check_processes(dev: torch.device, nproc: int) -> None:
    """ConfigError if ``nproc`` training processes would share a GPU or outnumber cores."""
    if dev.type == "cuda":
        have = torch.cuda.device_count()
        if nproc > have:
            raise ConfigError(
                f"engine.nproc_per_node is {nproc} but only {have} CUDA GPU(s) are visible: "
                "one process per GPU, lower it"
            )
    elif nproc > (os.cpu_count() or 1):
        raise ConfigError(
            f"engine.nproc_per_node is {nproc} but this machine has {os.cpu_count()} CPU "
            "cores: lower it (several processes on CPU are for testing the distributed path)"
        )


def check(cfg: EngineConfig) -> torch.device:
    """Every engine setting against this machine, before work starts; the device."""
    dev = device(cfg.device)
    check_precision(dev, cfg.precision)
    check_processes(dev, cfg.nproc_per_node)
    return dev


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed torch (CPU and CUDA); with ``deterministic``, deterministic kernels (warning
    where an op has none) and no cuDNN autotuning; without, cuDNN picks the fastest."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", _CUBLAS_DETERMINISTIC)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic


def set_threads(threads: int) -> None:
    """Use ``threads`` CPU threads for torch's kernels (0 or less: torch's default)."""
    if threads > 0:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class Runtime:
    """How one training process runs: its device, precision, place among the processes
    (rank of world; 0 of 1 without torchrun), data-loader workers and memory format."""

    device: torch.device
    precision: str = "fp32"
    rank: int = 0
    world: int = 1
    workers: int = 0
    channels_last: bool = False
    deterministic: bool = True

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and writes outputs."""
        return self.rank == 0

    @property
    def pin_memory(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed-precision autocast for ``precision`` (a no-op for fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AMP_DTYPES[self.precision])

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, active for fp16 only (bf16 has fp32's range)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the device (image batches channels-last where that is on)."""
        x = x.to(self.device, non_blocking=self.pin_memory)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def make_runtime(cfg: EngineConfig, rank: int = 0, world: int = 1, local_rank: int = 0) -> Runtime:
    """The Runtime of one process (``local_rank`` picks its GPU) after :func:`check`."""
    dev = check(cfg)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    cores = os.cpu_count() or 1
    if cfg.workers == "auto":
        workers = min(8, max(1, cores // world)) if dev.type == "cuda" else 0
    else:
        workers = cfg.workers
    return Runtime(
        device=dev,
        precision=resolve_precision(dev, cfg.precision),
        rank=rank,
        world=world,
        workers=workers,
        channels_last=cfg.channels_last and dev.type == "cuda",
        deterministic=cfg.deterministic,
    )


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", errors="replace") as lines:
        for line in lines:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe(rt: Runtime) -> dict[str, str]:
    """What ran, for telling runs on different machines apart: device name and count,
    CUDA and cuDNN versions, precision, processes, threads, workers, torch version."""
    info = {
        "device": rt.device.type,
        "precision": rt.precision,
        "processes": str(rt.world),
        "loader_workers": str(rt.workers),
        "torch_threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "cpu": cpu_name(),
        "deterministic": str(rt.deterministic),
    }
    if rt.device.type == "cuda":
        info |= {
            "gpu": torch.cuda.get_device_name(rt.device),
            "gpu_count": str(torch.cuda.device_count()),
            "cuda": str(torch.version.cuda),
            "cudnn": str(torch.backends.cudnn.version()),
            "channels_last": str(rt.channels_last),
        }
    return info


def peak_memory_mb(dev: torch.device) -> float:
    """Peak memory of this process: allocated on the GPU, else resident on the CPU (MB)."""
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
