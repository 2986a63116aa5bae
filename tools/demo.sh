#!/usr/bin/env bash
# `make demo`: a control plane with the demo flags and a sidecar connected to it, in the
# foreground until Ctrl-C. The flag store is fresh every time (.fader-demo/).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
rm -rf .fader-demo
$BIN/fader controlplane --data-dir .fader-demo --snapshot sidecar/demo/demo.json \
    --log-level warning &
plane=$!
trap 'kill $plane 2>/dev/null; wait $plane 2>/dev/null' EXIT
for _ in $(seq 100); do
    $BIN/python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8018/healthz', timeout=1)" 2>/dev/null && break
    kill -0 $plane 2>/dev/null || { echo "the control plane did not start" >&2; exit 1; }
    sleep 0.1
done
count='from fader import Client; c = Client("127.0.0.1:8013"); n = sum(c.get_treatment(f"user-{i}", "new-checkout") == "on" for i in range(1000)); print(n, "of 1000 users get new-checkout on")'
cat <<TEXT

Fader demo: a control plane holding the demo flags, and a sidecar it feeds.
  control plane  gRPC 127.0.0.1:8017, admin API http://127.0.0.1:8018 (/openapi.json, /status)
  sidecar        gRPC 127.0.0.1:8013, http://127.0.0.1:8014/status

In another terminal:
  $BIN/fader flags list
  $BIN/python -c '$count'
  $BIN/fader flags dial new-checkout 10 --reason "canary"
  $BIN/python -c '$count'          # about 100 now
  $BIN/fader flags dial new-checkout 50
  $BIN/fader flags kill new-checkout --reason "demo incident"   # every user gets off
  $BIN/fader flags revive new-checkout
  $BIN/fader flags history new-checkout
  $BIN/fader rollout start new-checkout --steps 60,80,100 --hold 10s
  $BIN/fader rollout status new-checkout
  $BIN/fader status                # which version the sidecar ACKed

Ctrl-C stops both.

TEXT
$BIN/fader serve --control-plane 127.0.0.1:8017 --sidecar-id demo-sidecar --log-level warning
