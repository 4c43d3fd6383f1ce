"""The training engine both model families share: augmentation and learning-rate schedules."""
