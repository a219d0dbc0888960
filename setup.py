# The cffi extensions (machinectl_py._native, machinectl_py._sys) are compiled at install time in cffi's
# out-of-line API mode, so importing it costs no C parsing at run time.
import os

from setuptools import setup
from setuptools.command.build_py import build_py

TEMPLATE = os.path.join("units", "pymachine@.service")


HELPER_SOURCE = os.path.join("machinectl_py", "helper", "exec_helper.c")
HELPER = "exec-helper"
# Static, no libc, no start files: a few KiB that the payload copies into a sealed memfd.
HELPER_FLAGS = ["-static", "-nostdlib", "-nostartfiles", "-Os", "-fno-stack-protector",
                "-fno-asynchronous-unwind-tables", "-fno-builtin", "-no-pie", "-Wl,--build-id=none", "-s",
                "-Wall", "-Werror"]


class BuildPyWithTemplate(build_py):
    """units/pymachine@.service is the template's one source; an installed pymachine (a wheel
    has no units/ directory) reads the copy made here into its package (unit_template.py).
    The exec helper (machinectl_py/helper/exec_helper.c, see payload.py) is compiled here
    into data/; an editable install gets it in the source tree's data/ (git ignores it)."""

    def run(self) -> None:
        super().run()
        target = os.path.join(self.build_lib, "machinectl_py", "data")
        self.mkpath(target)
        self.copy_file(TEMPLATE, target)
        self.build_helper(target)
        if getattr(self, "editable_mode", False):
            self.build_helper(os.path.join("machinectl_py", "data"))

    def build_helper(self, target: str) -> None:
        import platform
        import subprocess

        if platform.machine() not in ("x86_64", "aarch64"):
            return  # payload.py execs the command directly there (README, Security)
        cc = os.environ.get("CC", "cc")
        subprocess.run([cc, *HELPER_FLAGS, "-o", os.path.join(target, HELPER), HELPER_SOURCE], check=True)


setup(cffi_modules=["machinectl_py/_build_native.py:ffibuilder", "machinectl_py/_build_native.py:sysbuilder"],
      cmdclass={"build_py": BuildPyWithTemplate})
