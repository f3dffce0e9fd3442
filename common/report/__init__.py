"""Where are the reports for people: running meters and the progress display (``progress``), top-k counts and
per-class scores (``metrics``), matplotlib figures and contact sheets (``figures``), a run's training curves
(``curves``, run as ``python -m common.report RUN_DIR``), the machine a figure was measured on (``machine``), and
whether a timing can be trusted: the spread of its repeats and other processes' load (``steadiness``).

May import: data, parallel and the ground floor; never models, cli, train or predict."""
