-- Erasing a thread (`threadline erase`, and the projector when it folds the thread's
-- ThreadErased) deletes its rows. Whoever may write the read model's rows may now delete them
-- too: every role that holds INSERT on `threads` (in the shipped setup, threadline_projector,
-- whose default privileges in deploy/postgres/roles.sql include DELETE from now on) is granted
-- DELETE on both tables. No role is named here, so a database without those roles (a
-- developer's, where the superuser does everything) is left as it is.
DO $$
DECLARE
    grantee oid;
BEGIN
    FOR grantee IN
        SELECT DISTINCT a.grantee
        FROM pg_class c, aclexplode(c.relacl) a
        WHERE c.oid = 'threads'::regclass
          AND a.privilege_type = 'INSERT'
          AND a.grantee <> 0
          AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('GRANT DELETE ON threads, messages TO %I', pg_get_userbyid(grantee));
    END LOOP;
END
$$;
