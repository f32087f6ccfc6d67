#
# The conversations service (docs/api.md §7): `docker build -t conversations-service .`, then
# `docker run -e DATABASE_URL=... -e REDIS_URL=... -p 8000:8000 conversations-service`
# (compose.yaml wires it to PostgreSQL and Redis). Checked by tests/test_deployment.py and hadolint,
# and built and started for real by tests/test_compose_stack.py.
#
# No `# syntax=` line: it would make every BuildKit build fetch that frontend from a registry, so
# an offline or mirror-only build would fail before its first step. Nothing here needs more than
# the builder's own frontend, and no `RUN --mount` either, so the file builds with BuildKit, with
# the legacy builder (docker-compose v1's default) and with buildah alike.
#
# Two stages: `build` installs exactly the versions pinned in requirements.lock, each checked
# against its hashes, into a virtual environment; the runtime stage copies that environment
# (installed packages only: no wheels, no pip cache, no pip) and runs the package from source in
# /app, where `service/store/migrate.py` finds `schema.sql` beside the package.

# ---- build: the locked runtime dependencies, in a virtual environment ------------------------
FROM python:3.11-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
COPY requirements.lock ./

# --require-hashes: every package must be in the lock, pinned, with a matching hash (a missing or
# changed one stops the build). --only-binary: every dependency ships wheels for CPython 3.11 on
# amd64 and arm64, so nothing is compiled, except openapi-ui-bundles (the docs page's Swagger UI
# files), which is published as a source archive of static files only: it is built from its
# hashed sdist, pure Python, no compiler. If a compiled one ever has to be built from source,
# this is the stage to add build-essential to. The environment has no pip of its own: the image's pip
# installs into it. The project itself is not installed (it runs from source), so a change under
# service/ does not rebuild this layer.
RUN python -m venv --without-pip /opt/venv \
    && pip --python /opt/venv/bin/python install --no-cache-dir --require-hashes --only-binary=:all: \
        --no-binary=openapi-ui-bundles --requirement requirements.lock

# ---- runtime ---------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH

# A fixed, unprivileged uid/gid (10001), so volume and Kubernetes securityContext settings can
# name it. The code and the environment stay owned by root: the service cannot rewrite itself.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app

COPY --from=build /opt/venv /opt/venv

WORKDIR /app
COPY service/ ./service/
COPY schema.sql ./

# Events wait in the outbox while Redis cannot confirm they survive its crash (README, "Guarantees").
ENV EVENTS_REQUIRE_DURABLE=true

USER 10001:10001

EXPOSE 8000

# Liveness only (/health checks no dependency); compose.yaml's healthcheck uses /ready instead.
# urllib raises on anything but 2xx, and on a refused connection, so the exit code says it all.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8000') + '/health', timeout=4)"]

# python is PID 1 and handles SIGTERM itself (uvicorn's graceful shutdown, bounded by
# SHUTDOWN_TIMEOUT); give the container longer than that to stop (compose: stop_grace_period).
ENTRYPOINT ["python", "-m", "service"]
CMD ["serve"]
