"""What the scripts share, as a few packages, each answering one question:

    cli/      where is the command line: options (flag groups), recipes, defaults (filled once), process (how it ends)
    train/    where is the training loop: launch, engine (flags to a run), loop, step, optim, schedule, resume,
              watch (the run record), inputs (--profile-input, the samples sheet)
    predict/  where is prediction: inference (test.py, the sorter, export.py), labels (ReaL, class maps)
    models/   where is the model: factory, checkpoint, loading, onnx_model, preprocess, memory (will a run fit)
    report/   what people read: progress (meters), metrics, figures, curves (python -m common.report), machine,
              steadiness (is a timing trustworthy: spread of repeats, other processes' load)
    data/     where is the data: formats (what --data is, resolved once), one reader per format (imagefolder,
              hfdata, shards + published, synthetic), unreadable, sampling, loaders, transforms, images, samples, scan
              (--check-data), convert and valprep (python -m common.data.convert / .valprep), demo
    parallel/ where is distributed: distributed (the frozen process context), faults (signals, stops), precision
    errors, files, limits, schema, terminal: the ground floor (one-line user errors, output files, numeric limits
              and sizes, the shape check of every metadata file read, a bar on a terminal or plain lines in a log)

Imports run one way, from the scripts down, and never in a circle:

    scripts -> train, predict -> cli -> models, report -> data -> parallel -> errors, files, limits, schema, terminal

A module imports its own package and the floors below it, never a floor above or beside it: train and predict do
not import each other (prediction loads no training code), models and report do not import each other. Nothing here
imports a script; ghost_net.py is the model alone and imports torch only. Project code is imported at the top of a
module, never inside a function; only optional third-party packages (pyarrow, onnxruntime, matplotlib, ...) are
imported where they are used. tests/test_imports.py checks all of this on the source.
"""
