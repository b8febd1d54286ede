"""Tests in three levels: unit/ (pure modules, no server: `make unit`), integration/ (the app with fake ICE and
OSS over loopback), e2e/ (processes, PostgreSQL, Redis, Celery, a browser, a built wheel). Shared builders and
fixtures live in support/."""

pytest_plugins = ["tests.support.fixtures"]
