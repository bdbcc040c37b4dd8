#!/usr/bin/env bash
# A real single-node Apache Kafka broker (KRaft), from Maven Central jars on the installed JDK.
#
#   deploy/local/kafka.sh up|down|status
#
# Settings (environment): KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (KAFKA_PORT+1),
# EMOSTREAM_RUN_DIR (.run/ in the repo: data, logs, pid), EMOSTREAM_CACHE (~/.cache/emostream: jars).
# Idempotent: `up` fetches the jars once, formats storage once, and does nothing if the broker runs.
#
# Secured broker: KAFKA_SECURITY=sasl_ssl (default: plaintext) with KAFKA_SCRAM_USER and
# KAFKA_SCRAM_PASSWORD (no defaults) and KAFKA_TLS_DIR (certificates from deploy/local/certs.sh,
# made there if missing). Clients then reach SASL_SSL + SCRAM-SHA-512 on KAFKA_PORT and SSL with a
# required client certificate on KAFKA_SSL_PORT (KAFKA_PORT+2); no plaintext client listener. The
# SCRAM user is created when the storage is formatted (the first `up`).
#
# Cluster: KAFKA_NODES=3 (default 1) runs that many KRaft nodes (each broker and controller) on
# KAFKA_PORT, KAFKA_PORT+10, KAFKA_PORT+20, ... (controllers on each port+1), plaintext only, with
# replication factor 3 for the internal topics, min.insync.replicas 2 and default replication 3.
# KAFKA_NODE=i makes up/down act on node i alone (to stop or restart one broker of the cluster).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
KAFKA_VERSION=3.9.2
base_port=${KAFKA_PORT:-9092}
nodes=${KAFKA_NODES:-1}
only=${KAFKA_NODE:-}
security=${KAFKA_SECURITY:-plaintext}
runs=${EMOSTREAM_RUN_DIR:-$repo/.run}
cache=${EMOSTREAM_CACHE:-$HOME/.cache/emostream}
# node i's ports and folder (set by node_vars)
port=$base_port; cport=${KAFKA_CONTROLLER_PORT:-$((port + 1))}; sslport=${KAFKA_SSL_PORT:-$((port + 2))}
run=$runs/kafka-$port
node_vars() {
  port=$((base_port + 10 * ($1 - 1)))
  if [ "$nodes" -gt 1 ]; then cport=$((port + 1)); fi
  run=$runs/kafka-$port
}
voters() {
  [ "$nodes" -eq 1 ] && { echo "1@127.0.0.1:$cport"; return; }
  local v="" i
  for i in $(seq 1 "$nodes"); do v="$v${v:+,}$i@127.0.0.1:$((base_port + 10 * (i - 1) + 1))"; done
  echo "$v"
}
lib=$cache/kafka-$KAFKA_VERSION/lib

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

fetch_jars() {
  [ -f "$lib/kafka_2.13-$KAFKA_VERSION.jar" ] && return 0
  command -v mvn >/dev/null || { echo "kafka.sh: Maven (mvn) is needed to fetch Kafka jars" >&2; exit 1; }
  echo "kafka.sh: fetching Kafka $KAFKA_VERSION jars from Maven Central into $lib" >&2
  mkdir -p "$lib.tmp"
  mvn -q -B -f "$here/kafka/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$lib.tmp" -Dkafka.version=$KAFKA_VERSION
  rm -rf "$lib" && mv "$lib.tmp" "$lib"
}

# Start node $1 (without waiting for its port); returns 1 if something already listens there.
start_node() {
  local id=$1
  if listening "$port"; then echo "kafka.sh: something already listens on 127.0.0.1:$port, using it" >&2; return 1; fi
  mkdir -p "$run/data"
  local listeners
  if [ "$security" = sasl_ssl ]; then
    : "${KAFKA_SCRAM_USER:?KAFKA_SECURITY=sasl_ssl needs KAFKA_SCRAM_USER}"
    : "${KAFKA_SCRAM_PASSWORD:?KAFKA_SECURITY=sasl_ssl needs KAFKA_SCRAM_PASSWORD}"
    local tls=${KAFKA_TLS_DIR:?KAFKA_SECURITY=sasl_ssl needs KAFKA_TLS_DIR}
    "$here/certs.sh" "$tls"
    listeners=$(cat <<PROPS
listeners=SASL_SSL://127.0.0.1:$port,SSL://127.0.0.1:$sslport,CONTROLLER://127.0.0.1:$cport
advertised.listeners=SASL_SSL://127.0.0.1:$port,SSL://127.0.0.1:$sslport
listener.security.protocol.map=SASL_SSL:SASL_SSL,SSL:SSL,CONTROLLER:PLAINTEXT
inter.broker.listener.name=SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$KAFKA_SCRAM_USER" password="$KAFKA_SCRAM_PASSWORD";
ssl.keystore.type=PEM
ssl.keystore.location=$tls/server-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$tls/ca.pem
listener.name.ssl.ssl.client.auth=required
PROPS
)
  else
    listeners=$(cat <<PROPS
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
PROPS
)
  fi
  touch "$run/server.properties" && chmod 600 "$run/server.properties"  # may hold the SCRAM password
  local rf=1 isr=1
  [ "$nodes" -ge 3 ] && rf=3 isr=2
  cat > "$run/server.properties" <<PROPS
process.roles=broker,controller
node.id=$id
controller.quorum.voters=$(voters)
controller.listener.names=CONTROLLER
$listeners
log.dirs=$run/data
num.partitions=4
default.replication.factor=$rf
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
min.insync.replicas=$isr
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.retention.hours=24
PROPS
  cat > "$run/log4j.properties" <<PROPS
log4j.rootLogger=WARN, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File=$run/server.log
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=WARN
PROPS
  local java_opts=(-Xmx512m -Xms256m -XX:+UseG1GC -Dlog4j.configuration="file:$run/log4j.properties")
  if [ ! -f "$run/data/meta.properties" ]; then
    local cid idfile=$runs/kafka-cluster-$base_port.id  # one cluster id for all nodes of a cluster
    if [ "$nodes" -gt 1 ] && [ -f "$idfile" ]; then cid=$(cat "$idfile")
    else cid=$(java "${java_opts[@]}" -cp "$lib/*" kafka.tools.StorageTool random-uuid 2>/dev/null)
         [ "$nodes" -gt 1 ] && echo "$cid" > "$idfile"; fi
    local scram=()
    [ "$security" = sasl_ssl ] && scram=(--add-scram "SCRAM-SHA-512=[name=$KAFKA_SCRAM_USER,password=$KAFKA_SCRAM_PASSWORD]")
    java "${java_opts[@]}" -cp "$lib/*" kafka.tools.StorageTool format -t "$cid" \
         -c "$run/server.properties" --ignore-formatted "${scram[@]}" >"$run/format.log" 2>&1
  fi
  wc -l 2>/dev/null <"$run/server.log" >"$run/server.log.start" || echo 0 >"$run/server.log.start"
  setsid nohup java "${java_opts[@]}" -cp "$lib/*" kafka.Kafka "$run/server.properties" \
        >"$run/stdout.log" 2>&1 < /dev/null &
  echo $! > "$run/pid"
}

wait_node() {
  for _ in $(seq 1 120); do
    listening "$port" && { echo "kafka.sh: broker up on 127.0.0.1:$port (logs: $run)" >&2; return 0; }
    kill -0 "$(cat "$run/pid")" 2>/dev/null || {
      # (its own log says why, "Address already in use" for one; stdout.log is often empty): this start's lines
      echo "kafka.sh: broker died, see $run/server.log and $run/stdout.log" >&2
      { tail -n "+$(( $(cat "$run/server.log.start" 2>/dev/null || echo 0) + 1 ))" "$run/server.log" 2>/dev/null \
          | grep -hE "ERROR|FATAL|Exception" || true; } | tail -5 >&2
      tail -10 "$run/stdout.log" >&2 || true; exit 1; }
    sleep 0.5
  done
  echo "kafka.sh: broker did not open port $port in 60 s" >&2; exit 1
}

# the nodes up/down act on: KAFKA_NODE alone, or all of them
targets() { if [ -n "$only" ]; then echo "$only"; else seq 1 "$nodes"; fi; }

up() {
  case "$security" in plaintext|sasl_ssl) ;; *) echo "kafka.sh: KAFKA_SECURITY is plaintext or sasl_ssl" >&2; exit 2 ;; esac
  [ "$nodes" -gt 1 ] && [ "$security" != plaintext ] && { echo "kafka.sh: KAFKA_NODES > 1 is plaintext only" >&2; exit 2; }
  fetch_jars
  local i started=()
  for i in $(targets); do  # a KRaft quorum needs its majority up: start every node, then wait
    node_vars "$i"; if start_node "$i"; then started+=("$i"); fi
  done
  for i in "${started[@]}"; do node_vars "$i"; wait_node; done
}

down() {
  local i
  for i in $(targets); do node_vars "$i"; down_node "${1:-}"; done
  if [ "${1:-}" = "--wipe" ] && [ -z "$only" ]; then rm -f "$runs/kafka-cluster-$base_port.id"; fi
  return 0
}

down_node() {
  [ -f "$run/pid" ] || { echo "kafka.sh: no broker of ours on $port"; return 0; }
  local pid; pid=$(cat "$run/pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"; for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
    echo "kafka.sh: broker on $port stopped"
  fi
  rm -f "$run/pid"
  [ "${1:-}" = "--wipe" ] && rm -rf "$run"
  return 0
}

case "${1:-}" in
  up) up ;;
  down) shift; down "${1:-}" ;;
  status) rc=0; for i in $(targets); do node_vars "$i"; if listening "$port"; then echo "kafka up on $port"; else echo "kafka down on $port"; rc=1; fi; done; exit $rc ;;
  fetch) fetch_jars ;;
  *) echo "usage: $0 up|down [--wipe]|status|fetch" >&2; exit 2 ;;
esac
