#!/bin/sh
# The demo of the README's first command: a container from the built-in busybox image under
# systemd, seen through systemd's own tools. Runs where systemd is PID 1 (the host, or the
# systemd test host).
set -eu
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

say pymachine run --rm --name demo --memory 64M busybox sh -c "'echo hello; hostname; sleep 3'"
pymachine run --rm --name demo --memory 64M busybox sh -c 'echo hello; hostname; sleep 3' &
run=$!
i=0
until machinectl show demo >/dev/null 2>&1; do i=$((i + 1)); [ $i -lt 100 ] || break; sleep 0.05; done
sleep 0.5  # let the container finish its setup, so machined reads its os-release
say machinectl list
machinectl list --no-pager
say systemctl show machine-demo.scope -p Slice -p MemoryMax
systemctl show machine-demo.scope -p Slice -p MemoryMax
wait $run
say journalctl CONTAINER_NAME=demo -o cat
journalctl CONTAINER_NAME=demo -o cat --no-pager
say pymachine run --rm busybox sh -c "'exit 7'"
rc=0; pymachine run --rm busybox sh -c 'exit 7' || rc=$?
echo "exit status: $rc"
[ "$rc" = 7 ]
sleep 0.5  # let the container finish its setup, so machined reads its os-release
say machinectl list
machinectl list --no-pager
echo
echo "demo: OK"
