"""Built-in backends, one package per backend (``cpu``; ``cuda`` and ``cuda-emu`` as they land)."""
