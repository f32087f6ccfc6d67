#!/bin/sh
# The contract of the official postgres image's entrypoint that compose.yaml and testcontainers
# rely on: on first start with an empty $PGDATA, make a cluster whose superuser is
# $POSTGRES_USER (default postgres) with password $POSTGRES_PASSWORD (required), create
# $POSTGRES_DB (default: the user's name), accept password logins from any address; then run
# the server as the `postgres` user, never as root.
set -eu

if [ "${1:-}" != postgres ]; then
    exec "$@"
fi
case " $* " in
    *" -V "* | *" --version "* | *" -? "* | *" --help "* | *" --describe-config "*) exec "$@" ;;
esac

if [ "$(id -u)" = 0 ]; then
    install -d -o postgres -g postgres -m 700 "$PGDATA"
    install -d -o postgres -g postgres -m 3777 /var/run/postgresql
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "entrypoint: POSTGRES_PASSWORD must be set" >&2
        exit 1
    fi
    superuser="${POSTGRES_USER:-postgres}"
    database="${POSTGRES_DB:-$superuser}"
    password_file="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" > "$password_file"
    initdb --pgdata="$PGDATA" --username="$superuser" --pwfile="$password_file" \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 >/dev/null
    rm -f "$password_file"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
    # Only the socket while the database is created, so nobody connects to a half-made cluster.
    pg_ctl --pgdata="$PGDATA" --options="-c listen_addresses=''" --wait start >/dev/null
    if [ "$database" != postgres ]; then
        psql --username="$superuser" --dbname=postgres --set=ON_ERROR_STOP=1 --quiet \
            --command="CREATE DATABASE \"$database\"" >/dev/null
    fi
    pg_ctl --pgdata="$PGDATA" --mode=fast --wait stop >/dev/null
    echo "entrypoint: new cluster in $PGDATA (superuser $superuser, database $database)"
fi

exec "$@"
