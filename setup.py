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
    """The folder of an installed wheel's data file ``marker`` (e.g. ``include/dnnl.hpp``)."""
    for f in importlib.metadata.files(dist) or []:
        if f.as_posix().endswith(marker):
            return str(Path(f.locate()).resolve().parents[marker.count("/")])
    raise FileNotFoundError(f"{dist} has no {marker}")


class OptionalBuildExt(build_ext):
    """``build_ext`` that finds the headers and libraries at build time and never fails."""

    def build_extension(self, ext: Extension) -> None:
        try:
            if sys.platform != "linux" or platform.machine() != "x86_64":
                raise RuntimeError(f"built only on Linux x86_64, not {sys.platform}")
            jaxlib = importlib.util.find_spec("jaxlib")
            if jaxlib is None or not jaxlib.submodule_search_locations:
                raise RuntimeError("jaxlib (for the XLA FFI headers) is not installed")
            ffi = os.path.join(jaxlib.submodule_search_locations[0], "include")
            dnnl = _wheel_dir("onednn-devel-cpu-gomp", "include/oneapi/dnnl/dnnl.hpp")
            lib = _wheel_dir("onednn-cpu-gomp", "lib/libdnnl.so.3")
            # -isystem: the FFI headers warn under g++; they are not ours to fix.
            ext.extra_compile_args += ["-isystem", ffi, "-isystem", os.path.join(dnnl, "include")]
            ext.library_dirs.append(os.path.join(lib, "lib"))
            super().build_extension(ext)
        except Exception as e:  # the extension is optional: jaxnet runs on XLA without it
            print(f"jaxnet: not building the oneDNN convolutions ({e}); XLA's will run")


setup(
    ext_modules=[
        Extension(
            "jaxnet.backends._onednn_conv",
            sources=["jaxnet/backends/onednn_conv.cc"],
            libraries=["dnnl"],
            extra_compile_args=["-std=c++17", "-O2", "-fvisibility=hidden"],
            language="c++",
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
