"""What every training run logs about where it ran, and how a failed run ends.

Runs on different machines are told apart by their ``engine.*`` tags (device, GPU name and
count, CUDA and cuDNN versions, precision, processes, threads) and compared on MLflow's
system metrics (CPU and RAM through psutil; GPU utilization and memory through
nvidia-ml-py where an NVIDIA GPU is visible).
"""

from __future__ import annotations

import mlflow

from spinegrade.core.runtime import Runtime, describe


def start_system_metrics(interval_s: float) -> None:
    """Have MLflow sample CPU, RAM and (with nvidia-ml-py, on NVIDIA GPUs) GPU utilization
    and memory every ``interval_s`` seconds for runs started with log_system_metrics."""
    mlflow.set_system_metrics_sampling_interval(interval_s)
    mlflow.set_system_metrics_samples_before_logging(1)


def log_runtime(rt: Runtime) -> None:
    """The device, precision and software of the active run, as ``engine.*`` tags, so runs
    on different machines can be told apart (and filtered) in the UI."""
    mlflow.set_tags({f"engine.{k}": v for k, v in describe(rt).items()})


def end_failed(error: BaseException) -> None:
    """End the active run as FAILED (KILLED for an interrupt), with the error as a tag."""
    status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
    tag_error(error)
    mlflow.end_run(status=status)


def tag_error(error: BaseException) -> None:
    """Tag the active run with ``error``: its type and message (the first 5000 characters)."""
    mlflow.set_tag("error", f"{type(error).__name__}: {error}"[:5000])
