#!/bin/sh
# `make demo`'s proxy line: `autocontinue serve` on the local engine (a free port), one curl through it, stopped.
# Usage: deploy/demo-proxy.sh VENV
set -eu
venv=$1
log=$(mktemp)
"$venv/bin/autocontinue" serve --port 0 --log-level warning 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$log"' EXIT
url=
for _ in $(seq 1200); do   # the engine starts first (seconds), then the port is announced
    url=$(sed -n 's/.*running on \(http:[^ ]*\) .*/\1/p' "$log")
    [ -n "$url" ] && break
    kill -0 $pid 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
done
[ -n "$url" ] || { cat "$log" >&2; exit 1; }
body='{"model": "local", "max_tokens": 16, "autocontinue": {"max_rounds": 6},
       "messages": [{"role": "user", "content": "Name three colours of the rainbow and say one thing about each."}]}'
echo
echo "curl $url/v1/chat/completions -d '{\"max_tokens\": 16, \"messages\": [...]}'    # through autocontinue serve"
curl -sS --fail-with-body "$url/v1/chat/completions" -H 'content-type: application/json' -d "$body" |
    "$venv/bin/python" -c 'import json, sys; r = json.load(sys.stdin); t = r["continuation"]
print(r["choices"][0]["message"]["content"])
print("[%d rounds through the proxy, stop: %s]" % (len(t["rounds"]), t["stop_cause"]), file=sys.stderr)'
