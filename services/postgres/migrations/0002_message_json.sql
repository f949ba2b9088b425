-- Each message's JSON as a thread's `messages` holds it, written by the projector when it
-- applies the message, so that a read copies it instead of rendering it. NULL for rows written
-- before this column (or by an older projector during a rolling upgrade): readers render those
-- from the other columns, and `threadline rebuild` fills it for every row.
ALTER TABLE messages ADD COLUMN IF NOT EXISTS json text;
