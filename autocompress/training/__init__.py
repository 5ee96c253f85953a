"""Fine-tuning: the one training loop, optimizers, LR schedules, augmentation, regularization."""
