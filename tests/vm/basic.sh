# Guest side of tests/vm.rs: the agent runs as the router's service; the kernel offers what
# the interface factory (8021q VLANs) and the supervisor (cgroup v2 memory/pids/cpu) need.
case $(uname -m) in
  x86_64) board=x86_64-vm ;; aarch64) board=aarch64-vm ;; mips*) board=mt7621 ;; *) board=unknown ;;
esac
start_agent --board "$board" --listen 0.0.0.0:8080 --token-file /etc/nnc/token || exit 0
# Every boot after the first starts on a data dir that exists: timed too.
kill "$NNC_AGENT_PID"; wait "$NNC_AGENT_PID" 2>/dev/null
start_agent --board "$board" --listen 0.0.0.0:8080 --token-file /etc/nnc/token || exit 0
sleep 1; memory_report "idle, 1 s after its second start"

check vlan-create ip link add link "$NNC_IF" name vl100 type vlan id 100
check vlan-up ip link set vl100 up
check vlan-address ip addr add 192.0.2.1/24 dev vl100
check vlan-listed grep -q "vl100 *| 100 *| $NNC_IF" /proc/net/vlan/config

mkdir -p /sys/fs/cgroup
check cgroup2-mount mount -t cgroup2 none /sys/fs/cgroup
controllers=$(cat /sys/fs/cgroup/cgroup.controllers)
for c in memory pids cpu; do
  case " $controllers " in *" $c "*) result "cgroup-$c" 0 "$controllers" ;; *) result "cgroup-$c" 1 "$controllers" ;; esac
done
check cgroup-subtree sh -c 'echo "+cpu +memory +pids" > /sys/fs/cgroup/cgroup.subtree_control'
mkdir -p /sys/fs/cgroup/nnc-probe
echo 67108864 > /sys/fs/cgroup/nnc-probe/memory.max
echo 32 > /sys/fs/cgroup/nnc-probe/pids.max
echo "50000 100000" > /sys/fs/cgroup/nnc-probe/cpu.max
limits="$(cat /sys/fs/cgroup/nnc-probe/memory.max) $(cat /sys/fs/cgroup/nnc-probe/pids.max) $(cat /sys/fs/cgroup/nnc-probe/cpu.max)"
[ "$limits" = "67108864 32 50000 100000" ]; result cgroup-limits $? "$limits"

ready
check agent-alive-after-host-queries kill -0 "$NNC_AGENT_PID"
