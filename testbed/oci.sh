# shellcheck shell=bash
# The fake OCI for the test bed. Source after lib.sh; needs TB_STATE, FAKE_OCI.
#
# oci_up: makes an API signing key and an OCI config file ($TB_STATE/oci/config, as the seed mounts
# ~/.oci/config into each node), starts fake-oci inside the vcn namespace on 10.0.10.1:18443 (the
# nodes reach it over the test bed's links; nothing leaves the machine), and hooks every successful
# private-IP move to rewrite the vcn's /32 route for the floating IP, as OCI's fabric would.
# Sets OCI_API (the Core API base URL; IMDS per node is $OCI_API/imds/<node>).

OCI_PORT="${OCI_PORT:-18443}"

oci_up() {
    local dir="$TB_STATE/oci" fp
    mkdir -p "$dir"
    chmod 700 "$dir"
    ( umask 077; openssl genrsa -out "$dir/api_key.pem" 2048 2>/dev/null )
    openssl rsa -in "$dir/api_key.pem" -pubout -out "$dir/api_key_public.pem" 2>/dev/null
    fp="$(openssl rsa -in "$dir/api_key.pem" -pubout -outform DER 2>/dev/null | openssl md5 -c | awk '{print $NF}')"
    cat >"$dir/config" <<CFG
[DEFAULT]
user=ocid1.user.oc1..aaaaaaaatandemtestbeduser
fingerprint=$fp
tenancy=ocid1.tenancy.oc1..aaaaaaaatandemtestbedtenancy
region=us-ashburn-1
key_file=$dir/api_key.pem
CFG
    chmod 600 "$dir/config"
    OCI_API="http://$TB_GW_HOSTS:$OCI_PORT"
    setsid ip netns exec "$(tb_ns vcn)" "$FAKE_OCI" --host "$TB_GW_HOSTS" --port "$OCI_PORT" \
        --public-key "$dir/api_key_public.pem" --verbose ${OCI_FAULTS:+--fault "$OCI_FAULTS"} \
        --on-move "bash -c 'source $TB_REPO/testbed/lib.sh; TB=$TB tb_route_vip {instance} {ip}'" \
        </dev/null >"$dir/fake-oci.log" 2>&1 &
    echo $! >"$dir/fake-oci.pid"
    tb_wait_for 15 "fake-oci" grep -q "listening on" "$dir/fake-oci.log"
}
