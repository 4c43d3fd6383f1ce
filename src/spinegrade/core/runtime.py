"""Where and how torch runs: the device, seeding, and CPU threads.

Every stage and command that runs a model goes through these three, so "which device",
"how deterministic" and "how many threads" have one answer each.
"""

from __future__ import annotations

import torch


def device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA); deterministic kernels on CPU."""
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.use_deterministic_algorithms(not torch.cuda.is_available(), warn_only=True)


def set_threads(threads: int) -> None:
    """Use ``threads`` CPU threads for torch's kernels (0 or less: torch's default)."""
    if threads > 0:
        torch.set_num_threads(threads)
