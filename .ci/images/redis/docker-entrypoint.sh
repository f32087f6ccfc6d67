#!/bin/sh
# What the official redis image's entrypoint does that compose.yaml and testcontainers rely on:
# arguments that start with a dash go to redis-server; the server runs as `redis`, owning /data,
# never as root; protected mode is off (the server is reached over the container network, and
# the official image is built that way).
set -eu

case "${1:-}" in
    -*) set -- redis-server "$@" ;;
esac

if [ "${1:-}" = redis-server ] && [ "$(id -u)" = 0 ]; then
    chown -R redis:redis /data
    exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi

case "${1:-} ${2:-}" in
    "redis-server -v" | "redis-server --version" | "redis-server -h" | "redis-server --help") ;;
    "redis-server "*) shift; set -- redis-server --protected-mode no "$@" ;;
esac

exec "$@"
