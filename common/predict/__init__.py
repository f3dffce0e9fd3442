"""Where is prediction: batched inference over a labelled set or files, for test.py, the sorter and export.py
(``inference``), and ImageNet-ReaL labels and class maps (``labels``).

May import: cli, models, report, data, parallel and the ground floor; never train."""
