"""The benchmark's peers: jaxnet's networks written as PyTorch's and Equinox's users write them.

Each peer module imports its library at the top, as user code does; the benchmark imports them
only when asked, so neither library is required (``pip install -e ".[peers]"``). Both build
their layers from an :class:`jaxnet.Architecture` with jaxnet's initial weights
(:func:`nchw_layers`), so that they compute the same loss (the tests check it) and the timings
compare the same work.

Both libraries are NCHW: kernels ``(C_out, C_in, KH, KW)``, and a flatten before the first
dense layer takes the features in ``(C, H, W)`` order where jaxnet (NHWC) takes ``(H, W, C)``.
The dense weights are permuted to match, so the network is the same function.
"""

from __future__ import annotations

import numpy as np

from jaxnet.network import Architecture, Conv, Dense, Layer

Weights = tuple[np.ndarray, np.ndarray]


def nchw_layers(arch: Architecture, params: dict) -> list[tuple[Layer, bool, Weights | None]]:
    """``(layer, flatten first?, (w, b) or None)`` for each layer, laid out as NCHW libraries do.

    A dense layer on an image is flattened first. A convolution's HWIO kernel becomes
    ``(C_out, C_in, KH, KW)``; a flattened dense layer's ``(n_out, n_in)`` weight has its
    columns reordered from the ``(H, W, C)`` flattening to the ``(C, H, W)`` one; biases are
    unchanged. Writable, C-contiguous float32 NumPy copies.
    """
    out = []
    shapes_in = (arch.input_shape, *arch.output_shapes[:-1])
    for layer, shape_in in zip(arch.layers, shapes_in, strict=True):
        flatten, weights = isinstance(layer, Dense) and len(shape_in) == 3, None
        if layer.name in params:
            w = np.array(params[layer.name]["w"], np.float32)
            if isinstance(layer, Conv):
                w = w.transpose(3, 2, 0, 1)
            elif flatten:  # (H, W, C) -> (C, H, W)
                w = w.reshape(w.shape[0], *shape_in).transpose(0, 3, 1, 2).reshape(w.shape[0], -1)
            weights = (np.ascontiguousarray(w), np.array(params[layer.name]["b"], np.float32))
        out.append((layer, flatten, weights))
    return out


def nchw_weights(arch: Architecture, params: dict) -> dict[str, Weights]:
    """``{layer name: (w, b)}`` of :func:`nchw_layers`, for the layers with parameters."""
    return {layer.name: wb for layer, _, wb in nchw_layers(arch, params) if wb is not None}
