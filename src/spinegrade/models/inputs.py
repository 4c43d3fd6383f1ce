"""The crop tensor contract shared by training and inference: uint8 crops (N, k, S, S) in,
standardized float tensors out.
"""

from __future__ import annotations

import albumentations as A
import numpy as np
import torch


def seeded_item(key: int | tuple[int, int]) -> tuple[int, int | None]:
    """(index, augmentation seed or None) from a sampler's key: a plain index, or the
    (index, seed) pairs the training engine's sampler hands out, so that a sample is
    augmented the same way in whichever process loads it."""
    if isinstance(key, tuple):
        return int(key[0]), int(key[1])
    return int(key), None


def crop_rows(crops: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """The indices into ``crops`` that ``rows`` names: every crop, in order, when None."""
    return np.arange(len(crops)) if rows is None else np.asarray(rows)


class CropDataset(torch.utils.data.Dataset):
    """Crops as standardized float tensors (k, S, S), with labels.

    ``crops`` may be a memory-mapped array (``np.load(..., mmap_mode="r")``): items are
    read from it one at a time, ``rows`` picking which (:func:`crop_rows`), so data
    loader workers share the file's pages instead of each holding a copy.
    ``mean``/``std`` None standardize each crop by its own mean and standard deviation;
    numbers standardize every crop alike (e.g. the model's data config).
    """

    def __init__(
        self,
        crops: np.ndarray,
        labels: np.ndarray,
        mean: float | None = None,
        std: float | None = None,
        augment: A.Compose | None = None,
        rows: np.ndarray | None = None,
    ) -> None:
        self.crops = crops
        self.rows = crop_rows(crops, rows)
        labels = np.asarray(labels)
        if len(labels) != len(self.rows):
            raise ValueError(f"{len(labels)} labels for {len(self.rows)} crops")
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.mean, self.std = mean, std
        self.augment = augment

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i, seed = seeded_item(key)
        img = np.asarray(self.crops[self.rows[i]])
        if self.augment is not None:
            if seed is not None:
                self.augment.set_random_seed(seed)
            img = self.augment(image=np.ascontiguousarray(img.transpose(1, 2, 0)))["image"]
            img = img.transpose(2, 0, 1)
        # a copy: the crops are a read-only memory map, which torch will not wrap
        x = torch.from_numpy(np.array(img, dtype=np.float32, order="C")).div_(255.0)
        if self.mean is None:
            return (x - x.mean()) / (x.std() + 1e-6), self.labels[i]
        return x.sub_(self.mean).div_(self.std), self.labels[i]
