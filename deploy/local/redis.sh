#!/usr/bin/env bash
# A real local Redis server (Debian's redis-server), append-only so windows survive a restart.
#
#   deploy/local/redis.sh up|down|status
#
# Settings (environment): REDIS_PORT (6379), EMOSTREAM_RUN_DIR (.run/ in the repo).
#
# Secured server: REDIS_TLS_DIR (certificates from deploy/local/certs.sh, made there if missing),
# REDIS_USER and REDIS_PASSWORD (no defaults). REDIS_PORT then takes TLS only (rediss://), the
# default user is off and the ACL user may use every command and key.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
port=${REDIS_PORT:-6379}
run=${EMOSTREAM_RUN_DIR:-$repo/.run}/redis-$port

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# PONG, not LOADING: a server restarted on a large append-only file listens before it can serve
ready() {
  local args=(-h 127.0.0.1 -p "$port")
  if [ -n "${REDIS_TLS_DIR:-}" ]; then
    args+=(--tls --cacert "$REDIS_TLS_DIR/ca.pem" --user "$REDIS_USER" --no-auth-warning)
  fi
  [ "$(REDISCLI_AUTH="${REDIS_PASSWORD:-}" redis-cli "${args[@]}" ping 2>/dev/null)" = "PONG" ]
}

install() {
  command -v redis-server >/dev/null && return 0
  echo "redis.sh: installing Debian's redis-server" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq redis-server >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
}

up() {
  if listening "$port"; then
    echo "redis.sh: something already listens on 127.0.0.1:$port, using it" >&2
    for _ in $(seq 1 480); do ready && return 0; sleep 0.25; done  # a Redis of ours still loading its data
    echo "redis.sh: it does not answer PING as this Redis would" >&2; return 0
  fi
  install
  mkdir -p "$run"
  local listen=(--port "$port")
  if [ -n "${REDIS_TLS_DIR:-}" ]; then
    : "${REDIS_USER:?REDIS_TLS_DIR needs REDIS_USER}" "${REDIS_PASSWORD:?REDIS_TLS_DIR needs REDIS_PASSWORD}"
    "$here/certs.sh" "$REDIS_TLS_DIR"
    (umask 077; cat > "$run/secure.conf" <<CONF
port 0
tls-port $port
tls-cert-file $REDIS_TLS_DIR/server.pem
tls-key-file $REDIS_TLS_DIR/server.key
tls-ca-cert-file $REDIS_TLS_DIR/ca.pem
tls-auth-clients no
user default off
user $REDIS_USER on >$REDIS_PASSWORD ~* &* +@all
CONF
)  # the password stays out of the process list
    listen=("$run/secure.conf")
  fi
  redis-server "${listen[@]}" --bind 127.0.0.1 --dir "$run" --appendonly yes --appendfsync everysec \
    --save "" --daemonize yes --pidfile "$run/redis.pid" --logfile "$run/redis.log"
  for _ in $(seq 1 40); do listening "$port" && break; sleep 0.25; done
  listening "$port" || { echo "redis.sh: redis did not start, see $run/redis.log" >&2; exit 1; }
  for _ in $(seq 1 480); do ready && { echo "redis.sh: up on 127.0.0.1:$port" >&2; return 0; }; sleep 0.25; done
  echo "redis.sh: redis listens on $port but does not answer PING (still loading its data?), see $run/redis.log" >&2
  exit 1
}

down() {
  [ -f "$run/redis.pid" ] || { echo "redis.sh: no redis of ours on $port"; return 0; }
  local pid; pid=$(cat "$run/redis.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  rm -f "$run/redis.pid"
  echo "redis.sh: stopped on $port"
  [ "${1:-}" = "--wipe" ] && rm -rf "$run"
  return 0
}

case "${1:-}" in
  up) up ;;
  down) shift; down "${1:-}" ;;
  status) listening "$port" && echo "redis up on $port" || { echo "redis down on $port"; exit 1; } ;;
  install) install ;;
  *) echo "usage: $0 up|down [--wipe]|status|install" >&2; exit 2 ;;
esac
