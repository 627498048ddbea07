#!/usr/bin/env bash
# Refreshes the repository's copies of ../shared (or $SHARED_DIR): the demo model and adapters, the
# reference outputs, the Llama-family checkpoints, and the slices of the task data that the tests,
# `npm run eval` and the benchmarks read. Run it when ../shared changes, then commit the result.
set -euo pipefail
cd "$(dirname "$0")/.."
src=${SHARED_DIR:-../shared}
[ -d "$src/demo" ] || { echo "no shared folder at $src (set SHARED_DIR)" >&2; exit 1; }

rm -rf models/demo-gpt2 adapters test/fixtures
mkdir -p models adapters test/fixtures/reference test/fixtures/data test/fixtures/docs
cp -r "$src/demo/model" models/demo-gpt2
cp -r "$src/demo/adapters/." adapters/
cp "$src/reference/reference.json" "$src/reference/table.json" "$src/reference/README.md" test/fixtures/reference/
cp -r "$src/demo/llama" test/fixtures/llama
cp "$src/docs/"*.md test/fixtures/docs/

# Data: each file's evaluation split (its first rows, see data/README.md) plus the rows the
# benchmarks draw prompts from (2000..3023 of kjv and fortunes).
take() { head -n "$2" "$src/data/$1" >"test/fixtures/data/$1"; }
take pos.jsonl 1187
take defs.jsonl 1000
take kjv.jsonl 3024
take fortunes.jsonl 3024
cp "$src/data/README.md" test/fixtures/data/README.md
chmod -R u+w models adapters test/fixtures
echo "fixtures refreshed from $src"
