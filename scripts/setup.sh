#!/usr/bin/env bash
# Installs what livedata needs on a fresh Debian machine with Python 3.11 and Node 20.
#   scripts/setup.sh          the package and the web UI's ECharts (from npm, served locally)
#   scripts/setup.sh --test   also the test tools and Debian's chromium for the browser tests
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--test" ]]; then
  # servers the tests start on their own ports, and the browser for the UI tests
  missing=()
  command -v chromium >/dev/null || missing+=(chromium)
  [[ -e /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ]] || missing+=(fonts-noto-color-emoji)
  command -v clickhouse-server >/dev/null || missing+=(clickhouse-server)
  command -v mosquitto >/dev/null || missing+=(mosquitto)
  command -v redis-server >/dev/null || missing+=(redis-server)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
  if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  extras=".[test]"
else
  extras="."
fi

npm ci --no-audit --no-fund --loglevel=error
npm run --silent build
python3 -m pip install --quiet --disable-pip-version-check -e "$extras"
