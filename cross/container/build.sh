#!/usr/bin/env bash
# Builds a RouterOS container image (docker-archive tarball, what RouterOS v7
# '/container/add file=' accepts) from the static binary, with plain tar, sha256sum and JSON:
#   dist/container/nnc-agent-<arch>.tar     arch: arm64, arm (v7), amd64
# One layer: /usr/bin/nnc-agent, the CA bundle for https downloads, /data (the volume to mount),
# /tmp. Entrypoint 'nnc-agent serve', listening on 0.0.0.0:8080 inside the container.
# usage: build.sh [TARGET...]   (default: the three container targets)
set -euo pipefail
cd "$(dirname "$0")/../.."
source cross/env.sh
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf x86_64-unknown-linux-musl)
version=$(awk -F'"' '/^version *=/ {print $2; exit}' Cargo.toml)
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
ca=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca" ] || { echo "container/build.sh: $ca missing (apt-get install ca-certificates)" >&2; exit 1; }
out="$NNC_DIST/container"
mkdir -p "$out"

for t in "${targets[@]}"; do
  case $t in
    aarch64-*) arch=arm64; variant=v8; board=mikrotik-arm64 ;;
    armv7-*) arch=arm; variant=v7; board= ;;
    x86_64-*) arch=amd64; variant=; board= ;;
    *) echo "container/build.sh: no container for $t" >&2; exit 1 ;;
  esac
  bin="$NNC_DIST/$t/nnc-agent"
  [ -f "$bin" ] || { echo "container/build.sh: $bin missing (run cross/build.sh $t)" >&2; exit 1; }
  work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/root/usr/bin" "$work/root/etc/ssl/certs" "$work/root/data" "$work/root/tmp" "$work/img"
  install -m 0755 "$bin" "$work/root/usr/bin/nnc-agent"
  install -m 0644 "$ca" "$work/root/etc/ssl/certs/ca-certificates.crt"
  chmod 0755 "$work/root/data"; chmod 1777 "$work/root/tmp"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$work/root" -cf "$work/layer.tar" usr etc data tmp
  layer_sha=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
  cmd='"--listen", "0.0.0.0:8080", "--data-dir", "/data"'
  [ -n "$board" ] && cmd="$cmd, \"--board\", \"$board\""
  variant_json=""; [ -n "$variant" ] && variant_json="\"variant\": \"$variant\", "
  cat > "$work/config.json" <<JSON
{"architecture": "$arch", ${variant_json}"os": "linux", "created": "$created",
 "config": {"Entrypoint": ["/usr/bin/nnc-agent", "serve"], "Cmd": [$cmd],
  "Env": ["PATH=/usr/bin:/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
  "WorkingDir": "/data", "Volumes": {"/data": {}}, "ExposedPorts": {"8080/tcp": {}},
  "Labels": {"org.opencontainers.image.title": "nnc-agent", "org.opencontainers.image.version": "$version"}},
 "rootfs": {"type": "layers", "diff_ids": ["sha256:$layer_sha"]},
 "history": [{"created": "$created", "created_by": "nnc-agent cross/container/build.sh"}]}
JSON
  config_sha=$(sha256sum "$work/config.json" | cut -d' ' -f1)
  tag="nnc-agent:$version-$arch"
  mkdir -p "$work/img/$layer_sha"
  mv "$work/layer.tar" "$work/img/$layer_sha/layer.tar"
  echo "1.0" > "$work/img/$layer_sha/VERSION"
  printf '{"id": "%s", "created": "%s", "architecture": "%s", "os": "linux"}\n' "$layer_sha" "$created" "$arch" > "$work/img/$layer_sha/json"
  cp "$work/config.json" "$work/img/$config_sha.json"
  printf '[{"Config": "%s.json", "RepoTags": ["%s"], "Layers": ["%s/layer.tar"]}]\n' "$config_sha" "$tag" "$layer_sha" > "$work/img/manifest.json"
  printf '{"nnc-agent": {"%s": "%s"}}\n' "$version-$arch" "$layer_sha" > "$work/img/repositories"
  image="$out/nnc-agent-$arch.tar"
  # Member names without a leading "./", as 'docker save' writes them.
  (cd "$work/img" && tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
    -cf "$image" manifest.json repositories "$config_sha.json" "$layer_sha")
  rm -rf "$work"; trap - EXIT
  echo "container/build.sh: $image ($tag)"
done
