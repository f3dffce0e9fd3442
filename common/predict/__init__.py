"""Where is prediction: batched inference over a labelled set or files, for test.py, the sorter and export.py
(``inference``), ImageNet-ReaL labels and class maps (``labels``), and folders not matched one for one with the
outputs: ImageNet's robustness sets, a larger unnamed head (``evalsets``).

May import: cli, models, report, data, parallel and the ground floor; never train."""
