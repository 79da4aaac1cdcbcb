-- The kind of the exchange an event row goes to (topic, fanout or direct),
-- so that the relay declares it as the event does; NULL for a job row.
ALTER TABLE outbox ADD COLUMN exchange_kind text;
