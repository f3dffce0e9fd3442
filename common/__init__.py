"""Shared building blocks of the training, fine-tuning, evaluation and sorting scripts; one job per module.

Command line and errors
    options        argparse groups that each script composes, value checks in ``type=``, recipe and --demo defaults
    recipes        named sets of optimisation defaults (resnet, ghostnet, ghostnet-finetune)
    errors         UserError and the one-line exit for mistakes a user can make

Processes and devices
    distributed    process context (one process, torchrun or SLURM rank), DDP and DataParallel wrappers, collectives
    launch         how the training scripts start their processes (one, mp.spawn, torchrun)
    process        how any script's process ends: a signal stop or a lost peer in one line
    faults         signal stop requests, mid-epoch checkpoint timing, the fault that tests inject

Data
    data           datasets, the global-permutation samplers, loaders, unreadable-image bookkeeping
    hfdata         Hugging Face parquet and save_to_disk folders as map-style datasets (pyarrow)
    shards         WebDataset tar shards: a stream dealt to ranks and workers (training), random access (evaluation)
    convert        ``python -m common.convert SRC OUT --to parquet|shards|folder``: resumable, with a manifest
    samples        a dataset's sample list in numpy arrays, shared by loader workers without copies
    images         decoding any image file into RGB, or naming why it cannot be decoded
    transforms     the uint8 training and evaluation pipelines and per-batch normalisation
    preprocess     each model's eval resize, crop, interpolation and normalisation (its weights' own), and their source
    demo           the generated six-class dataset of ``--demo``
    valprep        ``python -m common.valprep VAL_DIR``: a flat ImageNet val folder sorted into class folders

Models
    models         create_model for torchvision classifiers and GhostNet, heads, parameter and MAC counts
    model_loading  a model to predict with, from a checkpoint, a state_dict or ImageNet weights
    checkpoint     checkpoint save (atomic) and load (weights only, every field validated)
    onnx_model     an exported ONNX model run by onnxruntime behind the nn.Module interface, and its metadata
    precision      autocast dtype, gradient scaler and memory format of a run

Training
    engine         fit(): build the run, then the one epoch loop (train, validate, log, checkpoint)
    train_step     one optimizer step: MixUp/CutMix, gradient accumulation, autocast, clipping, EMA update
    optim          SGD with weight-decay groups, model EMA, batch mixing
    schedule       learning-rate schedules stepped per iteration
    meters         running (sum, count) averages reduced over ranks
    metrics        top-k counts, confusion matrix, per-class scores

Prediction
    inference      batched prediction over a folder or a list of files (test.py, classify_test_data.py, export.py)
    labels         ImageNet-ReaL labels and class maps for folders named by index (ImageNet-V2)

Output
    files          output folders and atomic writes of reports, CSV bytes
    logger         the epoch CSV log and the progress display
    watch          what rank 0 records while a run goes: epoch and step CSVs, TensorBoard
    figures        matplotlib charts (confusion matrix) and contact sheets of images
    report         ``python -m common.report RUN_DIR``: training curves as a PNG

Nothing here imports a script, and test.py and classify_test_data.py load neither ``engine`` nor ``launch``.
"""
