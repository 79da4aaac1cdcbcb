-- The start ledger: how often a redelivered message was started without
-- finishing. A message that kills the worker (an abort, an out-of-memory
-- kill) is redelivered to the next worker, and would run and kill it again
-- forever; counting its starts here, committed before the handler runs,
-- lets the worker dead-letter it once the count reaches the limit. Only
-- redelivered messages are counted, and a row is deleted when its message
-- finishes, so the table stays small; rows left by a worker that died
-- between a finish and the delete are pruned with the inbox.
CREATE TABLE job_starts (
    queue           text        NOT NULL,
    message_id      text        NOT NULL,
    starts          integer     NOT NULL,
    last_started_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (queue, message_id)
);

CREATE INDEX job_starts_last_started_at ON job_starts (last_started_at);
