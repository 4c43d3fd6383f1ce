"""Data loading that keeps a GPU fed and runs the same whatever the number of workers.

The sampler hands every sample index out with its own augmentation seed, drawn from
(seed, epoch, index); datasets reseed their augmentation with it (see
``models.inputs.seeded_item``). So an image is augmented the same way whether it is loaded
in the main process or in any of the worker processes, on one rank or several: the worker
count is a speed setting only, and runs stay byte-identical on CPU.

The shuffle itself is torch's DistributedSampler (seeded by seed + epoch, one shard per
rank, padded to equal shards so every rank runs the same number of steps).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from spinegrade.core.runtime import Runtime


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample ``index`` in ``epoch`` (a 32-bit integer)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class SeededSampler(Sampler):
    """One rank's shard of a shuffled epoch, as (index, augmentation seed) pairs."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.inner = DistributedSampler(
            range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed
        )
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i in self.inner:
            yield i, sample_seed(self.seed, self.epoch, i)

    def __len__(self) -> int:
        return len(self.inner)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    rt: Runtime,
    sampler: Sampler | Sequence[int],
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader with the runtime's workers (persistent across epochs), pinned memory
    on CUDA, and ``sampler`` (a SeededSampler, or the indices to read in order)."""
    workers = rt.workers
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=workers,
        pin_memory=rt.pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        generator=torch.Generator().manual_seed(0),  # base seeds of workers; unused by us
    )
