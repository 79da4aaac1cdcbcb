-- The outbox: messages inserted in the caller's transaction and published
-- by the relay after commit. The message id is fixed at insert, so a re-send
-- after a crash carries the same id and the consumer's inbox drops it.
CREATE TABLE outbox (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Unique: the relay matches a returned (unroutable) message to its row by it.
    message_id      uuid        NOT NULL UNIQUE,
    -- Where it goes: a job queue through the default exchange, or an exchange.
    exchange        text        NOT NULL DEFAULT '',
    routing_key     text        NOT NULL,
    -- The job queue's type, so that the relay declares it as the job does.
    queue_type      text        NOT NULL DEFAULT 'classic',
    job             text,
    correlation_id  text,
    -- When the job is due (ms since the epoch), for scheduled jobs.
    eta_ms          bigint,
    body            bytea       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- Failed publishes: counted, with the last error, and tried again later.
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text,
    next_attempt_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX outbox_next_attempt ON outbox (next_attempt_at, id);

-- Wakes the relays (LISTEN <schema>_outbox) as soon as a row is committed.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '_outbox', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_notify
    AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
