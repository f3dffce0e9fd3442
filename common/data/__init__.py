"""Where is the data: what ``--data`` is (``formats``: the registry and the frozen DataSource), one reader module per
format side by side (``imagefolder``, ``hfdata``, ``shards``, and ``synthetic`` for ``--dummy``), the unreadable-image
policy (``unreadable``), sampling (``sampling``), the datasets and loaders of a run (``loaders``), decoding
(``images``), the pipelines (``transforms``), compact sample lists (``samples``), ``--check-data`` (``scan``), and the
tools ``python -m common.data.convert`` and ``python -m common.data.valprep``, and the demo dataset (``demo``).

May import: parallel and the ground floor; never models, report, cli, train or predict."""
