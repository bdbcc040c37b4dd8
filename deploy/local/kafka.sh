#!/usr/bin/env bash
# A real single-node Apache Kafka broker (KRaft), from Maven Central jars on the installed JDK.
#
#   deploy/local/kafka.sh up|down|status
#
# Settings (environment): KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (KAFKA_PORT+1),
# EMOSTREAM_RUN_DIR (.run/ in the repo: data, logs, pid), EMOSTREAM_CACHE (~/.cache/emostream: jars).
# Idempotent: `up` fetches the jars once, formats storage once, and does nothing if the broker runs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
KAFKA_VERSION=3.9.2
port=${KAFKA_PORT:-9092}
cport=${KAFKA_CONTROLLER_PORT:-$((port + 1))}
run=${EMOSTREAM_RUN_DIR:-$repo/.run}/kafka-$port
cache=${EMOSTREAM_CACHE:-$HOME/.cache/emostream}
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

up() {
  if listening "$port"; then echo "kafka.sh: something already listens on 127.0.0.1:$port, using it" >&2; return 0; fi
  fetch_jars
  mkdir -p "$run/data"
  cat > "$run/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$run/data
num.partitions=4
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
min.insync.replicas=1
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
    local cid; cid=$(java "${java_opts[@]}" -cp "$lib/*" kafka.tools.StorageTool random-uuid 2>/dev/null)
    java "${java_opts[@]}" -cp "$lib/*" kafka.tools.StorageTool format -t "$cid" \
         -c "$run/server.properties" --ignore-formatted >"$run/format.log" 2>&1
  fi
  setsid nohup java "${java_opts[@]}" -cp "$lib/*" kafka.Kafka "$run/server.properties" \
        >"$run/stdout.log" 2>&1 < /dev/null &
  echo $! > "$run/pid"
  for _ in $(seq 1 120); do
    listening "$port" && { echo "kafka.sh: broker up on 127.0.0.1:$port (logs: $run)" >&2; return 0; }
    kill -0 "$(cat "$run/pid")" 2>/dev/null || { echo "kafka.sh: broker died, see $run/stdout.log" >&2; tail -20 "$run/stdout.log" >&2; exit 1; }
    sleep 0.5
  done
  echo "kafka.sh: broker did not open port $port in 60 s" >&2; exit 1
}

down() {
  [ -f "$run/pid" ] || return 0
  local pid; pid=$(cat "$run/pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"; for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$run/pid"
  [ "${1:-}" = "--wipe" ] && rm -rf "$run"
  return 0
}

case "${1:-}" in
  up) up ;;
  down) shift; down "${1:-}" ;;
  status) listening "$port" && echo "kafka up on $port" || { echo "kafka down on $port"; exit 1; } ;;
  fetch) fetch_jars ;;
  *) echo "usage: $0 up|down [--wipe]|status|fetch" >&2; exit 2 ;;
esac
