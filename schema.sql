-- The conversations service's schema. Applied by `python -m service migrate` (service/store/migrate.py)
-- under an advisory lock; every statement is idempotent, so applying it again changes nothing.

-- Identifiers (docs/api.md): 8 base62 characters of the creation time in milliseconds, then 8
-- random ones chosen by the application from the operating system's CSPRNG (os.urandom). The
-- time part is taken from the database's clock inside the writing statement, so that
-- `created_at`, the id and the created event's `occurred_at` all come from one clock, whichever
-- replica served the request.
CREATE OR REPLACE FUNCTION base62_millis(ts timestamptz) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    n bigint := floor(extract(epoch FROM ts) * 1000)::bigint;
    digits text := '';
BEGIN
    FOR i IN 1..8 LOOP
        digits := substr('0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz',
                         (n % 62)::int + 1, 1) || digits;
        n := n / 62;
    END LOOP;
    RETURN digits;
END
$$;

CREATE TABLE IF NOT EXISTS api_tokens (
    id          text COLLATE "C" PRIMARY KEY,
    account_id  text COLLATE "C" NOT NULL,
    token_hash  bytea NOT NULL,                 -- sha256(token); the token itself is never stored
    created_at  bigint NOT NULL,
    revoked_at  bigint,
    CONSTRAINT api_tokens_token_hash_key UNIQUE (token_hash)
);
-- `tokens list --account A`
CREATE INDEX IF NOT EXISTS api_tokens_account_idx ON api_tokens (account_id, id);

CREATE TABLE IF NOT EXISTS conversations (
    account_id         text COLLATE "C" NOT NULL,
    -- COLLATE "C": byte order is creation order, which listing and cursors rest on (docs/api.md §4)
    id                 text COLLATE "C" NOT NULL,
    contact_id         text COLLATE "C",
    group_id           text COLLATE "C",
    pinned_message_id  text COLLATE "C",
    is_pinned          boolean NOT NULL DEFAULT false,
    is_muted           boolean NOT NULL DEFAULT false,
    last_active_at     bigint,
    last_opened_at     bigint,
    created_at         bigint NOT NULL,
    archived_at        bigint,
    -- The per-conversation event `sequence`: 1 at creation, +1 per effective update.
    version            bigint NOT NULL DEFAULT 1,
    -- Every lookup is by (account_id, id): retrieve, update, delete, and every list page as a
    -- keyset scan of this index, so another account's rows are never even read.
    CONSTRAINT conversations_pkey PRIMARY KEY (account_id, id),
    CONSTRAINT conversations_one_party CHECK ((contact_id IS NULL) <> (group_id IS NULL))
);
-- At most one conversation per contact and per group in an account (docs/api.md); these also
-- serve the contact_id / group_id list filters and the 409's lookup of the existing conversation.
CREATE UNIQUE INDEX IF NOT EXISTS conversations_account_contact_key
    ON conversations (account_id, contact_id) WHERE contact_id IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS conversations_account_group_key
    ON conversations (account_id, group_id) WHERE group_id IS NOT NULL;
-- The list in activity order (docs/api.md §4): pinned first, then by last activity (never
-- active: -1, below every active one), then by id; every page is a keyset scan of it.
CREATE INDEX IF NOT EXISTS conversations_activity_idx
    ON conversations (account_id, is_pinned, (COALESCE(last_active_at, -1)), id);

-- The list's flag filters (docs/api.md §4.3): a partial index for each flag's set value, so that a
-- page filtered on muted, pinned or archived conversations, which are few in an account, is a
-- keyset scan of those few, not of the whole account. The unset values are what almost every
-- conversation has (every new one does), so a page filtered on them finds its rows at once on the
-- primary key; indexing them too would cost every create three more index entries (measured:
-- 8 WAL records a create instead of 5). The list statement writes the value into its SQL
-- (service/store/queries.py), so the planner matches these predicates. A database that already
-- has many conversations blocks writes while the first migrate after this builds them: build them
-- beforehand with CREATE INDEX CONCURRENTLY under these names (README, "Known limits").
CREATE INDEX IF NOT EXISTS conversations_muted_idx ON conversations (account_id, id) WHERE is_muted;
CREATE INDEX IF NOT EXISTS conversations_pinned_idx ON conversations (account_id, id) WHERE is_pinned;
CREATE INDEX IF NOT EXISTS conversations_archived_idx ON conversations (account_id, id)
    WHERE archived_at IS NOT NULL;
-- Room on each page for an update's new row version: an update that changes no indexed column
-- (last_opened_at, pinned_message_id, an unmuted conversation's is_muted...) stays on its page and
-- adds no index entry (a HOT update: 2 WAL records instead of 6).
ALTER TABLE conversations SET (fillfactor = 85);

-- The transactional outbox (docs/api.md, "Events"): each write inserts its event here in the
-- same statement as the change; the relay (service/events/relay.py) publishes rows in `position`
-- order and deletes each one only once Redis has acknowledged and persisted it. A row carries the
-- conversation as the event's `data` shows it, column by column, and for an update the previous
-- values of the updatable fields (service/store/outbox.py owns the column list); the relay
-- encodes `data` with the same msgspec encoder as the HTTP response (so the bytes are equal).
-- Plain column copies cost the writing statement far less than building JSON in SQL did.
CREATE TABLE IF NOT EXISTS conversation_outbox (
    -- The stream the writer was configured with (EVENTS_STREAM): each stream has its own
    -- relay leader, which publishes only its stream's rows.
    stream               text COLLATE "C" NOT NULL,
    -- Its partition (service/partitions.py), from the conversation id and the writer's
    -- EVENTS_PARTITIONS; each partition of a stream has its own relay leader. Rows of writers that
    -- predate partitions take 0.
    stream_partition     integer NOT NULL DEFAULT 0,
    position             bigint GENERATED ALWAYS AS IDENTITY,
    event_id             text COLLATE "C" NOT NULL,
    type                 text NOT NULL,
    account_id           text NOT NULL,
    conversation_id      text NOT NULL,
    occurred_at          bigint NOT NULL,
    sequence             bigint NOT NULL,
    schema_version       integer NOT NULL,
    -- The conversation (its id is conversation_id), as `data` shows it.
    contact_id           text,
    group_id             text,
    pinned_message_id    text,
    is_pinned            boolean,
    is_muted             boolean,
    last_active_at       bigint,
    last_opened_at       bigint,
    created_at           bigint,
    archived_at          bigint,
    -- conversation.updated only: the updatable fields before the change.
    previous_pinned_message_id  text,
    previous_is_pinned          boolean,
    previous_is_muted           boolean,
    previous_last_active_at     bigint,
    previous_last_opened_at     bigint,
    previous_archived_at        bigint,
    -- A stream's rows in position order: the retirement of published rows, the backlog, a
    -- stopping relay's mark.
    CONSTRAINT conversation_outbox_pkey PRIMARY KEY (stream, position)
);
-- Databases created before partitions: the column, added without a rewrite (a constant default).
-- Checked first, so that a migrate run on an up-to-date database takes no lock on the outbox.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM information_schema.columns
                   WHERE table_schema = current_schema() AND table_name = 'conversation_outbox'
                     AND column_name = 'stream_partition') THEN
        ALTER TABLE conversation_outbox ADD COLUMN stream_partition integer NOT NULL DEFAULT 0;
    END IF;
END
$$;
-- Each partition leader's scan: its partition's rows in position order (and the strays, rows of a
-- partition at or above the relay's count, partition by partition). On a database with a large
-- outbox, build it beforehand with CREATE INDEX CONCURRENTLY under this name (README, "Known limits").
CREATE INDEX IF NOT EXISTS conversation_outbox_partition_idx
    ON conversation_outbox (stream, stream_partition, position);
-- Databases created before the column layout also had the event as JSON text (`data`,
-- `previous_attributes`), unused since. Checked first, so that a migrate run on an up-to-date
-- database takes no lock on the outbox.
DO $$
BEGIN
    IF EXISTS (SELECT FROM information_schema.columns
               WHERE table_schema = current_schema() AND table_name = 'conversation_outbox'
                 AND column_name = 'data') THEN
        ALTER TABLE conversation_outbox DROP COLUMN data, DROP COLUMN IF EXISTS previous_attributes;
    END IF;
END
$$;

-- The event log behind GET /v1/events (service/store/event_log.py): the relay moves each
-- published outbox row here, stamped with a batch number that relays draw one move at a time,
-- which with `position` orders the feed. Partitioned by week of occurred_at: the service creates the
-- coming weeks' partitions and drops those past the feed's window (EVENTS_FEED_DAYS), so expiry
-- deletes no rows one by one. The default partition only catches a week that has none yet.
CREATE SEQUENCE IF NOT EXISTS event_log_batch_seq;
CREATE TABLE IF NOT EXISTS event_log (
    batch  bigint NOT NULL,
    -- The outbox's columns and their defaults, as they are when the log is created (without its
    -- identity and primary key). LIKE copies them once: a column the outbox gains later is added to
    -- an existing log by migrate (service/store/event_log.py, adopt_outbox_columns), default included.
    LIKE conversation_outbox INCLUDING DEFAULTS
) PARTITION BY RANGE (occurred_at);
CREATE TABLE IF NOT EXISTS event_log_default PARTITION OF event_log DEFAULT;
-- The feed's order within an account, the same order within one type or one conversation (so a
-- filtered page reads only what it shows, whatever the filter), and an event by its id.
CREATE INDEX IF NOT EXISTS event_log_feed_idx ON event_log (account_id, batch, position);
CREATE INDEX IF NOT EXISTS event_log_type_idx ON event_log (account_id, type, batch, position);
CREATE INDEX IF NOT EXISTS event_log_conversation_idx ON event_log (account_id, conversation_id, batch, position);
CREATE INDEX IF NOT EXISTS event_log_event_idx ON event_log (account_id, event_id);
-- Maintenance's look into the default partition by time (event_log.maintain).
CREATE INDEX IF NOT EXISTS event_log_default_occurred_idx ON event_log_default (occurred_at);

-- A queue table: rows live for milliseconds, so let autovacuum clean it up early and often.
ALTER TABLE conversation_outbox SET (
    autovacuum_vacuum_scale_factor = 0.0,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.0,
    autovacuum_analyze_threshold = 1000
);

-- Whether writers should NOTIFY the relay of a stream's partition (service/events/pacing.py): true
-- while its leader waits for notifications, false while it polls under load. One row per stream and
-- partition, written only by the leader, and only when it switches; writers read it by primary key.
CREATE TABLE IF NOT EXISTS outbox_wakeups (
    stream            text COLLATE "C" NOT NULL,
    stream_partition  integer NOT NULL DEFAULT 0,
    notify            boolean NOT NULL,
    CONSTRAINT outbox_wakeups_pkey PRIMARY KEY (stream, stream_partition)
);
-- Databases created before partitions: one row per stream, keyed by the stream alone (a handful of rows).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM information_schema.columns
                   WHERE table_schema = current_schema() AND table_name = 'outbox_wakeups'
                     AND column_name = 'stream_partition') THEN
        ALTER TABLE outbox_wakeups ADD COLUMN stream_partition integer NOT NULL DEFAULT 0,
            DROP CONSTRAINT outbox_wakeups_pkey,
            ADD CONSTRAINT outbox_wakeups_pkey PRIMARY KEY (stream, stream_partition);
    END IF;
END
$$;

-- Idempotency keys (docs/api.md): the first response to a write sent with an
-- Idempotency-Key, stored in the same transaction as the change, replayed to retries for 24 h.
-- A retry that arrives while the first request runs waits on this row's uncommitted insert.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    account_id   text COLLATE "C" NOT NULL,
    key          text COLLATE "C" NOT NULL,
    fingerprint  bytea NOT NULL,                      -- sha256 of method, path, media type, body
    created_at   timestamptz NOT NULL DEFAULT now(),
    status       integer NOT NULL DEFAULT 0,
    body         bytea NOT NULL DEFAULT ''::bytea,
    location     text,
    etag         text,
    CONSTRAINT idempotency_keys_pkey PRIMARY KEY (account_id, key)
);
-- The purge of keys older than 24 h (service/store/idempotency_keys.py), every minute.
CREATE INDEX IF NOT EXISTS idempotency_keys_created_at_idx ON idempotency_keys (created_at);
