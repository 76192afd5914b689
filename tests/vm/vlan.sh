# Guest side of tests/vm.rs's VLAN test: the agent (board x86_64-vm: VLANs on eth0) installs
# a feature from the host's nginx (10.0.2.2 is the host's loopback under QEMU user
# networking) and provisions its interface on the real 8021q kernel; the guest checks every
# object with busybox's ip, then checks that uninstalling left nothing.
start_agent --board x86_64-vm --listen 0.0.0.0:8080 --token-file /etc/nnc/token --catalogue /etc/nnc/catalogue.json || exit 0

ready  # the host installs, then says "check <instance id>"
set -- $NNC_HOST_SAID
id=$2
ns=/run/netns/nnc-$id
check vlan-device grep -q "nnc100v *| 100 *| $NNC_IF" /proc/net/vlan/config
check vlan-in-bridge sh -c 'readlink /sys/class/net/nnc100v/master | grep -q "/nnc100$"'
check bridge-address sh -c 'ip addr show dev nnc100 | grep -q "inet 10.99.100.1/24"'
# busybox's ip takes table numbers up to 255 only: list them all and look for ours.
check table-route sh -c 'ip route show table all | grep -q "default via 10.99.100.2 dev nnc100 table 1100"'
check table-name grep -q "^1100.nnc-tool-vm$" /etc/iproute2/rt_tables.d/nnc.conf
check service-netns test -e "$ns"
check service-address nsenter --net="$ns" sh -c 'ip addr show dev eth0 | grep -q "inet 10.99.100.2/24"'
check service-default-route nsenter --net="$ns" sh -c 'ip route | grep -q "default via 10.99.100.1"'
check service-reaches-router nsenter --net="$ns" ping -c 1 -W 3 10.99.100.1
check router-reaches-service ping -c 1 -W 3 10.99.100.2

ready  # the host uninstalls, then says "removed"
check no-vlan sh -c '! grep -q nnc /proc/net/vlan/config'
check no-links sh -c '! ls /sys/class/net | grep -q nnc'
check no-netns sh -c '[ -z "$(ls /run/netns 2>/dev/null)" ]'
check no-table-route sh -c '! ip route show table all | grep -q "table 1100"'
check no-table-name sh -c '! grep -q nnc-tool-vm /etc/iproute2/rt_tables.d/nnc.conf'

ready  # finish
check agent-alive kill -0 "$NNC_AGENT_PID"
