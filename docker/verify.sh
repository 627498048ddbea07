#!/usr/bin/env bash
# Builds docker/Dockerfile with a real container engine (podman) and checks the image as a user
# would run it: /readyz, one generation, the uid it runs as, the HEALTHCHECK, a hot adapter
# upload, a read-only root filesystem (as deploy/kubernetes runs it), a clean exit on SIGTERM,
# and its size over the base image. Prints TAP (test/docker/verify.test.ts runs it under tap).
#
# No image registry is reachable here, so node:20-slim is a stand-in built once with mmdebstrap
# from Debian bookworm plus this machine's node, npm and CA bundle, and kept between runs. The
# built image and containers are removed on exit (KEEP_IMAGE=1 keeps the image).
# Needs: podman runc mmdebstrap (apt-get install -y podman runc mmdebstrap), curl, node.
# Exit 0 when every check passed or when no container can run here (then the plan says SKIP).
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=docker.io/library/node:20-slim
IMAGE=localhost/softprompt-server:verify-$$
NAME=sps-verify-$$
SIZE_BUDGET_MB=${SIZE_BUDGET_MB:-450}
ADMIN_TOKEN=verify-$RANDOM$RANDOM
STATE=${XDG_CACHE_HOME:-$HOME/.cache}/softprompt-verify
WORK=$(mktemp -d)
n=0
failed=0

echo 'TAP version 14'
ok() { n=$((n + 1)); echo "ok $n - $*"; }
not_ok() { n=$((n + 1)); failed=1; echo "not ok $n - $*"; }
note() { sed 's/^/# /' "$@"; }
skip_all() { echo "1..0 # SKIP $*"; exit 0; }
# A check that later ones depend on failed: show why, close the plan and stop.
fatal() { not_ok "$1"; [ -n "${2:-}" ] && [ -s "$2" ] && tail -n 40 "$2" | note; echo "1..$n"; exit 1; }
check() { if [ "$2" = "$3" ]; then ok "$1"; else not_ok "$1 (got '$2', want '$3')"; fi; }

cleanup() {
  for c in "$NAME" "$NAME-ro"; do podman rm -f -v --ignore -t 0 "$c" >/dev/null 2>&1 || true; done
  [ "${KEEP_IMAGE:-}" = 1 ] || podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# This sandbox's quirks (harmless elsewhere): no ulimits to copy into containers, no systemd for
# cgroups, and runc rather than crun. A CONTAINERS_CONF of the caller's own is respected.
if [ -z "${CONTAINERS_CONF:-}" ]; then
  mkdir -p "$STATE"
  export CONTAINERS_CONF=$STATE/containers.conf
  printf '[containers]\ndefault_ulimits = []\n[engine]\ncgroup_manager = "cgroupfs"\nruntime = "runc"\n' >"$CONTAINERS_CONF"
fi

command -v podman >/dev/null || skip_all 'podman is not installed (apt-get install -y podman runc mmdebstrap)'
podman info >"$WORK/info" 2>&1 || skip_all "podman does not work here: $(tail -n 1 "$WORK/info")"

# The stand-in base image, built once: Debian minbase, the machine's node and npm under /usr/local,
# a `node` user with uid 1000 as in the real image, and the machine's CA bundle for the npm registry
# (reached through a TLS-intercepting proxy whose CA this machine trusts). After a node upgrade,
# `podman rmi docker.io/library/node:20-slim` makes the next run build it again.
if podman image exists "$BASE"; then
  label=$(podman image inspect --format '{{with .Labels}}{{index . "stand-in"}}{{end}}' "$BASE" 2>/dev/null || true)
  ok "base image $BASE: present${label:+ (stand-in: $label)}"
else
  command -v mmdebstrap >/dev/null || skip_all "no $BASE image and no mmdebstrap to build a stand-in"
  node_bin=$(readlink -f "$(command -v node)")
  npm_dir=$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")
  ca=${NODE_EXTRA_CA_CERTS:-/etc/ssl/certs/ca-certificates.crt}
  what="mmdebstrap bookworm + node $(node --version)"
  started=$SECONDS
  if mmdebstrap --variant=minbase --include=ca-certificates \
    --customize-hook="copy-in $node_bin /usr/local/bin" \
    --customize-hook="mkdir -p \"\$1/usr/local/lib/node_modules\" && cp -a $npm_dir \"\$1/usr/local/lib/node_modules/npm\"" \
    --customize-hook='ln -s ../lib/node_modules/npm/bin/npm-cli.js "$1/usr/local/bin/npm" && ln -s ../lib/node_modules/npm/bin/npx-cli.js "$1/usr/local/bin/npx"' \
    --customize-hook='echo "node:x:1000:1000::/home/node:/bin/sh" >>"$1/etc/passwd" && echo "node:x:1000:" >>"$1/etc/group" && mkdir -p "$1/home/node" && chown 1000:1000 "$1/home/node"' \
    --customize-hook="cp $ca \"\$1/usr/local/share/host-ca-bundle.crt\"" \
    bookworm - 2>"$WORK/mmdebstrap.log" |
    podman import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV NODE_EXTRA_CA_CERTS=/usr/local/share/host-ca-bundle.crt' \
      --change "LABEL stand-in=\"$what\"" \
      --change 'CMD ["node"]' - "$BASE" >"$WORK/import.log" 2>&1; then
    ok "base image $BASE: stand-in built in $((SECONDS - started)) s ($what)"
  else
    cat "$WORK/import.log" >>"$WORK/mmdebstrap.log"
    podman rmi -f "$BASE" >/dev/null 2>&1 || true
    fatal "base image $BASE: the stand-in could not be built" "$WORK/mmdebstrap.log"
  fi
fi
podman run --rm --network=host "$BASE" true >"$WORK/probe" 2>&1 ||
  skip_all "podman cannot start a container here: $(tail -n 1 "$WORK/probe")"

started=$SECONDS
# --format docker keeps the HEALTHCHECK (the OCI format has none); host network: the npm registry;
# --layers=false leaves no intermediate images behind (the npm cache mount keeps reruns quick).
podman build --layers=false --format docker --network=host --pull=never -f docker/Dockerfile -t "$IMAGE" . >"$WORK/build.log" 2>&1 ||
  fatal 'podman build -f docker/Dockerfile' "$WORK/build.log"
ok "podman build -f docker/Dockerfile ($((SECONDS - started)) s)"

size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
base_size=$(podman image inspect --format '{{.Size}}' "$BASE")
over=$(((size - base_size) / 1000000))
echo "# image size: $((size / 1000000)) MB, base $((base_size / 1000000)) MB, $over MB over the base"
if [ "$over" -le "$SIZE_BUDGET_MB" ]; then ok "image is $over MB over the base (budget $SIZE_BUDGET_MB MB)"; else not_ok "image is $over MB over the base (budget $SIZE_BUDGET_MB MB)"; fi

free_port() { node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }
# Waits for /readyz on port $1; prints the seconds it took.
wait_ready() {
  local t0=$SECONDS
  for _ in $(seq 240); do
    curl -fsS -o /dev/null "http://127.0.0.1:$1/readyz" 2>/dev/null && { echo $((SECONDS - t0)); return 0; }
    podman container exists "$2" && [ "$(podman inspect --format '{{.State.Running}}' "$2")" = true ] || return 1
    sleep 0.5
  done
  return 1
}

port=$(free_port)
base_url=http://127.0.0.1:$port
# The timer of HEALTHCHECK needs systemd; it is run once by hand below instead.
podman run -d --name "$NAME" --network=host --health-interval=disable \
  -e PORT="$port" -e ADMIN_TOKEN="$ADMIN_TOKEN" "$IMAGE" >"$WORK/run.log" 2>&1 || fatal 'podman run' "$WORK/run.log"
if secs=$(wait_ready "$port" "$NAME"); then ok "/readyz answers 200 after ${secs} s"; else podman logs "$NAME" >"$WORK/logs" 2>&1; fatal '/readyz answers 200' "$WORK/logs"; fi
curl -sS "$base_url/readyz" | note
echo

generate() { curl -sS -o "$WORK/$1.json" -w '%{http_code}' -H 'content-type: application/json' -d '{"prompt":"ocean","max_tokens":5,"temperature":0}' "$base_url/v1/tasks/$1/generate"; }
tokens() { node -e 'console.log(JSON.stringify(JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).token_ids))' "$WORK/$1.json" 2>/dev/null; }
check 'POST /v1/tasks/define-prefix/generate is 200' "$(generate define-prefix)" 200
note "$WORK/define-prefix.json"
echo

uid=$(podman exec "$NAME" cat /proc/1/status | sed -n 's/^Uid:[[:space:]]*\([0-9]*\).*/\1/p' || true)
check 'the server (PID 1) runs as uid 1000' "$uid" 1000

podman healthcheck run "$NAME" >"$WORK/health" 2>&1 && ok 'HEALTHCHECK passes' || { not_ok 'HEALTHCHECK passes'; note "$WORK/health"; }

upload() {
  curl -sS -o "$WORK/upload.json" -w '%{http_code}' -X PUT -H "authorization: Bearer $1" \
    -F adapter_config.json=@adapters/define-prefix/adapter_config.json \
    -F adapter_model.safetensors=@adapters/define-prefix/adapter_model.safetensors \
    -F task.json=@adapters/define-prefix/task.json "$base_url/v1/adapters/verify-upload"
}
check 'an upload without the admin token is 401' "$(upload wrong-token)" 401
check 'a hot upload (PUT /v1/adapters/verify-upload) is 201' "$(upload "$ADMIN_TOKEN")" 201
check 'the uploaded task is served at once' "$(generate verify-upload)" 200
check 'it generates the same greedy tokens as the adapter it copies' "$(tokens verify-upload)" "$(tokens define-prefix)"

podman kill --signal TERM "$NAME" >/dev/null
code=$(timeout 60 podman wait "$NAME" 2>/dev/null || echo timeout)
check 'SIGTERM: the server exits with status 0' "$code" 0
podman logs "$NAME" 2>&1 | grep -q '"msg":"shut down"' && ok 'SIGTERM: the log says it shut down' || not_ok 'SIGTERM: the log says it shut down'

# As deploy/kubernetes runs it: read-only root filesystem, the graph cache on a volume that starts
# empty, with the image's ownership of /app/.cache (uid 1000), like an emptyDir with fsGroup.
port=$(free_port)
podman run -d --name "$NAME-ro" --network=host --health-interval=disable --read-only --read-only-tmpfs=false \
  -v /app/.cache --tmpfs /tmp:rw,mode=1777 \
  -e PORT="$port" -e ADMIN_TOKEN="$ADMIN_TOKEN" "$IMAGE" >"$WORK/run-ro.log" 2>&1 || fatal 'podman run --read-only' "$WORK/run-ro.log"
if secs=$(wait_ready "$port" "$NAME-ro"); then ok "read-only root filesystem: /readyz answers 200 after ${secs} s"; else podman logs "$NAME-ro" >"$WORK/logs" 2>&1; not_ok 'read-only root filesystem: /readyz answers 200'; note "$WORK/logs"; fi

echo "1..$n"
exit "$failed"
