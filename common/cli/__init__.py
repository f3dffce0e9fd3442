"""Where is the command line: the flags each script composes (``options``), the recipes' defaults (``recipes``), the
defaults filled in once at a script's boundary (``defaults``) and how a script's process ends (``process``).

May import: models, report, data, parallel and the ground floor; never train or predict."""
