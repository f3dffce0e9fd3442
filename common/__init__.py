"""Shared building blocks of the training, fine-tuning, evaluation and sorting scripts.

One job per module: options (argparse groups), errors (user-facing failures), distributed (process setup),
launch (how training processes start), data (datasets, transforms, samplers, loaders), images (robust decoding),
models (create_model, heads), meters, metrics, schedule, checkpoint (save/load), logger (CSV log, progress),
engine (train/evaluate/fit), faults (signals, mid-epoch checkpoints), inference (batched prediction for test.py and
classify_test_data.py) and figures (confusion matrix and contact-sheet images). Nothing here imports a script.
"""
