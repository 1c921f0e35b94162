#!/bin/sh
# busybox udhcpc calls this with $1 = deconfig | bound | renew | leasefail | nak and the lease in
# the environment ($interface, $ip, $mask = prefix length, $router). It applies the lease and
# tells the test on the console (lab/guest/init describes the markers).
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    if [ -n "$router" ]; then
      for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
    fi
    echo "LEASE $ip/${mask:-24} $1" >/dev/console
    ;;
esac
exit 0
