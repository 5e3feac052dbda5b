-- The tables the AIVO plugins write (they also create them if missing).

CREATE TABLE IF NOT EXISTS events (
    id bigserial PRIMARY KEY,
    stream text NOT NULL,
    stream_seq bigint NOT NULL,
    subject text NOT NULL,
    domain text NOT NULL,
    entity text NOT NULL,
    action text NOT NULL,
    payload jsonb NOT NULL,
    headers jsonb NOT NULL,
    published_at timestamptz NOT NULL,
    indexed_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream, stream_seq)
);

CREATE TABLE IF NOT EXISTS event_counts (
    minute timestamptz NOT NULL,
    domain text NOT NULL,
    entity text NOT NULL,
    action text NOT NULL,
    count bigint NOT NULL,
    PRIMARY KEY (minute, domain, entity, action)
);

-- The analytics pipeline runs with effects = "exactly-once": its ledger
-- (jetplug.ledger) and outbox are created by the host.
