# syntax=docker/dockerfile:1
#
# The conversations service (API.md §7): `docker build -t conversations-service .`, then
# `docker run -e DATABASE_URL=... -e REDIS_URL=... -p 8000:8000 conversations-service`
# (compose.yaml wires it to PostgreSQL and Redis). Checked by tests/test_deployment.py and hadolint.
#
# Two stages: `build` turns the dependencies listed in pyproject.toml into wheels; the runtime
# stage installs only those wheels (no index, no compiler, no pip cache) and runs the package from
# source in /app, where `service/migrate.py` finds `schema.sql` one directory above the package.

# ---- build: wheels of the project's runtime dependencies -------------------------------------
FROM python:3.11-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
COPY pyproject.toml ./

# Only [project].dependencies, read with the standard library: the project itself is not built
# (it runs from source), so a change under service/ does not rebuild this layer. Every dependency
# ships binary wheels for CPython 3.11 on amd64 and arm64, so no compiler is needed; if one ever
# has to be built from source, this is the stage to add build-essential to.
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(deps))" \
        > requirements.txt \
    && pip wheel --wheel-dir /wheels --requirement requirements.txt \
    && cp requirements.txt /wheels/requirements.txt

# ---- runtime ---------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# The wheels are bind-mounted from the build stage, so they never become a layer of this image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --no-cache-dir --find-links=/wheels --requirement /wheels/requirements.txt

# A fixed, unprivileged uid/gid (10001), so volume and Kubernetes securityContext settings can
# name it. The code stays owned by root: the service cannot rewrite itself.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app

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
