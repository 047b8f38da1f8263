"""Backend-specific tuning of the layers' kernels, each backend in a module of its own.

:mod:`jaxnet.backends.xla_cpu`: channel padding that suits XLA's CPU convolution kernels.
:mod:`jaxnet.backends.onednn`: oneDNN's convolutions on the CPU, through ``jax.ffi``.
"""
