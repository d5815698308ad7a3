"""Builds pyqueue._native: the C core in native/ compiled into the Cython module.

PYQUEUE_SANITIZE=1 builds with AddressSanitizer + UBSan (run the tests with
the ASan runtime preloaded); PYQUEUE_DEBUG=1 builds without optimisation.
"""
import os
from glob import glob

from Cython.Build import cythonize
from setuptools import Extension, setup

cflags = ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fvisibility=hidden"]
ldflags = ["-pthread"]
if os.environ.get("PYQUEUE_DEBUG"):
    cflags = [f for f in cflags if f != "-O2"] + ["-O0", "-g"]
if os.environ.get("PYQUEUE_SANITIZE"):
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]
    cflags += san
    ldflags += san

native_sources = sorted(glob("native/*.c"))

ext = Extension(
    "pyqueue._native",
    sources=["pyqueue/_native.pyx"] + native_sources,
    include_dirs=["native"],
    extra_compile_args=cflags,
    extra_link_args=ldflags,
)

setup(ext_modules=cythonize([ext], language_level=3, compiler_directives={"embedsignature": True}))
