#!/bin/bash
# Issue 13, pass 14: the twelfth pass's commands on this machine.
set -x
D=bench/results/issue13-pass14
run() { local name=$1; shift; "$@" --out $D/$name.json > $D/$name.txt 2> $D/$name.err; echo "$name rc $?"; }
run forward-1thread env INTRA_OP_THREADS=1 node dist/bench/forward.js --batches 1,32,64 --sampling greedy --graphs served,baseline-host --baseline-build /work/before --rounds 5
run forward-2threads env INTRA_OP_THREADS=2 node dist/bench/forward.js --batches 1,32,64 --sampling greedy --graphs served,baseline-host --baseline-build /work/before --rounds 5
run forward-64-before node dist/bench/forward.js --batches 64 --sampling greedy --graphs served --rounds 5
run mixed-batching-64clients node dist/bench/mixed-batching.js --tasks 1 --kinds-rounds 0 --adapters 0 --clients 64 --requests 512
run forward-64-after node dist/bench/forward.js --batches 64 --sampling greedy --graphs served --rounds 5
run mixed-batching-32clients node dist/bench/mixed-batching.js --tasks 1 --kinds-rounds 0 --adapters 0 --clients 32 --requests 512
run mixed-batching-1client node dist/bench/mixed-batching.js --tasks 1 --kinds-rounds 0 --adapters 0 --clients 1 --requests 64 --rounds 5
run peer node dist/bench/peer.js --rounds 5
run burst node dist/bench/burst.js --rounds 3
