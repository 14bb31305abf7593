#!/usr/bin/env bash
# Tears the Tandem test bed down: kills its processes (pid files, then everything left in its
# namespaces), deletes the namespaces and the state dir. Idempotent; never fails.
#   TB=tdm testbed/down.sh
set -euo pipefail
# shellcheck source=testbed/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $EUID -eq 0 ]] || { echo "down.sh: must run as root" >&2; exit 1; }
tb_down
tb_log "down"
