# receiver: one image for the web process (gunicorn) and the workers (`receiver worker`, Celery).
#   docker build -t receiver .
#   docker run receiver            -> migrate (`receiver db upgrade`), then exec gunicorn
#   docker run receiver worker     -> Celery worker + inbox sweeper (RECEIVER_QUEUE=celery)
# compose.yaml wires it to PostgreSQL and Redis.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# Dependencies first, so a source change does not reinstall them.
COPY pyproject.toml README.md constraints.txt ./
RUN mkdir receiver && touch receiver/__init__.py \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install -c constraints.txt ".[postgres,celery,server]" \
    && /opt/venv/bin/pip uninstall -y receiver
COPY receiver ./receiver
COPY migrations ./migrations
# Editable: receiver finds migrations/ beside its package, so the source tree stays at /app.
RUN /opt/venv/bin/pip install --no-deps -e .

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RECEIVER_DATA_DIR=/var/lib/receiver \
    PORT=8000
RUN groupadd --system --gid 10001 receiver \
    && useradd --system --uid 10001 --gid receiver --home-dir /app --shell /usr/sbin/nologin receiver \
    && mkdir -p /var/lib/receiver \
    && chown receiver:receiver /var/lib/receiver
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
COPY gunicorn.conf.py alembic.ini ./
COPY docker/entrypoint.sh /usr/local/bin/receiver-entrypoint
USER 10001:10001
EXPOSE 8000
VOLUME ["/var/lib/receiver"]
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 CMD ["receiver-entrypoint", "healthcheck"]
# gunicorn: SIGTERM = graceful (finish requests for graceful_timeout); Celery: SIGTERM = warm shutdown.
STOPSIGNAL SIGTERM
ENTRYPOINT ["receiver-entrypoint"]
CMD ["web"]
