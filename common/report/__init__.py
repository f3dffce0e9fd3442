"""Where are the reports for people: running meters and the progress display (``progress``), top-k counts and
per-class scores (``metrics``), matplotlib figures and contact sheets (``figures``), a run's training curves
(``curves``, run as ``python -m common.report RUN_DIR``), and the machine a figure was measured on (``machine``).

May import: data, parallel and the ground floor; never models, cli, train or predict."""
