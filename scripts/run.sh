#!/usr/bin/env bash
# One command for the embedded default: venv + install, migrate, demo accounts and dataset,
# then a Celery worker and the web server. SQLite + Celery's filesystem broker: no servers needed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
export DEBUG="${DEBUG:-1}"
HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-8000}"
mkdir -p var/log
PYTHON=.venv/bin/python
$PYTHON manage.py migrate --noinput -v0
$PYTHON manage.py setup_demo
if $PYTHON manage.py help load_demo_project >/dev/null 2>&1; then
  $PYTHON manage.py load_demo_project
fi
echo "==> starting Celery worker with beat (queues default,train; log: var/log/worker.log)"
# -B: the embedded beat sends the periodic sweep that re-enqueues a loop step whose message was
# lost (broker down when a batch completed, worker killed); one process is enough here.
.venv/bin/celery -A config worker -B -Q default,train --concurrency 1 -l info >var/log/worker.log 2>&1 &
WORKER_PID=$!
trap 'kill $WORKER_PID 2>/dev/null || true' EXIT INT TERM
echo "==> web server: http://$HOST:$PORT/  (admin: http://$HOST:$PORT/admin/)"
echo "    press Ctrl+C to stop both"
exec_web() {
  .venv/bin/gunicorn -c config/gunicorn.conf.py config.wsgi --bind "$HOST:$PORT" \
    --access-logfile var/log/web-access.log
}
exec_web
