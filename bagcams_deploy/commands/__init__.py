"""CLI command groups; each module has ``register(app)``. Thin: parse, call the library, render."""
