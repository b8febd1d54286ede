#!/bin/sh
# The image's entrypoint: `web` (default) migrates and execs gunicorn, `worker` execs `receiver worker`,
# `healthcheck` probes /healthz; anything else is run as given (e.g. `receiver reconcile`).
set -eu

cmd="${1:-web}"
if [ "$#" -gt 0 ]; then shift; fi

case "$cmd" in
    web)
        # Migrations first; with several web replicas, run them from one (or a one-off `receiver db upgrade`).
        receiver db upgrade
        exec gunicorn -c /app/gunicorn.conf.py "$@" receiver.wsgi:app
        ;;
    worker)
        exec receiver worker "$@"
        ;;
    healthcheck)
        exec python -c 'import os, urllib.request; urllib.request.urlopen("http://127.0.0.1:%s/healthz" % os.environ.get("PORT", "8000"), timeout=2)'
        ;;
    *)
        exec "$cmd" "$@"
        ;;
esac
