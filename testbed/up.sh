#!/usr/bin/env bash
# Builds the Tandem test bed: client, vcn router, llb1 [llb2], ep1, ep2 (see lib.sh).
#   TB=tdm NODES=1 TANDEM_ECHO=.build/debug/tandem-echo testbed/up.sh
# Refuses if a test bed with this TB already exists, unless FORCE=1 (then it is torn down first).
# Does not start the Tandem daemon. On any failure everything it made is torn down again.
set -euo pipefail
# shellcheck source=testbed/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $EUID -eq 0 ]] || { echo "up.sh: must run as root" >&2; exit 1; }
tb_check_name

if tb_exists; then
    if [[ "${FORCE:-0}" == 1 ]]; then
        tb_log "test bed exists; FORCE=1, tearing it down first"
        tb_down
    else
        tb_die "test bed '$TB' already exists (run TB=$TB testbed/down.sh, or FORCE=1)"
        exit 1
    fi
fi

_up_done=0
_up_cleanup() {
    local rc=$?
    if [[ $_up_done != 1 ]]; then
        tb_log "up failed (exit $rc); tearing down"
        tb_down
    fi
}
trap _up_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

tb_up
_up_done=1
tb_summary
