"""Entry points that use everything: the `metering` CLI (serve, flusher, keys, reconcile, top),
flusher supervision."""
