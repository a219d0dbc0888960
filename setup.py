# The cffi extension (machinectl_py._native) is compiled at install time in cffi's
# out-of-line API mode, so importing it costs no C parsing at run time.
from setuptools import setup

setup(cffi_modules=["machinectl_py/_build_native.py:ffibuilder"])
