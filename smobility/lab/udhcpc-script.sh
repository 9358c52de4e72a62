#!/bin/sh
# smobility lab: the event script for busybox udhcpc in the mobile node's namespace.
#
# udhcpc runs it as "SCRIPT EVENT" with the lease in the environment
# ($interface, $ip, $mask = prefix length, $router, $serverid, $lease, ...).
#
# It only touches the interface udhcpc manages: its IPv4 addresses and its
# default route.  It never writes /etc/resolv.conf or anything else outside its
# own directory: a stock udhcpc/dhclient script would rewrite the host's
# resolv.conf from inside a network namespace (see /work/shared/PEERS.md).
#
# State goes next to the script (the lab copies it into its work directory),
# or into $SMOBILITY_LAB_STATE when set:
#   udhcpc.events   one line per event: "<unix time> <event> <ip/mask> <router>"
#   udhcpc.lease    the current lease as key=value lines, written last on
#                   bound/renew (so the address and route are in place once it
#                   exists) and removed on deconfig.

PATH=/usr/sbin:/usr/bin:/sbin:/bin
event=${1:-}
state=${SMOBILITY_LAB_STATE:-${0%/*}}
iface=${interface:-uplink}
# The default route gets a metric, so that a default route with a lower
# metric (a tunnel's) wins, and a renew's "replace" never overwrites it.
metric=100

log_event() {
    echo "$(date +%s.%N) $event ${ip:-}/${mask:-} ${router:-}" >> "$state/udhcpc.events"
}

case "$event" in
    deconfig)
        rm -f "$state/udhcpc.lease"
        ip -4 route flush dev "$iface" 2>/dev/null
        ip -4 addr flush dev "$iface" 2>/dev/null
        ip link set dev "$iface" up
        log_event
        ;;
    bound|renew)
        cidr="$ip/${mask:-24}"
        # Drop any other address first (a lease from an earlier network).
        ip -4 -o addr show dev "$iface" | while read -r _n _i _f addr _rest; do
            [ "$addr" = "$cidr" ] || ip -4 addr del "$addr" dev "$iface"
        done
        # "replace" leaves an unchanged address alone: a renew causes no netlink churn.
        ip -4 addr replace "$cidr" broadcast + dev "$iface"
        # shellcheck disable=SC2086 # $router may list several routers: take the first.
        set -- ${router:-}
        if [ -n "${1:-}" ]; then
            ip -4 route replace default via "$1" dev "$iface" metric "$metric"
        else
            ip -4 route del default dev "$iface" metric "$metric" 2>/dev/null
        fi
        tmp="$state/udhcpc.lease.tmp"
        {
            echo "event=$event"
            echo "interface=$iface"
            echo "ip=$ip"
            echo "mask=${mask:-24}"
            echo "router=${1:-}"
            echo "serverid=${serverid:-}"
            echo "lease=${lease:-}"
            echo "time=$(date +%s.%N)"
        } > "$tmp"
        mv -f "$tmp" "$state/udhcpc.lease"
        log_event
        ;;
    leasefail|nak)
        log_event
        ;;
    *)
        ;;
esac
exit 0
