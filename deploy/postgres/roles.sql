-- PostgreSQL roles for threadline with least privilege. Run once per database as a superuser
-- (docker-compose.yml runs it on the first start of its postgres container; with an operator,
-- run it as a bootstrap SQL or by hand). Passwords here are examples: change them.
--
--   threadline_owner      owns the tables; used only by `threadline migrate`
--   threadline_api        reads threads and messages (GET /chat/thread/:id/)
--   threadline_projector  writes threads and messages (the only writer of the read model)
--
-- The gateway does not connect to PostgreSQL at all.

CREATE ROLE threadline_owner LOGIN PASSWORD 'owner-change-me';
CREATE ROLE threadline_api LOGIN PASSWORD 'api-change-me';
CREATE ROLE threadline_projector LOGIN PASSWORD 'projector-change-me';

-- The database belongs to the owner, who creates the tables in its public schema.
ALTER DATABASE threadline OWNER TO threadline_owner;
\connect threadline
ALTER SCHEMA public OWNER TO threadline_owner;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO threadline_api, threadline_projector;

-- Tables that `threadline migrate` creates later get these rights as they are created.
ALTER DEFAULT PRIVILEGES FOR ROLE threadline_owner IN SCHEMA public
    GRANT SELECT ON TABLES TO threadline_api;
ALTER DEFAULT PRIVILEGES FOR ROLE threadline_owner IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE ON TABLES TO threadline_projector;
