"""Model architectures webrt compiles: one file each, listed in :mod:`webrt.models.registry`."""
