"""Backend-specific tuning of the layers' kernels, each backend in a module of its own."""
