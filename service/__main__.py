"""The command line: `python -m service serve | migrate | tokens ... | events ...`; it parses and dispatches."""

from __future__ import annotations

import argparse
import asyncio
import sys

from service.settings import Settings, SettingsError, load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description="The conversations service.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP API (and the event relay) on the production server")
    serve.add_argument("--no-migrate", action="store_true", help="do not apply schema.sql first")
    serve.add_argument("--workers", type=int, default=None,
                       help="worker processes (default: WORKERS, else one per CPU)")

    commands.add_parser("migrate", help="create the database if missing, then apply schema.sql (idempotent)")

    tokens = commands.add_parser("tokens", help="issue, list and revoke API tokens")
    token_commands = tokens.add_subparsers(dest="tokens_command", required=True)
    create = token_commands.add_parser("create", help="issue a token; prints it once, on stdout alone")
    create.add_argument("--account", required=True)
    listing = token_commands.add_parser("list", help="a token's id, created and revoked times; never the secret")
    listing.add_argument("--account", required=True)
    revoke = token_commands.add_parser("revoke", help="revoke a token (effective within 5 s everywhere)")
    revoke.add_argument("token_id")

    events = commands.add_parser("events", help="read the event stream")
    event_commands = events.add_subparsers(dest="events_command", required=True)
    tail = event_commands.add_parser("tail", help="consume with a consumer group, one JSON object per line")
    tail.add_argument("--group", default="events-tail", help="consumer group (created if missing)")
    tail.add_argument("--consumer", default=None, help="consumer name (default: host and pid)")
    tail.add_argument("--from-start", action="store_true",
                      help="a new group starts at the oldest entry kept, not at new entries")
    tail.add_argument("--max-deliveries", type=int, default=5,
                      help="an entry delivered more often goes to <stream>:dead (default 5)")
    tail.add_argument("--claim-idle-ms", type=int, default=60_000,
                      help="claim entries pending this long on other consumers (default 60000)")
    tail.add_argument("--count", type=int, default=None, help="stop after this many events (default: never)")
    tail.add_argument("--partitions", default=None,
                      help="the partitions to read, e.g. 0-7 or 3,5 (default: all EVENTS_PARTITIONS of them)")
    return parser


def _tokens(settings: Settings, args: argparse.Namespace) -> int:
    from service import tokens

    try:
        if args.tokens_command == "create":
            token, _ = asyncio.run(tokens.create_token(settings, args.account))
            print(token)
        elif args.tokens_command == "list":
            for record in asyncio.run(tokens.list_tokens(settings, args.account)):
                revoked = "-" if record.revoked_at is None else str(record.revoked_at)
                print(f"{record.id}\taccount={record.account_id}\tcreated_at={record.created_at}\t"
                      f"revoked_at={revoked}")
        else:
            record = asyncio.run(tokens.revoke_token(settings, args.token_id))
            print(f"{record.id}\trevoked_at={record.revoked_at}")
    except tokens.TokenError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2

    from service.logs import configure_logging

    configure_logging(settings.log_level)
    if args.command == "serve":
        from service.http.server import serve

        return serve(settings, migrate_first=not args.no_migrate, workers=args.workers)
    if args.command == "migrate":
        from service.store.migrate import migrate

        asyncio.run(migrate(settings))
        return 0
    if args.command == "tokens":
        return _tokens(settings, args)
    from service.events.consumer import TailOptions, tail
    from service.partitions import parse_selection

    try:
        partitions = (None if args.partitions is None
                      else parse_selection(args.partitions, settings.events_partitions))
    except ValueError as error:
        print(f"error: --partitions {error}", file=sys.stderr)
        return 2
    return asyncio.run(tail(settings, TailOptions(
        group=args.group, consumer=args.consumer, from_start=args.from_start,
        max_deliveries=args.max_deliveries, claim_idle_ms=args.claim_idle_ms, count=args.count,
        partitions=partitions)))


if __name__ == "__main__":
    sys.exit(main())
