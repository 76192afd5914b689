# Helpers for guest test scripts (sourced). Results go to the console as JSON lines the host
# parses: NNC:RESULT {"name": ..., "ok": true|false, "detail": ...}
uptime_s() { cut -d' ' -f1 /proc/uptime; }

json_str() { printf '%s' "$1" | tr '\n\t' '  ' | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g'; }

# result NAME OK(0|1 or true|false) [DETAIL]
result() {
  case $2 in 0|true) ok=true ;; *) ok=false ;; esac
  echo "NNC:RESULT {\"name\": \"$1\", \"ok\": $ok, \"detail\": \"$(json_str "${3:-}")\"}"
}

# check NAME CMD...: runs CMD, reports its success and output.
check() {
  name=$1; shift
  out=$("$@" 2>&1); rc=$?
  result "$name" $rc "$out"
  return $rc
}

# start_agent ARGS...: starts the agent as the router would (in the background, logging to
# /tmp/agent.log), waits until /health answers, reports exec->serving time.
start_agent() {
  t0=$(uptime_s)
  /usr/bin/nnc-agent serve "$@" >/tmp/agent.out 2>/tmp/agent.log &
  NNC_AGENT_PID=$!
  i=0
  while [ $i -lt 600 ]; do
    if wget -q -O /dev/null http://127.0.0.1:8080/health 2>/dev/null; then
      t1=$(uptime_s)
      NNC_STARTS=$((${NNC_STARTS:-0} + 1))
      echo "NNC:TIMING {\"exec_to_serving_s\": $(awk "BEGIN {print $t1 - $t0}"), \"start\": $NNC_STARTS}"
      return 0
    fi
    kill -0 $NNC_AGENT_PID 2>/dev/null || break
    usleep 50000; i=$((i + 1))
  done
  result agent-serving 1 "$(tail -5 /tmp/agent.log)"
  return 1
}

# memory_report: the agent's resident memory now (a figure for the host's report, not a check).
memory_report() {
  kib() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$NNC_AGENT_PID/status"; }
  echo "NNC:MEMORY VmRSS $(kib VmRSS) KiB (RssAnon $(kib RssAnon), RssFile $(kib RssFile)) $1"
}

# ready: tells the host the guest is serving and waits (bounded) until the host says finish.
# ready: tells the host the guest waits for it, then waits (bounded) for the host's next line,
# left in $NNC_HOST_SAID. The listener answers "ack" so the host knows the line arrived (QEMU's
# hostfwd accepts a connection even when nothing listens in the guest yet). A script may call
# ready several times: the host answers each in turn.
ready() {
  echo ack > /tmp/ack
  : > /tmp/host-said
  timeout 240 nc -l -p 9000 < /tmp/ack > /tmp/host-said 2>/dev/null &
  nc_pid=$!
  usleep 100000
  echo "NNC:READY"
  wait $nc_pid
  NNC_HOST_SAID=$(cat /tmp/host-said 2>/dev/null)
  echo "NNC:HOST $NNC_HOST_SAID"
}
