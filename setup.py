"""Maps the repository's layers into the one ``textfleet`` namespace and builds the
native core (csrc/) into the extension module ``textfleet.engine._native``.

Everything else about the distribution lives in pyproject.toml; this file
exists because the extension needs pybind11's build helpers and because the
layers keep their top-level folders: ``engine/`` is ``textfleet.engine``,
``serve/`` is ``textfleet.serve``, ``models/`` is ``textfleet.models``, and
``textfleet/`` holds the public API and the CLI. Subpackages are found, not
listed, so a new one ships without an edit here; so are folders holding only
data files (``serve/dashboards/``, ``models/samples/``): setuptools takes every
folder below a package for an importable namespace package, and one missing
from ``packages`` draws a warning on every build. pyproject.toml's
package-data names the files of each.
"""

from glob import glob

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import find_namespace_packages, setup

LAYERS = {
    "textfleet": "textfleet",
    "textfleet.engine": "engine",
    "textfleet.models": "models",
    "textfleet.serve": "serve",
}

packages = []
for package, folder in LAYERS.items():
    packages.append(package)
    found = find_namespace_packages(folder, exclude=["__pycache__", "*.__pycache__"])
    packages += [f"{package}.{sub}" for sub in found]

# Compile the C++ translation units on all cores; a fresh build is otherwise
# dominated by the generated Unicode tables.
ParallelCompile("TEXTFLEET_BUILD_JOBS", default=0).install()

native = Pybind11Extension(
    "textfleet.engine._native",
    sorted(glob("csrc/*.cc")),
    include_dirs=["csrc"],
    cxx_std=17,
    extra_compile_args=["-O3", "-Wall", "-Wextra", "-fvisibility=hidden"],
    extra_link_args=["-pthread"],
)

setup(
    packages=packages,
    package_dir=LAYERS,
    ext_modules=[native],
    cmdclass={"build_ext": build_ext},
)
