# The cffi extension (machinectl_py._native) is compiled at install time in cffi's
# out-of-line API mode, so importing it costs no C parsing at run time.
import os

from setuptools import setup
from setuptools.command.build_py import build_py

TEMPLATE = os.path.join("units", "pymachine@.service")


class BuildPyWithTemplate(build_py):
    """units/pymachine@.service is the template's one source; an installed pymachine (a wheel
    has no units/ directory) reads the copy made here into its package (unit_template.py)."""

    def run(self) -> None:
        super().run()
        target = os.path.join(self.build_lib, "machinectl_py", "data")
        self.mkpath(target)
        self.copy_file(TEMPLATE, target)


setup(cffi_modules=["machinectl_py/_build_native.py:ffibuilder"], cmdclass={"build_py": BuildPyWithTemplate})
