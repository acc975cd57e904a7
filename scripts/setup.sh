#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: Debian packages, the Python venv, the node tools.
# Each step checks first and does nothing when its work is already done, so `make run` and `make test`
# can call it every time.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# ---- Debian packages: the native servers --------------------------------------------------------------
need_apt=()
command -v redis-server   >/dev/null || need_apt+=(redis-server)
command -v redis-sentinel >/dev/null || need_apt+=(redis-sentinel)
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_pub  >/dev/null || need_apt+=(mosquitto-clients)
ls /usr/lib/postgresql/15/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql-15)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm  >/dev/null || need_apt+=(npm)
command -v chromium >/dev/null || need_apt+=(chromium)  # the developer portal's browser tests (Playwright)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing Debian packages: ${need_apt[*]}"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
  # The packages start system-wide services where systemd runs; the lab starts its own on free ports.
  for svc in redis-server redis-sentinel mosquitto postgresql nginx; do
    $SUDO service "$svc" stop >/dev/null 2>&1 || true
  done
fi

# ---- Python: .venv with the locked versions ------------------------------------------------------------
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
stamp=.venv/.katas-installed
lock_hash=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$lock_hash" ]; then
  log "installing Python packages (constraints.txt)"
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
  echo "$lock_hash" > "$stamp"
fi

# ---- node tools (s3rver) into tools/node ---------------------------------------------------------------
node_stamp=tools/node/node_modules/.katas-installed
node_hash=$(sha256sum tools/node/package-lock.json | cut -d' ' -f1)
if [ "$(cat "$node_stamp" 2>/dev/null)" != "$node_hash" ]; then
  log "installing node packages (tools/node/package-lock.json)"
  (cd tools/node && npm ci --no-audit --no-fund --loglevel=error)
  echo "$node_hash" > "$node_stamp"
fi
log "ready"
