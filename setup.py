"""Builds the optional compiled NAT fast path (gw/_fastpath.pyx, gw/_mapping.pyx).

All other metadata is in pyproject.toml.

The extension is optional: without a C compiler (or without Cython) the install still succeeds and gw runs
the pure-Python fast paths (``gw.nat.COMPILED`` is then False).
"""

from setuptools import Extension, setup

try:
    from Cython.Build import cythonize
except ImportError:  # no Cython: pure-Python install
    ext_modules = []
else:
    ext_modules = cythonize(
        [Extension("gw._fastpath", ["gw/_fastpath.pyx"]), Extension("gw._mapping", ["gw/_mapping.pyx"])],
        compiler_directives={"language_level": 3},
    )
    for ext in ext_modules:
        ext.optional = True  # a failed compile is a warning, not a failed install (cythonize drops this flag)

setup(ext_modules=ext_modules)
