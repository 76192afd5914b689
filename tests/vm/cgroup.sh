# Guest side of tests/vm.rs's cgroup test: services under cgroup v2 limits on a real kernel.
mkdir -p /sys/fs/cgroup
mount -t cgroup2 none /sys/fs/cgroup
start_agent --config /etc/nnc/nnc.toml || exit 0

ready  # the host installs a memory hog, a fork bomb and a capped sleeper, then says "check HOG BOMB CAPPED"
set -- $NNC_HOST_SAID
hog=$2; bomb=$3; capped=$4
cg=/sys/fs/cgroup/nnc
check oom-killed-in-its-cgroup sh -c 'dmesg | grep -q "Memory cgroup out of memory"'
check bomb-pids-max sh -c "[ \$(cat $cg/$bomb/pids.max) = 16 ]"
check bomb-pids-capped sh -c "[ \$(cat $cg/$bomb/pids.current) -le 16 ]"
check bomb-forks-refused sh -c "grep -q 'max [1-9]' $cg/$bomb/pids.events"
check capped-cpu-max sh -c "[ \"\$(cat $cg/$capped/cpu.max)\" = '25000 100000' ]"
check capped-memory-max sh -c "[ \$(cat $cg/$capped/memory.max) = 33554432 ]"
check agent-alive kill -0 "$NNC_AGENT_PID"

ready  # finish
