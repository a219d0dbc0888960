"""pymachine: containers as systemd units.

The package reads top-down as the life of a container:
cli -> spec -> images -> plan -> syscalls/mounts/namespaces -> bus/systemd/machined -> journal.
Modules above ``syscalls`` and ``bus`` make no system calls of their own and are unit-testable.
"""

__version__ = "0.1.0"
