#!/bin/sh
# The programs the proxy's tests run for real besides Python and Node: nginx in front of the proxy's replicas
# (tests/serve/test_gateway.py) and Chromium for a web page that calls it (tests/serve/test_browser.py).
# Installed from Debian's packages where apt-get can (as root, as in CI); elsewhere, what to install, in one line.
set -eu
missing=""
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$missing nginx-light"
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing="$missing chromium"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing$missing (Debian packages) for the proxy's tests"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
else
    echo "The proxy's tests need$missing: install them (on Debian: sudo apt-get install$missing), then run make test again."
    exit 1
fi
