#!/usr/bin/env bash
# Starts, stops and resets the single-node Apache Kafka broker that Sagalog's tests and demos use.
#
#   broker.sh start            start a broker (or find one) and return once a client can connect
#   broker.sh stop             stop the broker this script started
#   broker.sh reset            stop it and delete its data
#   broker.sh restart          stop and start the broker this script runs (chaos tests)
#   broker.sh status           say whether a broker answers
#   broker.sh with -- CMD...   run CMD with a broker, stopping it afterwards only if this call started it
#   broker.sh node-stop N      (KAFKA_BROKERS>1) stop node N gracefully (SIGTERM) and wait for its exit
#   broker.sh node-kill N      (KAFKA_BROKERS>1) SIGKILL node N
#   broker.sh node-start N     (KAFKA_BROKERS>1) start node N; return once every node is registered
#
# KAFKA_BROKERS=N (N >= 2; 3 is what the cluster chaos phase uses) runs N combined
# broker+controller KRaft nodes of one cluster instead, with the Java broker only: node i listens on
# KAFKA_PORT + 3(i-1) (PLAINTEXT), +1 (CONTROLLER) and +2 (SASL_SSL), keeps its data in
# .kafka/<KAFKA_PORT>-x<N>/node-i/, and takes tools/kafka/cluster.properties over the template
# (replication factor min(N, 3) and min ISR 2 from three nodes, for internal topics and defaults).
# Ready means every node registered and serving metadata; `with` exports all nodes as
# KAFKA_BOOTSTRAP_SERVERS.
#
# Which broker, in this order (the first that applies wins, and is printed):
#   1. KAFKA_BOOTSTRAP_SERVERS is set: that cluster; nothing is started or stopped.
#   2. A Docker engine answers: `docker compose up -d kafka` (docker-compose.yml at the root).
#   3. Java 17+ and Maven: the broker's jars from Maven Central (tools/kafka/pom.xml, cached in
#      ~/.m2 after the first time), run with `java -cp`.
# Everything the broker writes lives in .kafka/ at the repository root (git-ignored).
#
# A Java broker started here also has a secured client listener, SASL_SSL on port+2
# (KAFKA_SASL_PORT): SCRAM-SHA-512 user `sagalog` (random password made when the storage is
# formatted) and a certificate from a CA generated locally with openssl. The settings a client
# needs are written to .kafka/<port>/client-sasl.properties (use it as SAGALOG_KAFKA_CONFIG);
# `with` exports its path as SAGALOG_TEST_SECURE_CONFIG. PLAINTEXT stays for everything else.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
state="$root/.kafka/${KAFKA_PORT:-9092}"  # one folder per broker port: several can run
port="${KAFKA_PORT:-9092}"
controller_port="${KAFKA_CONTROLLER_PORT:-$((port + 1))}"
sasl_port="${KAFKA_SASL_PORT:-$((port + 2))}"
tls="$state/tls"
client_sasl="$state/client-sasl.properties"
python="${PYTHON:-$root/.venv/bin/python}"
ready_timeout="${KAFKA_READY_TIMEOUT:-120}"
brokers="${KAFKA_BROKERS:-1}"
base_port="$port"
heap=(-Xms512m -Xmx1g)
if [ "$brokers" -gt 1 ]; then
  cluster_dir="$root/.kafka/${port}-x${brokers}"
  state="$cluster_dir"
  tls="$cluster_dir/tls"
  client_sasl="$cluster_dir/client-sasl.properties"
  heap=(-Xms256m -Xmx512m)  # three JVMs share this machine
fi

say() { printf 'kafka: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

nodes() { seq 1 "$brokers"; }
node_port() { echo $((base_port + 3 * ($1 - 1))); }

# Point the per-broker variables (state, ports, node) at node $1 of the cluster.
use_node() {
  node="$1"
  port="$(node_port "$1")"
  controller_port=$((port + 1))
  sasl_port=$((port + 2))
  state="$cluster_dir/node-$1"
}

joined() { local IFS=,; echo "$*"; }

bootstrap() {
  if [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ] || [ "$brokers" -le 1 ]; then
    echo "${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:$port}"; return
  fi
  local servers=()
  for i in $(nodes); do servers+=("127.0.0.1:$(node_port "$i")"); done
  joined "${servers[@]}"
}

# A real client round trip (metadata request through librdkafka), not just an open port. The
# client takes the user's settings (SAGALOG_KAFKA_*) for the user's cluster only: our own
# broker is probed on its PLAINTEXT listener, whatever the user's settings for secured ones.
probe() {
  if [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
    "$python" "$here/probe.py" "$(bootstrap)" "$1" "$brokers"
  else
    local own=()
    for variable in $(compgen -e | grep '^SAGALOG_KAFKA_' || true); do own+=(-u "$variable"); done
    env "${own[@]}" "$python" "$here/probe.py" "$(bootstrap)" "$1" "$brokers"
  fi
}

answers() { probe "${1:-3}" >/dev/null 2>&1; }

wait_ready() {
  say "waiting for a client to connect to $(bootstrap) (up to ${ready_timeout}s)"
  if ! probe "$ready_timeout"; then
    [ -f "$state/logs/broker.log" ] && tail -n 30 "$state/logs/broker.log" >&2
    [ "$brokers" -gt 1 ] && tail -n 5 "$cluster_dir"/node-*/logs/broker.log >&2
    die "no broker answered at $(bootstrap) within ${ready_timeout}s"
  fi
}

docker_answers() { command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1; }

java_major() {
  java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1
}

our_pid() {
  local pid
  [ -f "$state/broker.pid" ] || return 1
  pid="$(cat "$state/broker.pid")"
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

resolve_classpath() {
  local libs="$here/target/libs"
  if [ -d "$libs" ] && [ "$libs" -nt "$here/pom.xml" ] && ls "$libs"/kafka_2.13-*.jar >/dev/null 2>&1; then
    return
  fi
  say "resolving the broker's jars from Maven Central (cached in ~/.m2 after the first time)"
  rm -rf "$libs"
  (cd "$here" && mvn -q -B package) || die "Maven could not resolve org.apache.kafka:kafka_2.13 (see the output above)"
  touch "$libs"
}

# A CA and a certificate for 127.0.0.1/localhost signed by it, made once per state folder; the
# broker reads key and chain from one PEM file (ssl.keystore.type=PEM), clients trust ca.pem.
make_certificates() {
  [ -f "$tls/server-keystore.pem" ] && [ -f "$tls/ca.pem" ] && return
  command -v openssl >/dev/null 2>&1 || die "the secured listener needs the openssl command"
  mkdir -p "$tls"
  (
    cd "$tls"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=Sagalog development CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout ca.key -out ca.pem
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' > server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile server.ext -out server.pem
    cat server.key server.pem > server-keystore.pem
    chmod 600 ca.key server.key server-keystore.pem
  ) >"$state/logs/openssl.log" 2>&1 || { cat "$state/logs/openssl.log" >&2; die "making the TLS certificates failed"; }
}

sasl_bootstrap() {
  [ "$brokers" -gt 1 ] || { echo "127.0.0.1:$sasl_port"; return; }
  local servers=()
  for i in $(nodes); do servers+=("127.0.0.1:$(($(node_port "$i") + 2))"); done
  joined "${servers[@]}"
}

# What a client needs to reach the SASL_SSL listener, in librdkafka's names.
write_client_sasl() {
  local password="$1"
  (umask 077 && cat > "$client_sasl" <<EOF
# The secured listener of the broker tools/kafka/broker.sh runs on port $base_port.
# Use it with: SAGALOG_KAFKA_CONFIG=$client_sasl sagas ...  (or sagas --kafka-config FILE ...)
bootstrap.servers=$(sasl_bootstrap)
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.username=sagalog
sasl.password=$password
ssl.ca.location=$tls/ca.pem
EOF
  )
}

say_secured() {
  if [ -f "$client_sasl" ]; then
    say "secured listener: SASL_SSL at 127.0.0.1:$sasl_port; client settings in $client_sasl"
  else
    say "secured listener: SASL_SSL at 127.0.0.1:$sasl_port has no user: its storage predates it (make kafka-reset)"
  fi
}

# This broker's server.properties: the template, and for a cluster node cluster.properties over it.
render_properties() {
  local out="$state/server.properties"
  sed -e "s#@KAFKA_PORT@#$port#g" -e "s#@CONTROLLER_PORT@#$controller_port#g" \
      -e "s#@SASL_PORT@#$sasl_port#g" -e "s#@TLS_DIR@#$tls#g" \
      -e "s#@DATA_DIR@#$state/data#g" "$here/server.properties.template" > "$out"
  [ "$brokers" -gt 1 ] || return 0
  local voters=() replication=$((brokers < 3 ? brokers : 3)) min_isr=1
  [ "$replication" -ge 3 ] && min_isr=2
  for i in $(nodes); do voters+=("$i@127.0.0.1:$(($(node_port "$i") + 1))"); done
  sed -e "s#@NODE_ID@#$node#g" -e "s#@VOTERS@#$(joined "${voters[@]}")#g" \
      -e "s#@REPLICATION@#$replication#g" -e "s#@MIN_ISR@#$min_isr#g" \
      "$here/cluster.properties" > "$state/cluster.properties"
  # Drop the template's lines for the keys the cluster sets, then append the cluster's.
  awk -F= 'NR == FNR { if ($0 !~ /^#/ && NF) own[$1] = 1; next } !($1 in own)' \
      "$state/cluster.properties" "$out" > "$out.tmp"
  cat "$state/cluster.properties" >> "$out.tmp"
  mv "$out.tmp" "$out"
}

# The cluster id and the SCRAM password for a new storage: fresh for a single broker, made once
# and shared by every node of a cluster (they must format with the same id and credentials).
new_identity() {
  local cp="$1" shared="${cluster_dir:-}/identity"
  if [ "$brokers" -gt 1 ] && [ -f "$shared" ]; then cat "$shared"; return; fi
  local identity
  identity="$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1) $(openssl rand -hex 16)"
  if [ "$brokers" -gt 1 ]; then (umask 077 && echo "$identity" > "$shared"); fi
  echo "$identity"
}

start_java() {
  resolve_classpath
  mkdir -p "$state/data" "$state/logs"
  make_certificates
  render_properties
  local cp="$here/target/libs/*"
  local jvm=("${heap[@]}" -XX:+UseG1GC -Djava.awt.headless=true
             "-Dkafka.logs.dir=$state/logs" "-Dlog4j2.configurationFile=$here/log4j2.properties")
  if [ ! -f "$state/data/meta.properties" ]; then
    local cluster_id password
    read -r cluster_id password <<< "$(new_identity "$cp")"
    java "${jvm[@]}" -cp "$cp" kafka.tools.StorageTool format -t "$cluster_id" \
      -c "$state/server.properties" --ignore-formatted \
      --add-scram "SCRAM-SHA-512=[name=sagalog,password=$password]" >"$state/logs/format.log" 2>&1 \
      || { cat "$state/logs/format.log" >&2; die "formatting the broker's storage failed"; }
    write_client_sasl "$password"
  fi
  # setsid: the broker must outlive `make`, and must not get the terminal's Ctrl-C.
  setsid nohup java "${jvm[@]}" -cp "$cp" kafka.Kafka "$state/server.properties" \
    >"$state/logs/stdout.log" 2>&1 < /dev/null &
  echo $! > "$state/broker.pid"
  echo java > "$state/kind"
}

# -- a cluster of KAFKA_BROKERS nodes (Java only) ------------------------------------------------

cluster_start() {
  command -v java >/dev/null 2>&1 && [ "$(java_major)" -ge 17 ] 2>/dev/null && command -v mvn >/dev/null 2>&1 \
    || die "a $brokers-node cluster needs Java 17+ and Maven (apt-get install openjdk-17-jdk-headless maven)"
  local started=0
  for i in $(nodes); do
    use_node "$i"
    if pid="$(our_pid)"; then continue; fi
    started=$((started + 1))
    start_java
  done
  state="$cluster_dir"
  if [ "$started" -gt 0 ]; then
    say "started $started of $brokers Apache Kafka nodes with Java $(java_major) (data in $cluster_dir)"
  else
    say "already running: $brokers nodes"
  fi
  wait_ready
  say "ready: $brokers brokers at $(bootstrap)"
  say "secured listeners: SASL_SSL at $(sasl_bootstrap); client settings in $client_sasl"
}

# SIGTERM (or $2) to node $1 and wait for its exit; SIGKILL after 60 s.
node_stop() {
  use_node "$1"
  local pid signal="${2:-TERM}"
  if ! pid="$(our_pid)"; then say "node $1 is not running"; rm -f "$state/broker.pid"; return; fi
  say "node $1: kill -$signal $pid"
  kill "-$signal" "$pid"
  for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then say "node $1 still running after 60s; killing it"; kill -KILL "$pid"; fi
  rm -f "$state/broker.pid"
}

node_start() {
  use_node "$1"
  if pid="$(our_pid)"; then say "node $1 already running (pid $pid)"; else start_java; fi
  state="$cluster_dir"
  wait_ready
  say "node $1 started; $brokers brokers registered"
}

# All nodes at once: stopping them one by one would leave the last ones without a controller
# quorum, waiting for a controlled shutdown that cannot be granted.
cluster_stop() {
  local pids=()
  for i in $(nodes); do
    use_node "$i"
    if pid="$(our_pid)"; then pids+=("$pid"); fi
    rm -f "$state/kind"
  done
  [ "${#pids[@]}" -gt 0 ] || { say "no node started by this project is running"; return; }
  say "stopping ${#pids[@]} nodes (pids ${pids[*]})"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 1 60); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.5
  done
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && { say "pid $pid still running after 30s; killing it"; kill -KILL "$pid"; }; done
  for i in $(nodes); do use_node "$i"; rm -f "$state/broker.pid"; done
  say "stopped"
}

cluster_command() {
  case "$1" in
    start) cluster_start ;;
    stop) cluster_stop ;;
    reset) cluster_stop; rm -rf "$cluster_dir"; say "data deleted" ;;
    restart) cluster_stop; cluster_start ;;
    status) cmd_status ;;
    with) shift; cmd_with "$@" ;;
    node-stop) node_stop "$2" TERM ;;
    node-kill) node_stop "$2" KILL ;;
    node-start) node_start "$2" ;;
    *) echo "usage: KAFKA_BROKERS=$brokers $0 start|stop|restart|reset|status|node-stop N|node-kill N|node-start N|with -- CMD..." >&2; exit 2 ;;
  esac
}

cmd_start() {
  if [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
    say "using the cluster at KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS (starting nothing)"
    wait_ready; return
  fi
  if [ "$brokers" -gt 1 ]; then cluster_start; return; fi
  if pid="$(our_pid)"; then
    say "already running (java, pid $pid) at $(bootstrap)"; wait_ready; say_secured; return
  fi
  if answers 3; then
    say "a broker already answers at $(bootstrap); using it (starting nothing)"; return
  fi
  mkdir -p "$state"
  if docker_answers; then
    say "starting Apache Kafka with Docker: docker compose up -d kafka"
    (cd "$root" && KAFKA_PORT="$port" docker compose up -d kafka)
    echo docker > "$state/kind"
  elif command -v java >/dev/null 2>&1 && [ "$(java_major)" -ge 17 ] 2>/dev/null && command -v mvn >/dev/null 2>&1; then
    say "starting Apache Kafka $(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml") with Java $(java_major) (jars from Maven Central)"
    start_java
  else
    die "no way to start a broker here. Install one of:
  - Docker (https://docs.docker.com/engine/install/), then run make kafka again;
  - Java 17+ and Maven (Debian/Ubuntu: apt-get install openjdk-17-jdk-headless maven);
or point KAFKA_BOOTSTRAP_SERVERS at a running Kafka cluster."
  fi
  wait_ready
  say "ready at $(bootstrap)"
  if [ "$(cat "$state/kind" 2>/dev/null || true)" = java ]; then say_secured; fi
}

cmd_stop() {
  if [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
    say "KAFKA_BOOTSTRAP_SERVERS is set: the cluster is not ours to stop"; return
  fi
  if [ "$brokers" -gt 1 ]; then cluster_stop; return; fi
  local kind; kind="$(cat "$state/kind" 2>/dev/null || true)"
  if [ "$kind" = docker ]; then
    (cd "$root" && docker compose stop kafka) && rm -f "$state/kind"; return
  fi
  local pid
  if ! pid="$(our_pid)"; then
    say "no broker started by this project is running"; rm -f "$state/broker.pid"; return
  fi
  say "stopping the broker (pid $pid)"
  kill -TERM "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then
    say "still running after 30s; killing it"; kill -KILL "$pid"
  fi
  rm -f "$state/broker.pid" "$state/kind"
  say "stopped"
}

cmd_reset() {
  if [ "$(cat "$state/kind" 2>/dev/null || true)" = docker ]; then
    (cd "$root" && docker compose down -v kafka)
  else
    cmd_stop
  fi
  rm -rf "$state"
  say "data deleted"
}

cmd_restart() {
  local kind; kind="$(cat "$state/kind" 2>/dev/null || true)"
  [ -n "$kind" ] || die "no broker started by this project runs on port $port: nothing to restart"
  if [ "$kind" = docker ]; then
    (cd "$root" && docker compose restart kafka); wait_ready; return
  fi
  # Our own broker, even when a caller exported its address (as `with` does for its command).
  KAFKA_BOOTSTRAP_SERVERS='' cmd_stop
  KAFKA_BOOTSTRAP_SERVERS='' cmd_start
}

cmd_status() {
  if answers 3; then say "a broker answers at $(bootstrap)"; else say "no broker answers at $(bootstrap)"; return 1; fi
}

cmd_with() {
  [ "${1:-}" = "--" ] && shift
  local started=0
  if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ] && ! answers 3; then started=1; fi
  cmd_start
  local rc=0
  local secure=()
  [ -f "$client_sasl" ] && secure=("SAGALOG_TEST_SECURE_CONFIG=$client_sasl")
  env "${secure[@]}" KAFKA_BOOTSTRAP_SERVERS="$(bootstrap)" "$@" || rc=$?
  if [ "$started" = 1 ]; then cmd_stop; fi
  return "$rc"
}

if [ "$brokers" -gt 1 ]; then
  # Our own nodes, even when a caller exported their addresses (as `with` does for its command).
  case "${1:-}" in
    with|status) ;;
    *) KAFKA_BOOTSTRAP_SERVERS='' ;;
  esac
  cluster_command "$@"; exit
fi
case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  reset) cmd_reset ;;
  restart) cmd_restart ;;
  status) cmd_status ;;
  with) shift; cmd_with "$@" ;;
  *) echo "usage: $0 start|stop|restart|reset|status|with -- CMD..." >&2; exit 2 ;;
esac
