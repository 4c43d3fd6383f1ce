"""The crop tensor contract shared by training and inference: uint8 crops (N, k, S, S) in,
standardized float tensors out.
"""

from __future__ import annotations

import albumentations as A
import numpy as np
import torch


class CropDataset(torch.utils.data.Dataset):
    """Crops as standardized float tensors (k, S, S), with labels.

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
    ) -> None:
        self.crops = crops
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.mean, self.std = mean, std
        self.augment = augment

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.crops[i]
        if self.augment is not None:
            img = self.augment(image=np.ascontiguousarray(img.transpose(1, 2, 0)))["image"]
            img = img.transpose(2, 0, 1)
        x = torch.from_numpy(np.ascontiguousarray(img)).float().div_(255.0)
        if self.mean is None:
            return (x - x.mean()) / (x.std() + 1e-6), self.labels[i]
        return x.sub_(self.mean).div_(self.std), self.labels[i]
