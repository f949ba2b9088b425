-- A message is its thread and its id. A gateway drops a repeated message per thread, so one id
-- published on two threads (an outside publisher's mistake) shows on both threads' sockets;
-- keyed by the id alone, the read model kept only the first copy, and the second thread's GET
-- never showed what its socket had. Keyed by (thread_id, id), each thread keeps the first copy
-- stored on it, which is what its sockets show. Rebuilding takes the key from these tables.
-- A projector older than this migration finds no key for its `ON CONFLICT (id)` (SQLSTATE
-- 42P10, which it retries and never sets aside): it applies nothing until it is replaced, so
-- upgrade the projector together with the migration.
DO $$
DECLARE
    key text;
BEGIN
    SELECT conname INTO key FROM pg_constraint
    WHERE conrelid = 'messages'::regclass AND contype = 'p';
    IF key IS NOT NULL THEN
        EXECUTE format('ALTER TABLE messages DROP CONSTRAINT %I', key);
    END IF;
END
$$;
ALTER TABLE messages ADD PRIMARY KEY (thread_id, id);
