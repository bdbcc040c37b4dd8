#!/usr/bin/env bash
# A real local Prometheus (Debian's package) that scrapes the local workers and evaluates the
# shipped alert rules (deploy/prometheus/rules.yml): the stack without Docker gets what compose's
# Prometheus gives (http://127.0.0.1:9090/alerts, the graph page, the API Grafana would query).
#
#   deploy/local/prometheus.sh up|down [--wipe]|status|install
#
# Settings (environment): PROMETHEUS_PORT (9190: not 9090, where the Debian package's own service
# listens on a systemd host); WORKERS (1: the workers `emostream worker --processes WORKERS` runs,
# metrics on METRICS_PORT, METRICS_PORT+1, ...); METRICS_PORT (EMOSTREAM_METRICS__PORT, else 9108:
# the worker's metrics.port); METRICS_TARGETS (host:port,host:port: the workers to scrape instead);
# PROMETHEUS_RULES (the rules file, deploy/prometheus/rules.yml); PROMETHEUS_INTERVAL (5s: scrape
# and rule evaluation); EMOSTREAM_RUN_DIR (.run/ in the repo: config, data, log, pid).
# `up` writes the configuration each time (targets changed: `down` then `up`); its data is kept
# across restarts (`down --wipe` deletes it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
port=${PROMETHEUS_PORT:-9190}
run=${EMOSTREAM_RUN_DIR:-$repo/.run}/prometheus-$port
rules=${PROMETHEUS_RULES:-$repo/deploy/prometheus/rules.yml}
interval=${PROMETHEUS_INTERVAL:-5s}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

ready() {
  timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port && printf 'GET /-/ready HTTP/1.0\r\n\r\n' >&3 && head -1 <&3" \
    2>/dev/null | grep -q " 200"
}

# the pid in the pid file, if that process is this folder's Prometheus (a pid file left by one that
# died, its pid reused since, must not be taken for it, nor killed)
ours() {
  local pid
  pid=$(cat "$run/prometheus.pid" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "--config.file=$run/prometheus.yml" \
    && echo "$pid"
}

targets() {
  if [ -n "${METRICS_TARGETS:-}" ]; then
    tr ',' '\n' <<<"$METRICS_TARGETS" | sed '/^[[:space:]]*$/d; s/^[[:space:]]*//; s/[[:space:]]*$//'
    return
  fi
  local first=${METRICS_PORT:-${EMOSTREAM_METRICS__PORT:-9108}} n=${WORKERS:-1} i
  for ((i = 0; i < n; i++)); do echo "127.0.0.1:$((first + i))"; done
}

checked() {  # the settings, before anything is installed or written
  [[ "$port" =~ ^[1-9][0-9]{0,4}$ ]] && ((port <= 65535)) || { echo "prometheus.sh: PROMETHEUS_PORT=$port is not a port" >&2; exit 2; }
  if [ -n "${METRICS_TARGETS:-}" ]; then
    [ -n "$(targets)" ] || { echo "prometheus.sh: METRICS_TARGETS names no target" >&2; exit 2; }
    return
  fi
  local first=${METRICS_PORT:-${EMOSTREAM_METRICS__PORT:-9108}} n=${WORKERS:-1}
  [[ "$n" =~ ^[1-9][0-9]{0,3}$ ]] || { echo "prometheus.sh: WORKERS=$n is not a number of workers" >&2; exit 2; }
  [[ "$first" =~ ^[1-9][0-9]{0,4}$ ]] && ((first + n - 1 <= 65535)) \
    || { echo "prometheus.sh: METRICS_PORT=$first with WORKERS=$n goes past port 65535 (or is no port)" >&2; exit 2; }
}

install() {
  command -v prometheus >/dev/null && return 0
  echo "prometheus.sh: installing Debian's prometheus" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq prometheus >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq prometheus >/dev/null; }
}

up() {
  checked
  [ -f "$rules" ] || { echo "prometheus.sh: no rules file $rules" >&2; exit 2; }
  if ours >/dev/null; then
    echo "prometheus.sh: already up on 127.0.0.1:$port (down, then up, to scrape other targets)" >&2
    return 0
  fi
  rm -f "$run/prometheus.pid"
  if listening "$port"; then
    echo "prometheus.sh: something else listens on 127.0.0.1:$port (the prometheus package's own service?): set PROMETHEUS_PORT" >&2
    exit 1
  fi
  install
  mkdir -p "$run"
  cp "$rules" "$run/rules.yml"
  {
    echo "# written by deploy/local/prometheus.sh up (deploy/prometheus/prometheus.yml is compose's)"
    echo "global:"
    echo "  scrape_interval: $interval"
    echo "  evaluation_interval: $interval"
    echo "rule_files:"
    echo "  - \"$run/rules.yml\""
    echo "scrape_configs:"
    echo "  - job_name: emostream-worker  # the rules' EmostreamWorkerDown reads up{job=~\"emostream-worker.*\"}"
    echo "    static_configs:"
    echo "      - targets:"
    targets | while read -r t; do echo "          - \"$t\""; done
  } > "$run/prometheus.yml"
  if command -v promtool >/dev/null && ! promtool check config "$run/prometheus.yml" >"$run/check.log" 2>&1; then
    echo "prometheus.sh: the configuration does not check, see $run/check.log" >&2
    exit 1
  fi
  nohup prometheus --config.file="$run/prometheus.yml" --storage.tsdb.path="$run/data" \
    --web.listen-address="127.0.0.1:$port" >"$run/prometheus.log" 2>&1 &
  echo $! > "$run/prometheus.pid"
  for _ in $(seq 1 120); do
    ours >/dev/null || break  # (ours first: another Prometheus that took the port meanwhile is not ours)
    ready && { echo "prometheus.sh: up on http://127.0.0.1:$port, scraping $(targets | paste -sd ' ')" >&2; return 0; }
    sleep 0.25
  done
  echo "prometheus.sh: prometheus did not start, see $run/prometheus.log" >&2
  exit 1
}

down() {
  local pid
  if pid=$(ours); then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 80); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && { kill -9 "$pid" 2>/dev/null || true; sleep 0.5; }  # (not down in 20 s)
    echo "prometheus.sh: stopped on $port"
  else
    echo "prometheus.sh: no prometheus of ours on $port"
  fi
  rm -f "$run/prometheus.pid"
  [ "${1:-}" = "--wipe" ] && rm -rf "$run"
  return 0
}

case "${1:-}" in
  up) up ;;
  down) shift; down "${1:-}" ;;
  status) ours >/dev/null && ready && echo "prometheus up on $port" || { echo "prometheus down on $port"; exit 1; } ;;
  install) install ;;
  *) echo "usage: $0 up|down [--wipe]|status|install" >&2; exit 2 ;;
esac
