"""The training engine both model families share: the training loop, seeded data loading,
augmentation, learning-rate schedules and several GPUs through torchrun."""
