"""The one augmentation builder: small affine jitter and intensity changes.

Graders and localizers use the same pipeline with their own jitter sizes; the localizers
pass ``keypoints=True`` so their points move with the image.
"""

from __future__ import annotations

import albumentations as A


def build_augmentation(
    seed: int, translate: float = 0.06, rotate: float = 10.0, keypoints: bool = False
) -> A.Compose:
    """Affine jitter (shift up to ``translate`` of the side, scale 0.9-1.1, rotation up to
    ``rotate`` degrees) and brightness/contrast changes, on (H, W, C) images.

    With ``keypoints`` the pipeline also moves (x, y) keypoints (``keypoints=`` argument),
    keeping those that leave the image.
    """
    return A.Compose(
        [
            A.Affine(
                translate_percent=(-translate, translate),
                scale=(0.9, 1.1),
                rotate=(-rotate, rotate),
                p=0.8,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
        ],
        keypoint_params=(
            A.KeypointParams(format="xy", remove_invisible=False) if keypoints else None
        ),
        seed=seed,
    )
