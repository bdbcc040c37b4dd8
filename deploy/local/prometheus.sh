#!/usr/bin/env bash
# A real local Prometheus (Debian's package) that scrapes the local workers and evaluates the
# shipped alert rules (deploy/prometheus/rules.yml): the stack without Docker gets what compose's
# Prometheus gives (http://127.0.0.1:9090/alerts, the graph page, the API Grafana would query).
#
#   deploy/local/prometheus.sh up|down [--wipe]|status|install
#
# Settings (environment): PROMETHEUS_PORT (9090); WORKERS (1: the workers `emostream worker
# --processes WORKERS` runs, metrics on METRICS_PORT, METRICS_PORT+1, ...); METRICS_PORT (9108, the
# worker's metrics.port); METRICS_TARGETS (host:port,host:port: the workers to scrape instead);
# PROMETHEUS_RULES (the rules file, deploy/prometheus/rules.yml); PROMETHEUS_INTERVAL (5s: scrape
# and rule evaluation); EMOSTREAM_RUN_DIR (.run/ in the repo: config, data, log, pid).
# `up` writes the configuration each time (targets changed: `down` then `up`); its data is kept
# across restarts (`down --wipe` deletes it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
port=${PROMETHEUS_PORT:-9090}
run=${EMOSTREAM_RUN_DIR:-$repo/.run}/prometheus-$port
rules=${PROMETHEUS_RULES:-$repo/deploy/prometheus/rules.yml}
interval=${PROMETHEUS_INTERVAL:-5s}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

ready() { (exec 3<>"/dev/tcp/127.0.0.1/$port" && printf 'GET /-/ready HTTP/1.0\r\n\r\n' >&3 && head -1 <&3 | grep -q " 200") 2>/dev/null; }

targets() {
  if [ -n "${METRICS_TARGETS:-}" ]; then
    tr ',' '\n' <<<"$METRICS_TARGETS" | sed '/^ *$/d; s/^ *//; s/ *$//'
    return
  fi
  local first=${METRICS_PORT:-9108} n=${WORKERS:-1} i
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "prometheus.sh: WORKERS=$n is not a number of workers" >&2; exit 2; }
  [[ "$first" =~ ^[1-9][0-9]*$ ]] || { echo "prometheus.sh: METRICS_PORT=$first is not a port" >&2; exit 2; }
  for ((i = 0; i < n; i++)); do echo "127.0.0.1:$((first + i))"; done
}

install() {
  command -v prometheus >/dev/null && return 0
  echo "prometheus.sh: installing Debian's prometheus" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq prometheus >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq prometheus >/dev/null; }
}

up() {
  [ -f "$rules" ] || { echo "prometheus.sh: no rules file $rules" >&2; exit 2; }
  if [ -f "$run/prometheus.pid" ] && kill -0 "$(cat "$run/prometheus.pid")" 2>/dev/null; then
    echo "prometheus.sh: already up on 127.0.0.1:$port (down, then up, to scrape other targets)" >&2
    return 0
  fi
  if listening "$port"; then
    echo "prometheus.sh: something else listens on 127.0.0.1:$port: set PROMETHEUS_PORT" >&2
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
    echo "  - $run/rules.yml"
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
    ready && { echo "prometheus.sh: up on http://127.0.0.1:$port, scraping $(targets | paste -sd ' ')" >&2; return 0; }
    kill -0 "$(cat "$run/prometheus.pid")" 2>/dev/null || break
    sleep 0.25
  done
  echo "prometheus.sh: prometheus did not start, see $run/prometheus.log" >&2
  exit 1
}

down() {
  [ -f "$run/prometheus.pid" ] || { echo "prometheus.sh: no prometheus of ours on $port"; return 0; }
  local pid; pid=$(cat "$run/prometheus.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 80); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  rm -f "$run/prometheus.pid"
  echo "prometheus.sh: stopped on $port"
  [ "${1:-}" = "--wipe" ] && rm -rf "$run"
  return 0
}

case "${1:-}" in
  up) up ;;
  down) shift; down "${1:-}" ;;
  status) ready && echo "prometheus up on $port" || { echo "prometheus down on $port"; exit 1; } ;;
  install) install ;;
  *) echo "usage: $0 up|down [--wipe]|status|install" >&2; exit 2 ;;
esac
