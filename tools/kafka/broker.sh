#!/usr/bin/env bash
# Starts, stops and resets the single-node Apache Kafka broker that Sagalog's tests and demos use.
#
#   broker.sh start            start a broker (or find one) and return once a client can connect
#   broker.sh stop             stop the broker this script started
#   broker.sh reset            stop it and delete its data
#   broker.sh restart          stop and start the broker this script runs (chaos tests)
#   broker.sh status           say whether a broker answers
#   broker.sh with -- CMD...   run CMD with a broker, stopping it afterwards only if this call started it
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

say() { printf 'kafka: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

bootstrap() { echo "${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:$port}"; }

# A real client round trip (metadata request through librdkafka), not just an open port. The
# client takes the user's settings (SAGALOG_KAFKA_*) for the user's cluster only: our own
# broker is probed on its PLAINTEXT listener, whatever the user's settings for secured ones.
probe() {
  if [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
    "$python" "$here/probe.py" "$(bootstrap)" "$1"
  else
    local own=()
    for variable in $(compgen -e | grep '^SAGALOG_KAFKA_' || true); do own+=(-u "$variable"); done
    env "${own[@]}" "$python" "$here/probe.py" "$(bootstrap)" "$1"
  fi
}

answers() { probe "${1:-3}" >/dev/null 2>&1; }

wait_ready() {
  say "waiting for a client to connect to $(bootstrap) (up to ${ready_timeout}s)"
  if ! probe "$ready_timeout"; then
    [ -f "$state/logs/broker.log" ] && tail -n 30 "$state/logs/broker.log" >&2
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

# What a client needs to reach the SASL_SSL listener, in librdkafka's names.
write_client_sasl() {
  local password="$1"
  (umask 077 && cat > "$client_sasl" <<EOF
# The secured listener of the broker tools/kafka/broker.sh runs on port $port.
# Use it with: SAGALOG_KAFKA_CONFIG=$client_sasl sagas ...  (or sagas --kafka-config FILE ...)
bootstrap.servers=127.0.0.1:$sasl_port
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

start_java() {
  resolve_classpath
  mkdir -p "$state/data" "$state/logs"
  make_certificates
  sed -e "s#@KAFKA_PORT@#$port#g" -e "s#@CONTROLLER_PORT@#$controller_port#g" \
      -e "s#@SASL_PORT@#$sasl_port#g" -e "s#@TLS_DIR@#$tls#g" \
      -e "s#@DATA_DIR@#$state/data#g" "$here/server.properties.template" > "$state/server.properties"
  local cp="$here/target/libs/*"
  local jvm=(-Xms512m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true
             "-Dkafka.logs.dir=$state/logs" "-Dlog4j2.configurationFile=$here/log4j2.properties")
  if [ ! -f "$state/data/meta.properties" ]; then
    local cluster_id
    local cluster_id password
    cluster_id="$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)"
    password="$(openssl rand -hex 16)"
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

cmd_start() {
  if [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
    say "using the cluster at KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS (starting nothing)"
    wait_ready; return
  fi
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

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  reset) cmd_reset ;;
  restart) cmd_restart ;;
  status) cmd_status ;;
  with) shift; cmd_with "$@" ;;
  *) echo "usage: $0 start|stop|restart|reset|status|with -- CMD..." >&2; exit 2 ;;
esac
