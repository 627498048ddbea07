#!/usr/bin/env bash
# The GPU checks in one run, on a lent device machine (no node, no npm, no internet there), from the
# repository root of a checkout that carries:
#   .devcarry/device-check.sh, crosscheck-llama.py  this script and the python check (copies)
#   .devcarry/node.xz        node (stripped, xz with the x86 filter)
#   .devcarry/ort.xz         onnxruntime-node's linux-x64 libonnxruntime.so.1 (CPU + WebGPU providers)
#   .devcarry/bundle.tar.xz  dist/ (built here) and the production node_modules the checks import
#   .gl/*.deb                the Vulkan/EGL loaders (Dawn needs libvulkan.so.1 to reach the NVIDIA driver)
# Parts, each independent, each logged to $OUT/device.log, all results packed in $OUT/results.tar.gz:
#   1. the GPU, the driver, the Vulkan ICD;            2. scripts/crosscheck-llama.py (background, CPU);
#   3. bench/reference-check.js --probe, then every case, --provider webgpu;      4. bench/forward.js cpu vs webgpu, 3 interleaved rounds.
# A budget (DEVICE_BUDGET_S, default 420 s) skips what would not finish: the run must end inside the call's limit.
# SKIP_CROSSCHECK=1 and SKIP_FORWARD=1 leave out parts 2 and 4 (then part 3 need not keep DEVICE_RESERVE_S,
# default 120 s, for them).
# Rehearse anywhere with OUT=/tmp/x DEVICE_REHEARSAL=1 (no loaders installed into /).
# `scripts/device-check.sh pack CARRY_DIR` (here, after `npx tsc -p .`) writes all of .devcarry into CARRY_DIR
# (node.xz and ort.xz only where missing: minutes of xz). The tracked tree is ~34 MB of the 64 MiB that
# travel, so node goes stripped and with its ICU data cut to English and root (31.6 MB -> 8.8 MB of items;
# the rest zeroed in place, which xz then drops): node 21.1 -> ~15 MB, onnxruntime 11.4 MB.
set -u -o pipefail
if [ "${1:-}" = pack ]; then
  DEST=${2:?pack needs the carry folder}
  NM=$(readlink -f node_modules)
  if [ ! -f "$DEST/node.xz" ]; then
    strip -o /tmp/node.stripped "$(command -v node)"
    # ICU's common data (a symbol icudtNNl_dat in .rodata): a new table of contents lists only English,
    # root and the locale-independent items; every other item's bytes are zeroed. Lookups of the others
    # fall back to root, as for any locale ICU lacks.
    python3 - /tmp/node.stripped <<'PY'
import re, struct, subprocess, sys
path = sys.argv[1]
sym = [l.split() for l in subprocess.run(['nm', '-D', '-S', path], capture_output=True, text=True).stdout.splitlines() if re.search(r' icudt\d+_dat$', l)]
if not sym:  # stripped: the dynamic symbol table still has it (nm -D)
    sys.exit('no icudt*_dat symbol')
vaddr, size = int(sym[0][0], 16), int(sym[0][1], 16)
segs = subprocess.run(['readelf', '-lW', path], capture_output=True, text=True).stdout.splitlines()
off = None
for l in segs:
    f = l.split()
    if f and f[0] == 'LOAD':
        o, va, fs = int(f[1], 16), int(f[2], 16), int(f[4], 16)
        if va <= vaddr < va + fs: off = vaddr - va + o
d = bytearray(open(path, 'rb').read())
blob = d[off:off + size]
hs = struct.unpack_from('<H', blob, 0)[0]
assert struct.unpack_from('<H', blob, 2)[0] == 0x27da, 'not ICU common data'
count = struct.unpack_from('<I', blob, hs)[0]
ents = [struct.unpack_from('<II', blob, hs + 4 + 8 * i) for i in range(count)]
names = [blob[hs + n:blob.index(b'\0', hs + n)].decode() for n, _ in ents]
loc = re.compile(r'^(?:[a-z_]+/)?([a-z]{2,3}(?:_[A-Za-z0-9]*)*)\.res$')
def drop(full):
    item = full.split('/', 1)[1]
    if item.endswith('.cnv'): return True
    m = loc.match(item)
    return bool(m) and not (m.group(1) in ('res_index', 'en') or m.group(1).startswith('en_'))
keep = [i for i in range(count) if not drop(names[i])]
order = sorted(range(count), key=lambda i: ents[i][1])
first_name = min(hs + n for n, _ in ents)
toc = struct.pack('<I', len(keep)) + b''.join(struct.pack('<II', *ents[i]) for i in keep)
blob[hs:first_name] = toc + bytes(first_name - hs - len(toc))
kept = set(keep)
for k, i in enumerate(order):
    if i in kept: continue
    s, e = hs + ents[i][1], (hs + ents[order[k + 1]][1] if k + 1 < count else size)
    blob[s:e] = bytes(e - s)
d[off:off + size] = blob
open(path, 'wb').write(d)
print(f'ICU data: kept {len(keep)} of {count} items')
PY
    /tmp/node.stripped -p "new Intl.NumberFormat('en-US').format(1234.5)" >/dev/null || exit 1
    xz -T1 --x86 --lzma2=preset=9e,dict=96MiB -c /tmp/node.stripped > "$DEST/node.xz"
  fi
  [ -f "$DEST/ort.xz" ] || xz -T1 --x86 --lzma2=preset=9e,dict=64MiB -c "$NM/onnxruntime-node/bin/napi-v6/linux/x64/libonnxruntime.so.1" > "$DEST/ort.xz"
  # What the checks import (npm ls --omit=dev, less what they never load): no types, maps, docs or CLIs.
  # Both ends of node_modules keep their names: the symlinked one here is read through NM.
  tar -cJf "$DEST/bundle.tar.xz" --exclude='*.map' --exclude='*.d.ts' --exclude='*.d.mts' --exclude='*.md' \
    --exclude='onnxruntime-common/lib' --exclude='onnxruntime-common/dist/esm' --exclude='typebox/build/cjs' --exclude='tokenizers/dist/*.cjs' --exclude='tokenizers/dist/*.min.mjs' --exclude='protobufjs/cli' --exclude='protobufjs/dist' --exclude='protobufjs/scripts' --exclude='protobufjs/bin' \
    --exclude='onnxruntime-node/bin/napi-v6/linux/x64/libonnxruntime.so.1' \
    --exclude='dist/src/http' --exclude='dist/src/engine' --exclude='dist/src/tools' --exclude='dist/src/main.js' --exclude='dist/src/server.js' \
    dist/src dist/bench/reference-check.js dist/bench/reference.js dist/bench/forward.js dist/bench/table.js \
    --transform="s,^${NM#/},node_modules," \
    "$NM/onnxruntime-node/package.json" "$NM/onnxruntime-node/dist" "$NM/onnxruntime-node/bin/napi-v6/linux/x64" \
    "$NM/onnxruntime-common" "$NM/onnx-proto" "$NM/protobufjs" "$NM/@protobufjs" "$NM/long" \
    "$NM/@huggingface/tokenizers" "$NM/@sinclair/typebox" 2>&1 | grep -v "Removing leading"
  # The device gets /work/main's tree, not this branch's: the scripts travel in the carry folder too.
  cp scripts/device-check.sh scripts/crosscheck-llama.py "$DEST/"
  ls -l "$DEST"
  exit 0
fi
OUT=${OUT:?OUT must name a folder}
BUDGET=${DEVICE_BUDGET_S:-420}
RESERVE=${DEVICE_RESERVE_S:-120}
# A prefix for every node run, e.g. NODE_WRAP="setarch x86_64 -R" (no address-space randomisation: the
# webgpu provider segfaulted at its first runs with it on the H200, and ran under a debugger, which turns it off).
W=${NODE_WRAP:-}
# Results gather outside $OUT (only 8 files come back from it) and leave packed as $OUT/results.tar.gz.
R=/tmp/devres
rm -rf "$R"; mkdir -p "$R/r"
exec > >(tee -a "$OUT/device.log") 2>&1
say() { echo "== [$(date -u +%T), ${SECONDS}s] $*"; }
left() { echo $((BUDGET - SECONDS)); }
pack() { tar -czf "$OUT/results.tar.gz" -C "$R" r 2>/dev/null; }
trap pack EXIT

say "1. machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv 2>&1 | head -3
if [ -z "${DEVICE_REHEARSAL:-}" ]; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
ldconfig -p | grep -E "libvulkan|libEGL_nvidia|libGLX_nvidia" | head -5
ICD=""
for f in /etc/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.json /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json; do
  [ -f "$f" ] && { echo "vulkan ICD: $f: $(tr -d '\n ' < "$f")"; ICD=${ICD:-$f}; }
done
# The device README: where no driver is found, point the loader at the NVIDIA ICD explicitly.
if [ -n "$ICD" ]; then export VK_DRIVER_FILES=$ICD; fi
[ -f /usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json ] && export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
# The driver's libraries (the ICD names libGLX_nvidia.so.0 by name) where ldconfig may not look.
for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do [ -d "$d" ] && export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d; done
echo "VK_DRIVER_FILES=${VK_DRIVER_FILES:-unset} LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-unset}"

say "unpack node, onnxruntime, bundle"
NODE=/tmp/devnode/node
mkdir -p /tmp/devnode
xz -dc .devcarry/node.xz > "$NODE" && chmod +x "$NODE" && "$NODE" --version || { say "node does not run"; exit 3; }
tar -xJf .devcarry/bundle.tar.xz
ORTLIB=node_modules/onnxruntime-node/bin/napi-v6/linux/x64/libonnxruntime.so.1
xz -dc .devcarry/ort.xz > "$ORTLIB"
sha256sum "$ORTLIB" | cut -c1-16
"$NODE" -e "import('onnxruntime-node').then(o => console.log('onnxruntime-node', o.default.env.versions.common))" || { say "onnxruntime-node does not load"; exit 3; }

say "2. python cross-check of the Llama reference (background)"
HERE=$(dirname "$0")
[ -n "${SKIP_CROSSCHECK:-}" ] && echo "skipped (SKIP_CROSSCHECK)" || ( PYTHONUNBUFFERED=1 timeout 300 python3 "$HERE/crosscheck-llama.py" --out "$R/r/crosscheck.json" > "$R/r/crosscheck.log" 2>&1; echo "crosscheck exit $?" >> "$R/r/crosscheck.log" ) &
PY=$!

say "3a. webgpu probe: what Dawn picked, where ONNX Runtime placed the nodes (verbose logs)"
for m in gpt2 tiny-llama; do
  VK_LOADER_DEBUG=error,warn,driver timeout 60 $W "$NODE" dist/bench/reference-check.js --probe --provider webgpu --models $m > "$R/r/probe-$m.log" 2> "$R/r/probe-$m.err"
  echo "probe $m exit $?"; cat "$R/r/probe-$m.log"
  grep -a -i -E "adapter|vendor|backend type|dawn|placed on|not assigned|fall ?back|nvidia|loader|driver|error" "$R/r/probe-$m.err" | grep -a -v "graph_transformer" | cut -c1-400 | head -30
  gzip -f "$R/r/probe-$m.err"
done

say "3b. reference cases on webgpu, one process per model (a stuck model cannot take the others' time)"
for m in gpt2:130 tiny-llama:70 tiny-qwen2:70; do
  T=${m#*:}; m=${m%:*}
  [ $(( $(left) - RESERVE )) -lt "$T" ] && T=$(( $(left) - RESERVE ))
  if [ "$T" -lt 20 ]; then say "skipped $m: budget"; continue; fi
  timeout "$T" $W "$NODE" dist/bench/reference-check.js --provider webgpu --models $m --out "$R/r/refcheck-webgpu-$m.json" > "$R/r/refcheck-webgpu-$m.log" 2> "$R/r/refcheck-webgpu-$m.err"
  echo "reference-check webgpu $m exit $? after ${SECONDS}s"
  grep -a -v "^ *at " "$R/r/refcheck-webgpu-$m.err" | cut -c1-300 | sort | uniq -c | sort -rn | head -8
  sed -n '/^summary/,$p' "$R/r/refcheck-webgpu-$m.log" | grep -a -v "^| ---"
  grep -a -E "FAIL" "$R/r/refcheck-webgpu-$m.log" | head -12
done

pack
[ -n "${SKIP_FORWARD:-}" ] && [ -n "${SKIP_CROSSCHECK:-}" ] && { say "done (parts 2 and 4 skipped)"; exit 0; }
say "waiting for the python cross-check"
wait $PY
sed -n '/^torch/,/^float64 done/p' "$R/r/crosscheck.log" | head -14
grep -a -E "Error|error|Traceback" "$R/r/crosscheck.log" | head -10
sed -n '/^summary/,$p' "$R/r/crosscheck.log"

pack
[ -n "${SKIP_FORWARD:-}" ] && { say "done (part 4 skipped)"; exit 0; }
say "4. forward pass, cpu vs webgpu, interleaved rounds"
for round in 1 2 3; do
  for p in cpu webgpu; do
    if [ "$(left)" -lt 50 ]; then say "skipped $p round $round: budget"; continue; fi
    timeout 45 $W "$NODE" dist/bench/forward.js --provider "$p" --batches 1,8,64 --out "$R/r/forward-$p-$round.json" > "$R/r/forward-$p-$round.log" 2>&1
    echo "forward $p round $round exit $?"
  done
done
# One table: decode and prefill tokens/s per provider and batch, median (min–max) over the rounds.
"$NODE" -e '
const fs = require("fs"); const dir = process.argv[1]; const by = {};
for (const f of fs.readdirSync(dir).filter((f) => /^forward-.*\.json$/.test(f))) {
  const j = JSON.parse(fs.readFileSync(dir + "/" + f, "utf8"));
  for (const r of j.rows) (by[j.provider + " " + r.batch] ??= []).push(r);
  by["ceiling " + j.provider] = (by["ceiling " + j.provider] ?? []).concat([{ c: j.ceilingGflops }]);
}
const med = (xs) => { const s = [...xs].sort((a, b) => a - b); return `${s[Math.floor(s.length / 2)]} (${s[0]}–${s[s.length - 1]})`; };
console.log("| provider batch | rounds | decode tok/s | prefill tok/s |");
for (const [k, rs] of Object.entries(by)) if (!k.startsWith("ceiling")) console.log(`| ${k} | ${rs.length} | ${med(rs.map((r) => r.decodeTokensPerS))} | ${med(rs.map((r) => r.prefillTokensPerS))} |`);
for (const [k, rs] of Object.entries(by)) if (k.startsWith("ceiling")) console.log(`${k}: 1024³ MatMul ${med(rs.map((r) => r.c))} GFLOP/s`);
' "$R/r" | tee "$R/r/forward-table.md"
grep -a -h -E "Error|error" "$R"/r/forward-*.log | sort | uniq -c | head -5
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader 2>&1 | head -2
say "done"
