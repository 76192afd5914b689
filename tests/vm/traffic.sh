# Guest side of tests/vm.rs's traffic test on a real 802.1Q VLAN: a LAN client namespace
# sends tagged frames over a veth "cable" into the router (the agent's VLAN parent, lan0); an
# "internet" namespace behind the router's wan0 serves a page with busybox httpd. The host
# installs sing-box; the client fetches the page through it as an HTTP proxy. Then a plain
# client on the untagged LAN is routed through the instance (routeDevices; the host's nft in
# the guest): the page arrives from the service, and directly again after the uninstall.
peer_of() { ip -o link show | sed -n "s/^[0-9]*: \([^@:]*\)@$1:.*/\1/p"; }

mkdir -p /www && echo "hello from the internet" > /www/hello.txt
unshare -n sleep 900 & INET=$!
unshare -n sleep 900 & LAN=$!
usleep 300000
ip link add name wan0 type veth
wp=$(peer_of wan0)
ip link set "$wp" netns $INET
ip addr add 198.51.100.1/24 dev wan0
ip link set wan0 up
nsenter -t $INET -n sh -c "ip link set lo up; ip addr add 198.51.100.2/24 dev $wp; ip link set $wp up; ip route add default via 198.51.100.1; httpd -f -vv -p 198.51.100.2:80 -h /www 2>/tmp/httpd.log &"
echo 1 > /proc/sys/net/ipv4/ip_forward
ip link add name lan0 type veth
lp=$(peer_of lan0)
ip link set "$lp" netns $LAN
ip link set lan0 up
start_agent --config /etc/nnc/nnc.toml || exit 0

ready  # the host installs sing-box, then says "check VLAN SERVICE_ADDRESS"
set -- $NNC_HOST_SAID
vlan=$2; svc=$3
nsenter -t $LAN -n sh -c "ip link set lo up; ip link set $lp up; ip link add link $lp name c$vlan type vlan id $vlan; ip addr add 10.99.$vlan.50/24 dev c$vlan; ip link set c$vlan up"
check vlan-on-lan0 grep -q "nnc${vlan}v *| $vlan *| lan0" /proc/net/vlan/config
check client-reaches-service nsenter -t $LAN -n ping -c 1 -W 5 "$svc"
# A plain HTTP proxy request (busybox wget crashes with http_proxy in this initramfs).
check lan-through-sing-box nsenter -t $LAN -n sh -c "printf 'GET http://198.51.100.2/hello.txt HTTP/1.0\\r\\nHost: 198.51.100.2\\r\\n\\r\\n' | nc -w 20 $svc 2080 | grep 'hello from the internet'"
check server-saw-the-service grep -q "^$svc:" /tmp/httpd.log
# Without the tag the client is not on the segment.
check untagged-is-not-the-segment nsenter -t $LAN -n sh -c "ip link del c$vlan && ip addr add 10.99.$vlan.60/24 dev $lp && ! ping -c 1 -W 2 $svc"

# Device routing: a plain LAN client on the untagged LAN (lan0, 192.0.2.0/24), no proxy set,
# routed by its MAC address.
nsenter -t $LAN -n sh -c "ip addr flush dev $lp; ip link set $lp down; ip link set $lp address 02:00:5e:10:00:0a; ip link set $lp up; ip addr add 192.0.2.10/24 dev $lp; ip route add default via 192.0.2.1"
ip addr add 192.0.2.1/24 dev lan0
get() { nsenter -t $LAN -n sh -c "printf 'GET /hello.txt HTTP/1.0\\r\\nHost: 198.51.100.2\\r\\n\\r\\n' | nc -w 20 198.51.100.2 80 | grep -q 'hello from the internet'"; }
direct_seen() { get && grep -q '^192.0.2.10:' /tmp/httpd.log; }
via_service() { get && grep -q "^$svc:" /tmp/httpd.log; }
: > /tmp/httpd.log
check lan-direct-before-routing direct_seen
# The owner's flowtable, as OpenWrt fw4's flow_offloading makes it: a connection the client
# holds open is offloaded (its packets skip the forward chain: the counter stops while its
# ticks still arrive). Once the client is routed, nothing more of it may arrive directly.
cat > /tmp/owner.nft <<NFT
table inet owner_ft {
  flowtable ft { hook ingress priority filter; devices = { lan0, wan0 }; }
  chain forward_ft { type filter hook forward priority filter; policy accept; meta l4proto tcp counter flow add @ft; }
}
NFT
nft -f /tmp/owner.nft
# (its stdin never ends: busybox nc quits at the end of its stdin)
nsenter -t $INET -n sh -c "sleep 900 | nc -l -p 81 > /tmp/ticks.log 2>/dev/null &"
usleep 300000
nsenter -t $LAN -n sh -c "(while :; do echo tick; usleep 100000; done) | nc 198.51.100.2 81 >/dev/null 2>&1 &"
fwd_packets() { nft list chain inet owner_ft forward_ft | sed -n 's/.*counter packets \([0-9]*\).*/\1/p'; }
ticks() { wc -c < /tmp/ticks.log; }
offloaded() {
  sleep 2; p1=$(fwd_packets); t1=$(ticks); sleep 2; p2=$(fwd_packets); t2=$(ticks)
  echo "forward chain packets $p1 -> $p2, ticks bytes $t1 -> $t2"; [ "$p1" = "$p2" ] && [ "$t2" -gt "$t1" ]
}
check connection-offloaded offloaded
ready  # the host routes the client's MAC through the instance, then says "routed"
ended() { sleep 1; t1=$(ticks); sleep 3; t2=$(ticks); echo "ticks bytes $t1 -> $t2"; [ "$t1" = "$t2" ]; }
check offloaded-connection-ended ended
: > /tmp/httpd.log
check routed-lan-through-sing-box via_service
check routed-not-seen-directly sh -c "! grep -q '^192.0.2.10:' /tmp/httpd.log"

ready  # the host uninstalls, then says "removed"
: > /tmp/httpd.log
check unrouted-after-uninstall direct_seen
check no-vlan sh -c '! grep -q nnc /proc/net/vlan/config'
check no-links sh -c '! ls /sys/class/net | grep -q nnc'
check lan0-stays test -e /sys/class/net/lan0

ready  # finish
kill $INET $LAN 2>/dev/null
check agent-alive kill -0 "$NNC_AGENT_PID"
