"""The benchmark's peers: jaxnet's networks written as PyTorch's and Equinox's users write them.

Each peer module imports its library at the top, as user code does; the benchmark imports them
only when asked, so neither library is required (``pip install -e ".[peers]"``). Both peers
take their layers from an :class:`jaxnet.Architecture` and their initial weights from jaxnet's
params (:func:`nchw_weights`), so that given the same weights they compute the same loss: the
tests check it, and it makes the timings a comparison of the same work.

Both libraries are NCHW: kernels ``(C_out, C_in, KH, KW)``, and a flatten before the first
dense layer takes the features in ``(C, H, W)`` order where jaxnet (NHWC) takes ``(H, W, C)``.
The dense weights are permuted to match, so the network is the same function; for the speed of
a step the order makes no difference.
"""

from __future__ import annotations

import numpy as np

from jaxnet.network import Architecture, Conv


def nchw_weights(arch: Architecture, params: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """jaxnet's params as NCHW libraries lay them out, per parametrised layer.

    Args:
        arch: the network.
        params: ``{layer name: {"w": ..., "b": ...}}`` from :func:`jaxnet.init`.

    Returns:
        ``{layer name: (w, b)}``: a convolution's HWIO kernel ``(KH, KW, C_in, C_out)`` as
        ``(C_out, C_in, KH, KW)``; a dense layer's ``(n_out, n_in)`` weight with its columns
        reordered from the ``(H, W, C)`` flattening to the ``(C, H, W)`` one when its input is
        an image; biases unchanged. Float32 NumPy arrays, C-contiguous.
    """
    out = {}
    shape_in = arch.input_shape
    for layer, shape_out in zip(arch.layers, arch.output_shapes, strict=True):
        if layer.name in params:
            w = np.array(params[layer.name]["w"], np.float32)  # copies: writable, for torch
            b = np.array(params[layer.name]["b"], np.float32)
            if isinstance(layer, Conv):
                w = w.transpose(3, 2, 0, 1)
            elif len(shape_in) == 3:  # flattened from an image: (H, W, C) -> (C, H, W)
                w = w.reshape(w.shape[0], *shape_in).transpose(0, 3, 1, 2).reshape(w.shape[0], -1)
            out[layer.name] = (np.ascontiguousarray(w), b)
        shape_in = shape_out
    return out
