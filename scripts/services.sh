#!/usr/bin/env bash
# Local PostgreSQL primary, hot-standby replicas and Redis for development and tests.
#
# Everything lives under $PSS_DATA (default: <repo>/.local) and listens on the project's own
# ports, never on the system's default instances. PostgreSQL runs as the `postgres` user.
#
#   scripts/services.sh up          start (creating on first use) and wait until ready
#   scripts/services.sh down        stop everything this script started, by pid file
#   scripts/services.sh status      one line per service
#   scripts/services.sh lag SECS    set recovery_min_apply_delay on the main replica
#   scripts/services.sh env         print the URLs as shell exports
#   scripts/services.sh reset       down, delete the data folder, up
#
# Two replicas stream from the primary: the main one (fresh) and a "lagging" one that
# always applies WAL with a 2 s delay, so tests can prove reads stay fresh under lag
# without changing a server other tests share.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
data=${PSS_DATA:-$repo/.local}
# PostgreSQL runs as `postgres`, which must reach the data folder: a checkout under a private
# home (/root/...) is not reachable, so its data goes to a per-checkout folder in /tmp.
if [ -z "${PSS_DATA:-}" ] && [ "$(id -u)" = 0 ] && id postgres >/dev/null 2>&1 \
    && ! runuser -u postgres -- test -x "$repo" 2>/dev/null; then
  data=${TMPDIR:-/tmp}/product-size-service-$(printf '%s' "$repo" | md5sum | cut -c1-8)
fi
pg_primary_port=${PSS_PG_PRIMARY_PORT:-55432}
pg_replica_port=${PSS_PG_REPLICA_PORT:-55433}
pg_lagging_port=${PSS_PG_LAGGING_PORT:-55434}
redis_port=${PSS_REDIS_PORT:-56379}
lagging_delay=${PSS_LAGGING_DELAY:-2s}
db_name=product_sizes

log() { printf '[services] %s\n' "$*" >&2; }

as_postgres() {
  if [ "$(id -un)" = postgres ]; then "$@"; else runuser -u postgres -- "$@"; fi
}

pg_bindir() {
  local dir
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
    pg_config --bindir
    return
  fi
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$dir" ] && echo "$dir"
}

ensure_packages() {
  local missing=()
  [ -n "$(pg_bindir || true)" ] || missing+=(postgresql)
  command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
      log "missing packages: ${missing[*]} (run as root to install them)"
      exit 1
    fi
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  id postgres >/dev/null 2>&1 || { log "no postgres user: install the postgresql package"; exit 1; }
}

pg_running() { # datadir
  [ -f "$1/postmaster.pid" ] && kill -0 "$(head -n 1 "$1/postmaster.pid")" 2>/dev/null
}

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pg_start() { # datadir port
  local dir=$1 port=$2 bin
  bin=$(pg_bindir)
  if pg_running "$dir"; then return; fi
  if port_taken "$port"; then
    log "port $port is taken by another server (another checkout's services? stop them with its scripts/services.sh down)"
    exit 1
  fi
  as_postgres "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 \
    -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$data/pg/run" start >/dev/null
}

pg_stop() { # datadir
  local dir=$1
  [ -d "$dir" ] || return 0
  if pg_running "$dir"; then
    as_postgres "$(pg_bindir)/pg_ctl" -D "$dir" -m fast -w -t 60 stop >/dev/null
  fi
}

wait_pg() { # port
  local i
  for i in $(seq 1 100); do
    if pg_isready_at "$1"; then return 0; fi
    sleep 0.1
  done
  log "PostgreSQL on port $1 did not become ready"
  return 1
}

pg_isready_at() { "$(pg_bindir)/pg_isready" -q -h 127.0.0.1 -p "$1" -U postgres; }

create_primary() {
  local dir=$data/pg/primary bin
  bin=$(pg_bindir)
  [ -f "$dir/PG_VERSION" ] && return
  log "initialising primary in $dir"
  as_postgres "$bin/initdb" -D "$dir" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  cat >>"$dir/postgresql.conf" <<CONF
# product-size-service local primary
wal_level = replica
max_wal_senders = 32
# Replicas and tests' own standbys stream without slots: keep enough WAL that neither a
# pg_basebackup under way nor a standby a little behind finds its next segment recycled by
# a checkpoint (every pg_basebackup -c fast forces one).
wal_keep_size = 512MB
hot_standby = on
synchronous_commit = on
fsync = on
shared_buffers = 128MB
max_connections = 200
CONF
}

create_replica() { # name port delay
  local name=$1 port=$2 delay=$3 dir=$data/pg/$1
  [ -f "$dir/PG_VERSION" ] && return
  log "creating replica '$name' from the primary (pg_basebackup)"
  as_postgres "$(pg_bindir)/pg_basebackup" -h 127.0.0.1 -p "$pg_primary_port" -U postgres \
    -D "$dir" -R -X stream -c fast
  if [ "$delay" != 0 ]; then
    echo "recovery_min_apply_delay = '$delay'" | as_postgres tee -a "$dir/postgresql.auto.conf" >/dev/null
  fi
}

redis_pidfile() { echo "$data/redis/redis.pid"; }

redis_running() {
  local pf
  pf=$(redis_pidfile)
  [ -f "$pf" ] && kill -0 "$(cat "$pf")" 2>/dev/null
}

redis_start() {
  mkdir -p "$data/redis"
  redis_running && return
  if port_taken "$redis_port"; then
    log "port $redis_port is taken by another server"
    exit 1
  fi
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize yes --pidfile "$(redis_pidfile)" --dir "$data/redis" \
    --logfile "$data/redis/redis.log" >/dev/null
  local i
  for i in $(seq 1 50); do
    redis-cli -p "$redis_port" ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  log "Redis on port $redis_port did not start"
  return 1
}

redis_stop() {
  local pf i
  pf=$(redis_pidfile)
  redis_running || { rm -f "$pf"; return 0; }
  kill "$(cat "$pf")"
  for i in $(seq 1 50); do redis_running || break; sleep 0.1; done
  rm -f "$pf"
}

up() {
  ensure_packages
  mkdir -p "$data/pg"
  mkdir -p "$data/pg/run"
  chown postgres "$data/pg" "$data/pg/run"
  create_primary
  pg_start "$data/pg/primary" "$pg_primary_port"
  wait_pg "$pg_primary_port"
  if ! "$(pg_bindir)/psql" -h 127.0.0.1 -p "$pg_primary_port" -U postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname = '$db_name'" | grep -q 1; then
    "$(pg_bindir)/psql" -h 127.0.0.1 -p "$pg_primary_port" -U postgres -qc "CREATE DATABASE $db_name"
  fi
  create_replica replica "$pg_replica_port" 0
  create_replica lagging "$pg_lagging_port" "$lagging_delay"
  pg_start "$data/pg/replica" "$pg_replica_port"
  pg_start "$data/pg/lagging" "$pg_lagging_port"
  wait_pg "$pg_replica_port"
  wait_pg "$pg_lagging_port"
  redis_start
  log "up: primary :$pg_primary_port, replica :$pg_replica_port, lagging replica :$pg_lagging_port ($lagging_delay), redis :$redis_port"
}

down() {
  redis_stop
  pg_stop "$data/pg/lagging"
  pg_stop "$data/pg/replica"
  pg_stop "$data/pg/primary"
  log "down"
}

status() {
  local name port
  for name in primary replica lagging; do
    case $name in
      primary) port=$pg_primary_port ;;
      replica) port=$pg_replica_port ;;
      lagging) port=$pg_lagging_port ;;
    esac
    if pg_running "$data/pg/$name"; then echo "postgres-$name :$port up"; else echo "postgres-$name :$port down"; fi
  done
  if redis_running; then echo "redis :$redis_port up"; else echo "redis :$redis_port down"; fi
}

set_lag() { # seconds
  local secs=${1:?usage: services.sh lag SECONDS}
  "$(pg_bindir)/psql" -h 127.0.0.1 -p "$pg_replica_port" -U postgres -qc \
    "ALTER SYSTEM SET recovery_min_apply_delay = '${secs}s'" -c "SELECT pg_reload_conf()" >/dev/null
  log "replica :$pg_replica_port now applies WAL ${secs}s late"
}

print_env() {
  cat <<ENV
export DATABASE_URL=postgres://postgres@127.0.0.1:$pg_primary_port/$db_name
export DATABASE_REPLICA_URL=postgres://postgres@127.0.0.1:$pg_replica_port/$db_name
export PSS_TEST_LAGGING_REPLICA_URL=postgres://postgres@127.0.0.1:$pg_lagging_port/$db_name
export REDIS_URL=redis://127.0.0.1:$redis_port
ENV
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) status ;;
  lag) set_lag "${2:-}" ;;
  env) print_env ;;
  reset) down; rm -rf "$data"; up ;;
  running) redis_running && pg_running "$data/pg/primary" ;;
  *) echo "usage: $0 up|down|status|lag SECONDS|env|reset|running" >&2; exit 2 ;;
esac
