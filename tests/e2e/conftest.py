"""Processes and real services: PostgreSQL, Redis, Celery workers, gunicorn, a browser, a built wheel.

Each test skips with the reason when its binary is absent, and fails instead under CI=true."""
