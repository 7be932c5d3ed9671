#!/usr/bin/env bash
# One command for the tests: venv + install, then the suite on the embedded default
# (SQLite + filesystem broker), then the Django tests again on PostgreSQL + Redis when those
# servers answer (required when ROBUSTAL_REQUIRE_SERVICES=1, as .ci/run sets).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh || exit 1

export SECRET_KEY="${SECRET_KEY:-test-only-secret-key-not-for-production-0123456789}"
export ALLOWED_HOSTS="localhost,127.0.0.1,testserver"
export SECURE_SSL_REDIRECT=0 SESSION_COOKIE_SECURE=0 CSRF_COOKIE_SECURE=0
export ROBUSTAL_DATA_DIR="${ROBUSTAL_TEST_DATA_DIR:-$ROOT/var/test}"
export ROBUSTAL_CACHE_DIR="${ROBUSTAL_CACHE_DIR:-$HOME/.cache/robustal}"
PG_URL="${ROBUSTAL_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/robustal}"
REDIS_URL="${ROBUSTAL_TEST_REDIS_URL:-redis://127.0.0.1:6379/15}"
export ROBUSTAL_TEST_REDIS_URL="$REDIS_URL"

run_pytest() {  # pytest's exit 5 ("no tests collected") is not a failure here
  .venv/bin/python -m pytest "$@"
  local rc=$?
  [ $rc -eq 5 ] && rc=0
  return $rc
}

echo "==> pass 1: embedded default (SQLite, filesystem broker)"
( unset DATABASE_URL CELERY_BROKER_URL; run_pytest tests "$@" )
rc1=$?

services_up() {
  .venv/bin/python - "$PG_URL" "$REDIS_URL" <<'PY'
import sys, psycopg, redis
try:
    psycopg.connect(sys.argv[1].replace("postgres://", "postgresql://"), connect_timeout=3, dbname="postgres").close()
    redis.Redis.from_url(sys.argv[2], socket_connect_timeout=3).ping()
except Exception as exc:
    print(f"    not reachable: {exc}")
    sys.exit(1)
PY
}

rc2=0
if services_up; then
  echo "==> pass 2: PostgreSQL + Redis (Django and worker tests)"
  DATABASE_URL="$PG_URL" CELERY_BROKER_URL="$REDIS_URL" run_pytest tests/web "$@"
  rc2=$?
elif [ "${ROBUSTAL_REQUIRE_SERVICES:-0}" = "1" ]; then
  echo "PostgreSQL/Redis required (ROBUSTAL_REQUIRE_SERVICES=1) but not reachable" >&2
  rc2=1
else
  echo "==> pass 2 skipped: PostgreSQL/Redis not reachable (set ROBUSTAL_REQUIRE_SERVICES=1 to require)"
fi
[ $rc1 -eq 0 ] && [ $rc2 -eq 0 ]
