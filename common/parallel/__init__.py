"""Where is distributed: the frozen process context and its collectives (``distributed``), signals, stop requests and
injected faults (``faults``), and the numeric precision and memory format of a device (``precision``).

May import: the ground floor only."""
