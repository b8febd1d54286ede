# receiver: one image for the web process (gunicorn) and the workers (`receiver worker`, Celery).
#   docker build -t receiver .
#   docker run receiver            -> migrate (`receiver db upgrade`), then exec gunicorn
#   docker run receiver worker     -> Celery worker + inbox sweeper (RECEIVER_QUEUE=celery)
# compose.yaml wires it to PostgreSQL and Redis. The image runs the wheel, never a source tree: the
# migrations, templates and static files ship inside the package (pyproject.toml's package-data).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Dependencies first, into the venv the image ships, so a source change does not reinstall them. The stub
# package (in its own folder, so none of its build output reaches the wheel) only lets pip resolve the extras.
WORKDIR /deps
COPY pyproject.toml README.md constraints.txt ./
RUN mkdir receiver && touch receiver/__init__.py \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install -c constraints.txt ".[postgres,celery,server]" \
    && /opt/venv/bin/pip uninstall -y receiver
# The wheel, from a clean folder holding only what it is built from.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY receiver ./receiver
RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RECEIVER_DATA_DIR=/var/lib/receiver \
    PORT=8000
RUN groupadd --system --gid 10001 receiver \
    && useradd --system --uid 10001 --gid receiver --home-dir /app --shell /usr/sbin/nologin receiver \
    && mkdir -p /var/lib/receiver \
    && chown receiver:receiver /var/lib/receiver
COPY --from=build /opt/venv /opt/venv
COPY --from=build /wheels /tmp/wheels
# Install the wheel into the venv that holds its dependencies (`pip check` proves they match), then prove the
# installed package migrates a throwaway database: a wheel without its migrations fails the build, not a deploy.
RUN pip install --no-deps --no-index /tmp/wheels/receiver-*.whl \
    && pip check \
    && RECEIVER_DATA_DIR=/tmp/receiver-check RECEIVER_DATABASE_URL=sqlite:////tmp/receiver-check/check.db \
       receiver db upgrade \
    && rm -rf /tmp/wheels /tmp/receiver-check
WORKDIR /app
COPY gunicorn.conf.py ./
COPY docker/entrypoint.sh /usr/local/bin/receiver-entrypoint
USER 10001:10001
EXPOSE 8000
VOLUME ["/var/lib/receiver"]
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 CMD ["receiver-entrypoint", "healthcheck"]
# gunicorn: SIGTERM = graceful (finish requests for graceful_timeout); Celery: SIGTERM = warm shutdown.
STOPSIGNAL SIGTERM
ENTRYPOINT ["receiver-entrypoint"]
CMD ["web"]
