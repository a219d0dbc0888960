"""pymachine's OCI runtime face: runc's command line over an OCI bundle (`pymachine-runc`).

containerd's runc shim (and so Kubernetes through CRI) calls it as it calls runc: `create`
holds the container's init set up in its namespaces, in a systemd scope registered with
machined; `start` releases it; `state`, `kill`, `delete`, `exec`, `ps`, `pause` follow.

  config.py    the bundle's config.json -> an OciConfig (pure: parsing, validation, unit properties)
  store.py     the runtime's state under --root: one directory per container, locked
  runtime.py   the verbs, on the shared launch kit (launch.HeldInit, container_init, payload)
  cli.py       runc's flags and messages
"""
