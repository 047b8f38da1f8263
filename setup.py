"""Builds jaxnet's optional oneDNN convolution kernels; everything else is in pyproject.toml.

On Linux x86_64, ``pip install .`` (or ``-e .``) compiles ``jaxnet/backends/onednn_conv.cc``
against the XLA FFI headers of the build's ``jaxlib`` and oneDNN's headers and library from the
build's ``onednn-devel-cpu-gomp`` wheel. Where it cannot (another platform, no C++ compiler,
a build requirement missing), it says why and installs jaxnet without it: the convolutions then
run on XLA (:mod:`jaxnet.backends.onednn`).
"""

import importlib.metadata
import importlib.util
import os
import platform
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _wheel_dir(dist: str, marker: str) -> str:
    """The folder that holds an installed wheel's data file ``marker`` (``include/dnnl.hpp``)."""
    for f in importlib.metadata.files(dist) or []:
        path = Path(f.locate()).resolve()
        if path.as_posix().endswith("/" + marker):
            return str(path.parents[marker.count("/")])
    raise FileNotFoundError(f"{dist} has no {marker}")


def _configure(ext: Extension) -> None:
    """Add the XLA FFI and oneDNN headers and oneDNN's library to ``ext``, or raise why not."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        raise RuntimeError(f"built only on Linux x86_64, not {sys.platform} {platform.machine()}")
    jaxlib = importlib.util.find_spec("jaxlib")
    if jaxlib is None or not jaxlib.submodule_search_locations:
        raise RuntimeError("jaxlib (for the XLA FFI headers) is not installed")
    ffi = os.path.join(jaxlib.submodule_search_locations[0], "include")
    dnnl = _wheel_dir("onednn-devel-cpu-gomp", "include/oneapi/dnnl/dnnl.hpp")
    # -isystem: the FFI headers warn under g++; they are not ours to fix.
    ext.extra_compile_args += ["-isystem", ffi, "-isystem", os.path.join(dnnl, "include")]
    ext.library_dirs.append(_wheel_dir("onednn-cpu-gomp", "libdnnl.so.3"))


class OptionalBuildExt(build_ext):
    """``build_ext`` that finds headers and libraries at build time and never fails the install.

    An extension that cannot be built is dropped from the list, so that an editable install
    does not look for its output.
    """

    def build_extensions(self) -> None:
        built = []
        for ext in self.extensions:
            try:
                _configure(ext)
                self.build_extension(ext)
                built.append(ext)
            except Exception as e:  # optional: jaxnet runs on XLA without it
                print(f"jaxnet: not building the oneDNN convolutions ({e}); XLA's will run")
        self.extensions = built


setup(
    ext_modules=[
        Extension(
            "jaxnet.backends._onednn_conv",
            sources=["jaxnet/backends/onednn_conv.cc"],
            libraries=["dnnl", "gomp"],
            extra_compile_args=["-std=c++17", "-O2", "-fvisibility=hidden"],
            language="c++",
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
