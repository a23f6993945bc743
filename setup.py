"""Builds the native core (csrc/) into the extension module ``engine._native``.

Everything else about the distribution lives in pyproject.toml; this file only
exists because the extension needs pybind11's build helpers.
"""

from glob import glob

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

# Compile the C++ translation units on all cores; a fresh build is otherwise
# dominated by the generated Unicode tables.
ParallelCompile("TEXTFLEET_BUILD_JOBS", default=0).install()

native = Pybind11Extension(
    "engine._native",
    sorted(glob("csrc/*.cc")),
    include_dirs=["csrc"],
    cxx_std=17,
    extra_compile_args=["-O3", "-Wall", "-Wextra", "-fvisibility=hidden"],
    extra_link_args=["-pthread"],
)

setup(ext_modules=[native], cmdclass={"build_ext": build_ext})
