"""`pymachine commit`: the image store's commit, with the systemd layer's freezer.

The image store makes no D-Bus calls (an import-linter contract holds it to that), so the
verb hands it the way to freeze a running container's unit while its upper dir is read.
"""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from machinectl_py.freezer import frozen_unit
    from machinectl_py.images.cli import main_commit

    return main_commit(argv, freeze=frozen_unit)
