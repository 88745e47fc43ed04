#!/bin/sh
# Build the pgproxy image, run it (read-only, as uid 65532) in front of a
# PostgreSQL, drive the users/Demo scenario through it, probe the admin
# endpoint, stop it with SIGTERM and show its logs. Everything on loopback
# (--network host). Run from the repository root with the dev virtualenv:
#
#   docker/try-image.sh                                   # official python:3.11-slim base
#   BASE=local/debian-python:bookworm docker/try-image.sh # a base imported locally (docker/README.md)
#   UPSTREAM=127.0.0.1:5432 docker/try-image.sh           # an existing server (user postgres, trust)
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
IMAGE=${IMAGE:-pgproxy:try}
LISTEN=127.0.0.1:${PROXY_PORT:-16432}
ADMIN=127.0.0.1:${ADMIN_PORT:-19090}
NAME=pgproxy-try
tmp=$(mktemp -d)
pg_pid=
cleanup() {
    docker rm -f "$NAME" >/dev/null 2>&1 || true
    if [ -n "$pg_pid" ]; then kill "$pg_pid" 2>/dev/null && wait "$pg_pid" 2>/dev/null || echo "the PostgreSQL launcher did not stop cleanly" >&2; fi
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM
step() { printf '\n== %s\n' "$*"; }
get() { "$PY" -c 'import sys, urllib.request, urllib.error
try:
    r = urllib.request.urlopen(sys.argv[1], timeout=5); print(r.status, r.read().decode().strip())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode().strip())' "$1"; }

step "docker build (base ${BASE:-python:3.11-slim-bookworm})"
docker build --network host -q ${BASE:+--build-arg BASE="$BASE"} -f docker/Dockerfile -t "$IMAGE" .
docker image ls "$IMAGE" --format '{{.Repository}}:{{.Tag}} {{.Size}}'

if [ -z "${UPSTREAM:-}" ]; then
    step "PostgreSQL (embedded, from the dev virtualenv)"
    "$PY" -c 'import signal
from pgproxy.demo.embedded import EmbeddedPostgres
stop = {signal.SIGTERM, signal.SIGINT}
signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # else SIGTERM kills this process before sigwait sees it
pg = EmbeddedPostgres().start()
print(pg.port, pg.major, flush=True)
signal.sigwait(stop)
pg.stop()' >"$tmp/pg" &
    pg_pid=$!
    while [ ! -s "$tmp/pg" ]; do sleep 0.2; done
    read -r pg_port pg_major <"$tmp/pg"
    UPSTREAM=127.0.0.1:$pg_port
    echo "PostgreSQL $pg_major on $UPSTREAM"
fi

step "docker run --read-only (uid 65532), upstream $UPSTREAM"
docker run -d --name "$NAME" --network host --read-only \
    -e PGPROXY_PROXY_UPSTREAM="$UPSTREAM" -e PGPROXY_PROXY_LISTEN="$LISTEN" \
    -e PGPROXY_ADMIN_LISTEN="$ADMIN" -e PGPROXY_LOG_DETAIL=message \
    -e PGPROXY_PORT=tcp://10.96.0.12:6432 -e PGPROXY_SERVICE_HOST=10.96.0.12 \
    "$IMAGE" >/dev/null
until get "http://$ADMIN/startup" 2>/dev/null | grep -q '^200'; do sleep 0.2; done
docker exec "$NAME" id

step "probes"
for path in /startup /livez /readyz; do printf '%-9s ' "$path"; get "http://$ADMIN$path"; done

step "the users/Demo scenario through the proxy (SQLAlchemy + psycopg)"
"$PY" -c "from pgproxy.demo.scenario import run_scenario
print(run_scenario('postgresql+psycopg://postgres@$LISTEN/postgres?sslmode=disable'))"

step "/metrics (pgproxy_* and the statement histogram's count)"
sleep 0.1
"$PY" -c 'import sys, urllib.request
for line in urllib.request.urlopen(sys.argv[1], timeout=5).read().decode().splitlines():
    if line.startswith(("pgproxy_sessions_total", "pgproxy_statements_total", "db_client_operation_duration_seconds_count", "pgproxy_build_info", "pgproxy_bytes_total")):
        print(line)' "http://$ADMIN/metrics"

step "health as Docker sees it (HEALTHCHECK -> /readyz)"
until [ "$(docker inspect -f "{{.State.Health.Status}}" "$NAME")" != starting ]; do sleep 1; done
docker inspect -f '{{.State.Health.Status}}' "$NAME"

step "docker stop (SIGTERM): exit code"
docker stop -t 30 "$NAME" >/dev/null
docker inspect -f '{{.State.ExitCode}}' "$NAME"

step "docker logs (JSON lines; DataRow and query events, first and last lines)"
docker logs "$NAME" 2>&1 >"$tmp/log"
grep -E '"event":"proxy\.started"' "$tmp/log"
grep -E '"type":"DataRow"' "$tmp/log" | grep users_username | head -1
grep -E '"event":"query"' "$tmp/log" | grep -i 'from users' | head -1
tail -2 "$tmp/log"
