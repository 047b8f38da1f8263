"""Step through backpropagation in a browser: one self-contained HTML page for an explanation.

    python -m experiments.explain runs/mnist --index 18 --html            # beside the figure
    python -m experiments.explain runs/cifar10_modified cat.jpg --html cat.html

The page is one file: its CSS, script and data are inline, nothing is fetched, and it opens from
disk by double-click. For the one image of an :class:`~experiments.walk.Explanation` it steps
through a diagram of the network (click, ``<`` / ``>`` or the arrow keys): forward, each layer's
output, every channel as an image; backward from the loss of the chosen class, what each layer
receives (dL/dy) and passes on (dL/dx) and, for conv and dense, dL/dW and dL/db (colour maps
centred on zero), beside the layer's rule in MathML (the report's equation number) and its worst
difference from autodiff; last, the saliency map and the top classes (as
docs/guides/predict-and-explain.md shows).

One computation feeds the printed table and the page: the page's rows are
:func:`experiments.walk.table` of the same explanation (the strings it prints, and the float
differences beside them), and the printed table itself is on the page under "the table".

Data: every array is stored as little-endian float32 in base64 (values shown on hover to four
significant digits; the walk itself is float64), decoded only when a step first shows it; the
input image as its uint8 pixels. So the size depends on the network, not on the weights or the
image (measured in docs/guides/predict-and-explain.md), under the 5 MB the page is allowed. The
HTML, CSS and script are the package data file ``explain_page.html``; :func:`render_page` puts
the data into it as JSON.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from experiments.walk import Explanation, Table

TEMPLATE = "explain_page.html"
DATA_MARK = "__EXPLAIN_DATA__"  # the template's placeholder for the JSON


# ---------------------------------------------------------------------------------------------
# MathML: each rule written with the arrays named as the page names them


def _mi(name: str) -> str:
    return f"<mi>{name}</mi>"


def _mo(op: str) -> str:
    return f"<mo>{op}</mo>"


def _d(of: str, sub: str = "") -> str:
    """``dL/d<of>``, with an optional index subscript such as ``h,w,c``."""
    frac = f"<mfrac><mrow><mi>∂</mi><mi>L</mi></mrow><mrow><mi>∂</mi>{_mi(of)}</mrow></mfrac>"
    return f"<msub>{frac}<mrow>{sub}</mrow></msub>" if sub else frac


def _idx(text: str) -> str:
    """An index expression such as ``h+u,w+v,o`` or ``2i+u``: letters are ``<mi>``, numbers
    ``<mn>``, anything else an operator ``<mo>``."""
    tokens = re.findall(r"[a-z]|\d+|.", text)
    return "".join(
        f"<mi>{t}</mi>" if t.isalpha() else f"<mn>{t}</mn>" if t.isdigit() else f"<mo>{t}</mo>"
        for t in tokens
    )


def _eq(number: str) -> str:
    """The report's equation number, set off to the right of its equation."""
    return f"<mspace width='1.5em'/><mtext>({number})</mtext>"


def _sum(under: str) -> str:
    return f"<munder><mo>∑</mo><mrow>{under}</mrow></munder>"


def _math(*rows: str) -> str:
    """Display math, one equation per row, aligned left."""
    body = "".join(f"<mtr><mtd><mrow>{r}</mrow></mtd></mtr>" for r in rows)
    return f'<math display="block"><mtable columnalign="left">{body}</mtable></math>'


def _note(text: str) -> str:
    """A line of prose under an equation (HTML, so it wraps as text does)."""
    return f'<p class="note">{text}</p>'


def _cases(*rows: tuple[str, str]) -> str:
    """``{ value  condition`` rows, a left brace before them."""
    body = "".join(f"<mtr><mtd>{v}</mtd><mtd>{c}</mtd></mtr>" for v, c in rows)
    return f"<mrow><mo>{{</mo><mtable columnalign='left'>{body}</mtable></mrow>"


def _fn(name: str, arg: str) -> str:
    return f"<mi>{name}</mi><mo>&#x2061;</mo><mrow><mo>(</mo>{arg}<mo>)</mo></mrow>"


def _dense_rule(layer: Any) -> str:
    t = "<msup><mrow><mo>(</mo>" + _d("y") + "<mo>)</mo></mrow><mi>T</mi></msup>"
    return _math(
        _d("x") + _mo("=") + _d("y") + _mo("&#x2062;") + _mi("W") + _eq("17"),
        _d("W") + _mo("=") + t + _mo("&#x2062;") + _mi("x") + _eq("21"),
        _d("b") + _mo("=") + t + _mo("&#x2062;") + "<mn>1</mn>" + _eq("24"),
    ) + _note(
        f"x is the layer's input flattened to 1 x {layer.n_in}, W is {layer.n_out} x "
        f"{layer.n_in}; ∂L/∂x is reshaped back to the input's shape."
    )  # fmt: skip


def _relu_rule(layer: Any) -> str:
    x = "<mi>x</mi>"
    return _math(
        _d("x") + _mo("=") + _d("y") + _mo("⊙") + _fn("step", x) + _eq("25"),
        _fn("step", x) + _mo("=") + _cases(
            ("<mn>1</mn>", "<mtext>if&#xA0;</mtext><mi>x</mi><mo>&gt;</mo><mn>0</mn>"),
            ("<mn>0</mn>", "<mtext>if&#xA0;</mtext><mi>x</mi><mo>≤</mo><mn>0</mn>"),
        ),
    ) + _note(
        "Elementwise. At the kink step(0) = 0, as the seed and PyTorch take it (JAX's "
        "derivative of max(x, 0) would give 1/2 there)."
    )  # fmt: skip


def _pool_rule(layer: Any) -> str:
    (kh, kw), (sh, sw) = layer.window, layer.stride
    return _math(
        _d("x", _idx("h,w,c")) + _mo("=") + _cases(
            (_d("y", _idx("i,j,c")),
             "<mtext>if (h, w) is the first maximum of window (i, j)</mtext>"),
            ("<mn>0</mn>", "<mtext>otherwise</mtext>"),
        ),
    ) + _note(
        f"Window (i, j) is rows {sh}i … {sh}i+{kh - 1} and columns {sw}j … {sw}j+{kw - 1} "
        "of x, channel by channel. Each window's gradient goes to one element: its first "
        "maximum in row-major order (ties after a ReLU are common)."
    )  # fmt: skip


def _conv_rule(layer: Any) -> str:
    (ph, pw), (sh, sw) = layer.padding, layer.stride
    kh, kw = layer.kh, layer.kw
    dyt = _d("y\u0303", _idx("h+u,w+v,o"))  # x̃, ỹ, as the notes write them
    flipped = f"<msub><mi>W</mi><mrow>{_idx(f'{kh - 1}−u,{kw - 1}−v,c,o')}</mrow></msub>"
    strided = sh != 1 or sw != 1
    at = f"{sh}i+u,{sw}j+v,c" if strided else "i+u,j+v,c"
    xi = f"<msub>{_mi('x̃')}<mrow>{_idx(at)}</mrow></msub>"
    dilated = f" dilated by ({sh}, {sw}) (s − 1 zeros between entries) and" if strided else ""
    far = " (plus r = (H + 2p − k) mod s on the far side)" if strided else ""
    return _math(
        _d("x", _idx("h,w,c")) + _mo("=") + _sum(_idx("u,v,o")) + dyt
        + _mo("&#x2062;") + flipped,
    ) + _note(
        f"∂L/∂ỹ is ∂L/∂y{dilated} zero-padded by ({kh - 1 - ph}, {kw - 1 - pw}) = k − 1 − p"
        f"{far}: the full correlation of ∂L/∂y with the kernel flipped in both axes, "
        "input and output channels swapped (a transposed convolution)."
    ) + _math(
        _d("W", _idx("u,v,c,o")) + _mo("=") + _sum(_idx("i,j")) + xi
        + _mo("&#x2062;") + _d("y", _idx("i,j,o")),
    ) + _note(
        f"x̃ is x zero-padded by ({ph}, {pw}): the correlation of the input with ∂L/∂y."
    ) + _math(
        _d("b", _idx("o")) + _mo("=") + _sum(_idx("i,j")) + _d("y", _idx("i,j,o")),
    )  # fmt: skip


_RULES: dict[str, tuple[Callable[[Any], str], str]] = {
    "dense": (_dense_rule, "eqs. 17, 21, 24"),
    "relu": (_relu_rule, "eq. 25"),
    "pool": (_pool_rule, "jaxnet/layers/pool.py"),
    "conv": (_conv_rule, "jaxnet/layers/conv.py"),
}
"""Each layer kind's backward rule (MathML with a note; the loss's: :func:`loss_html`) and where
the report numbers it (cited in jaxnet/layers/*.py); the report gives the convolution's and max
pooling's rules no number, so their code stands in."""


def rule_html(layer: Any) -> str:
    """The backward rule of ``layer`` (a :class:`jaxnet.network.Layer`): MathML and a note.

    The arrays are named as on the page: ``x`` the layer's input, ``y`` its output, ``W`` and
    ``b`` its parameters; ``dL/dy`` what it receives, ``dL/dx`` what it passes on. One image,
    so the batch size ``N`` is 1. Indices: ``h, w`` a position in ``x``, ``i, j`` one in ``y``,
    ``c`` an input channel, ``o`` an output channel, ``u, v`` a kernel offset.
    """
    if layer.kind not in _RULES:
        raise ValueError(f"no rule written for layer kind {layer.kind!r}")
    return _RULES[layer.kind][0](layer)


def loss_html() -> str:
    """The softmax cross-entropy (eq. 26) and its rule (eq. 29) for one image of class ``c``."""
    z = "<mi>z</mi>"
    return _math(
        "<mi>L</mi><mo>=</mo><mo>−</mo><mi>log</mi><mspace width='0.2em'/><msub><mrow>"
        + _fn("softmax", z) + "</mrow><mi>c</mi></msub>" + _eq("26"),
        _d("z") + "<mo>=</mo><mfrac><mrow>" + _fn("softmax", z) + "<mo>−</mo>"
        + _fn("onehot", "<mi>c</mi>") + "</mrow><mi>N</mi></mfrac>" + _eq("29"),
    ) + _note(
        "z: the logits (the last layer's output); c: the class whose loss is differentiated; "
        "N = 1 image."
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The data


def _array(a: np.ndarray, dtype: str = "<f4") -> dict[str, Any]:
    """One image's array (batch axis dropped): its shape, its values in base64 (little-endian
    float32, or uint8 for the image) and, for float32, its range."""
    a = np.ascontiguousarray(a, dtype)
    out = {"shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode("ascii")}
    if dtype == "<f4":
        out["absmax"] = float(np.max(np.abs(a))) if a.size else 0.0
        out["min"] = float(a.min()) if a.size else 0.0
        out["max"] = float(a.max()) if a.size else 0.0
    return out


def page_data(expl: Explanation, title: str, rows: Table, text: str) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready data, under ``title``: ``rows`` is
    :func:`experiments.walk.table` of ``expl`` and ``text`` the printed table
    (:func:`experiments.explain.format_table`), shown on the page as it is printed.

    Returns:
        A dict: ``title``, ``classes``, ``label``, ``loss``, ``dtype``, ``image`` (uint8
        ``(H, W, C)`` in base64), ``arrays`` (name -> shape and float32 data: ``x``, ``y<i>``
        each layer's output, ``dy<i>`` its dL/dy, ``dinput``, ``dW:<name>`` and ``db:<name>``),
        ``layers`` (name, kind, description, output shape, rule, equation, forward and backward
        rows), ``input`` and ``loss`` rows, ``probabilities``, ``saliency`` and ``table``.
    """
    arch, a = expl.run.arch, expl.analytic
    n = len(arch.layers)
    arrays = {"x": _array(expl.x[0]), "dinput": _array(a.dinput[0])}
    layers = []
    backward = {r.name: r for r in rows.backward}
    for i, layer in enumerate(arch.layers):
        arrays[f"y{i}"] = _array(a.outputs[i][0])
        arrays[f"dy{i}"] = _array(a.dy[i][0])
        params = sorted(a.dparams.get(layer.name, {}))
        for k in params:
            arrays[f"d{'W' if k == 'w' else k}:{layer.name}"] = _array(a.dparams[layer.name][k])
        absolute, relative = rows.differences[i]
        layers.append(
            {
                "name": layer.name,
                "kind": layer.kind,
                "describe": layer.describe(),
                "shape": list(arch.output_shapes[i]),
                "params": bool(params),
                "rule": rule_html(layer),
                "equation": _RULES[layer.kind][1],
                "forward": rows.forward[i + 1]._asdict(),
                "backward": backward[layer.name]._asdict(),
                "absolute": absolute,
                "relative": relative,
                "dx": f"dy{i - 1}" if i > 0 else "dinput",
            }
        )
    absolute, relative = rows.differences[n]
    return {
        "title": title,
        "classes": list(expl.run.class_names),
        "label": expl.label,
        "loss": f"{a.loss:.4g}",
        "dtype": str(expl.dtype),
        "image": _array(expl.image, "u1"),
        "arrays": arrays,
        "layers": layers,
        "input": rows.forward[0]._asdict(),
        "answer": rows.answer,
        "lossRow": {
            **rows.backward[0]._asdict(),
            "absolute_value": absolute,
            "relative_value": relative,
            "rule": loss_html(),
            "equation": "eq. 29",
        },
        "probabilities": [float(p) for p in expl.probabilities],
        "saliency": _array(np.abs(a.dinput[0]).max(axis=-1)),
        "table": text,
    }


def render_page(expl: Explanation, title: str, rows: Table, text: str) -> str:
    """The page as one HTML string: the template with :func:`page_data` inlined as JSON."""
    template = resources.files("experiments").joinpath(TEMPLATE).read_text(encoding="utf-8")
    data = json.dumps(page_data(expl, title, rows, text), separators=(",", ":"), allow_nan=False)
    # "</" would end the <script> element early; "<\/" is the same JSON string.
    return template.replace(DATA_MARK, data.replace("</", "<\\/"), 1)


def write_page(
    expl: Explanation, title: str, path: str | os.PathLike[str], *, rows: Table, text: str
) -> Path:
    """Write :func:`render_page` to ``path`` atomically (UTF-8); returns ``path`` as a Path.

    Raises:
        OSError: the file could not be written.
    """
    from jaxnet.io import write_text

    return write_text(path, render_page(expl, title, rows, text))
