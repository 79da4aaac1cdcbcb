-- The inbox: one row per message id whose handler committed, per queue (an
-- event delivered to several queues runs once in each). Written in the
-- handler's own transaction, so "the job's effects happened" and "the
-- message is processed" commit together; a redelivery finds the row and is
-- acked without running. Runs with search_path set to eda-worker's schema.
CREATE TABLE inbox (
    queue        text        NOT NULL,
    message_id   text        NOT NULL,
    job          text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (queue, message_id)
);

-- Pruning deletes the oldest rows in small batches.
CREATE INDEX inbox_processed_at ON inbox (processed_at);
