"""The ``engine`` section: where and how models train and predict."""

from __future__ import annotations

from typing import ClassVar, Literal, Self

from pydantic import model_validator

from spinegrade.core.config.base import Section
from spinegrade.core.errors import ConfigError


class EngineConfig(Section):
    """engine: where and how both training stages (and predict) run their models.

    Attributes:
        device: ``auto`` (CUDA when visible, else CPU), ``cpu`` or ``cuda``. Byte-identical
            outputs for the same params are guaranteed on CPU only.
        precision: ``fp32``; ``bf16`` autocast (CUDA GPUs from Ampere on, CPUs with AVX-512
            bf16 or AMX); ``fp16`` autocast with a gradient scaler; ``auto``: bf16 where the
            device has it, else fp32 (runs log the precision they ran in).
        nproc_per_node: training processes (one per GPU) under torchrun with
            DistributedDataParallel; 1 trains in the stage's own process.
        workers: data-loader worker processes per training process; ``auto``: on CUDA the
            cores shared out among the processes (at most 8 each), on CPU 0 (the step
            itself uses every core there, workers would only take cores from it).
        threads: torch CPU threads per stage (shared out among the processes on CPU;
            0 or less: torch's default).
        deterministic: deterministic kernels and no cuDNN autotuning (slower on GPU).
        channels_last: channels-last memory format for the models on CUDA (tensor cores);
            ignored on CPU, where it gains nothing.
        system_metrics_s: seconds between MLflow system-metrics samples (CPU, RAM, GPU).
    """

    key: ClassVar[str] = "engine"

    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    nproc_per_node: int = 1
    workers: Literal["auto"] | int = "auto"
    threads: int = 2
    deterministic: bool = True
    channels_last: bool = True
    system_metrics_s: float = 5.0

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.nproc_per_node < 1:
            raise ConfigError(f"engine.nproc_per_node must be >= 1, got {self.nproc_per_node}")
        if isinstance(self.workers, int) and self.workers < 0:
            raise ConfigError(f"engine.workers must be auto or >= 0, got {self.workers}")
        if self.system_metrics_s <= 0:
            raise ConfigError("engine.system_metrics_s must be > 0")
        return self
