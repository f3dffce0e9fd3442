"""Shared building blocks of the training, fine-tuning, evaluation and sorting scripts.

One job per module: options (argparse groups), errors (user-facing failures), distributed (process setup),
data (datasets, transforms, samplers, loaders), models (create_model, heads), meters, metrics, schedule,
checkpoint (save/load), logger (CSV log, progress) and engine (train/evaluate/fit). Nothing here imports a script.
"""
