#!/usr/bin/env bash
# Sets up everything the project needs on a fresh Debian machine: a virtual environment with the package
# and its dev extra, and (with --test-tools) the Prometheus tools the tests use (prometheus, promtool,
# amtool, alertmanager). Idempotent: a second run only checks.
#
# The tools are unpacked from Debian's packages into .tools/ inside the checkout, never installed on the
# system: nothing is started, no service of the user's is touched, and removing .tools/ undoes it all.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  rm -f .venv/.installed-* && touch "$stamp"
fi

if [ "${1:-}" = "--test-tools" ]; then
  tools=.tools
  binaries=(prometheus promtool amtool prometheus-alertmanager)
  ready=1
  for b in "${binaries[@]}"; do [ -x "$tools/bin/$b" ] || ready=0; done
  if [ "$ready" = 0 ]; then
    debs=$(mktemp -d)
    trap 'rm -rf "$debs"' EXIT
    # `apt-get download` fetches the .deb files only (no install, no maintainer scripts, no root needed);
    # an empty package list on a fresh machine needs one `apt-get update` first, which does need root.
    if ! (cd "$debs" && apt-get download -qq prometheus prometheus-alertmanager >/dev/null 2>&1); then
      SUDO=""
      [ "$(id -u)" -ne 0 ] && SUDO=sudo
      $SUDO apt-get update -qq
      (cd "$debs" && apt-get download -qq prometheus prometheus-alertmanager >/dev/null 2>&1)
    fi
    rm -rf "$tools" && mkdir -p "$tools/bin"
    for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" "$tools/root"; done
    for b in prometheus promtool amtool; do ln -s "../root/usr/bin/$b" "$tools/bin/$b"; done
    # Debian's Alertmanager reads its default templates from /usr/share/prometheus/alertmanager, a path
    # compiled into it. Where the system lacks them, the wrapper shows the unpacked copy at that path in a
    # private mount namespace of its own (an overlay seen by that process only; nothing else changes).
    cat >"$tools/bin/prometheus-alertmanager" <<'WRAPPER'
#!/bin/sh
tools=$(cd "$(dirname "$0")/.." && pwd)
bin="$tools/root/usr/bin/prometheus-alertmanager"
[ -e /usr/share/prometheus/alertmanager/default.tmpl ] && exec "$bin" "$@"
exec unshare --map-root-user --mount sh -c \
  'mount -t overlay overlay -o "lowerdir=$0/root/usr/share:/usr/share" /usr/share && exec "$@"' "$tools" "$bin" "$@"
WRAPPER
    chmod +x "$tools/bin/prometheus-alertmanager"
  fi
fi
