-- The read model: threads and their messages, folded from the event stream by the projector.
-- `user_json` is text, not jsonb: it keeps the key order and number text the visitor sent.
-- Rows carry the stream sequence of the event that produced them; when an event is seen twice
-- (redelivery, replay, a second projector), the row of the lowest sequence wins, so applying
-- events again or out of order gives the same tables.
CREATE TABLE IF NOT EXISTS threads (
    id          uuid PRIMARY KEY,
    user_json   text        NOT NULL,
    created_at  timestamptz NOT NULL,
    stream_seq  bigint      NOT NULL
);

-- No foreign key to threads: with several projectors a message may be applied before its
-- thread. Whether a thread exists is decided from the event log, not from this table.
CREATE TABLE IF NOT EXISTS messages (
    id            uuid PRIMARY KEY,
    thread_id     uuid        NOT NULL,
    user_json     text        NOT NULL,
    body          text        NOT NULL,
    send_by_user  boolean     NOT NULL,
    created_at    timestamptz NOT NULL,
    stream_seq    bigint      NOT NULL
);

CREATE INDEX IF NOT EXISTS messages_thread_order ON messages (thread_id, stream_seq);
