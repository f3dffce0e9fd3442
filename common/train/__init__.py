"""Where is the training loop: how processes start (``launch``), flags to a run (``engine``), the epoch loop
(``loop``), one optimizer step (``step``), the optimiser and EMA (``optim``), the schedule (``schedule``), resuming
(``resume``), what rank 0 records (``watch``), and looking at the input (``inputs``).

May import: cli, models, report, data, parallel and the ground floor; never predict."""
