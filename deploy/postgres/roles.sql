-- PostgreSQL roles for threadline with least privilege. Run once per database as a superuser,
-- with psql and each role's password as a psql variable:
--
--   psql -v ON_ERROR_STOP=1 -v owner_password=… -v api_password=… -v projector_password=… \
--        -d postgres -f roles.sql
--
-- (docker-compose.yml runs it so, through roles.sh, on the first start of its postgres; with
-- an operator, run it as a bootstrap step or by hand). The database `threadline` must exist.
--
--   threadline_owner      owns the tables; `threadline migrate`, `rebuild` and the other
--                         operator commands
--   threadline_api        reads threads and messages (GET /chat/thread/:id/)
--   threadline_projector  writes threads and messages (the only writer of the read model),
--                         and deletes those of an erased thread
--
-- The gateway does not connect to PostgreSQL at all.

\set ON_ERROR_STOP on
-- A statement that fails is not written to the server's log with its text (which holds a
-- password here); nor is any other.
SET log_min_error_statement = panic;
SET log_statement = none;

\if :{?owner_password}
\else
  \set owner_password ''
\endif
\if :{?api_password}
\else
  \set api_password ''
\endif
\if :{?projector_password}
\else
  \set projector_password ''
\endif
SELECT :'owner_password' <> '' AND :'api_password' <> '' AND :'projector_password' <> ''
    AS passwords_given \gset
\if :passwords_given
\else
  \warn 'roles.sql: give every password: psql -v owner_password=… -v api_password=… -v projector_password=… -f roles.sql'
  DO $$ BEGIN RAISE EXCEPTION 'roles.sql needs owner_password, api_password and projector_password'; END $$;
\endif

CREATE ROLE threadline_owner LOGIN PASSWORD :'owner_password';
CREATE ROLE threadline_api LOGIN PASSWORD :'api_password';
CREATE ROLE threadline_projector LOGIN PASSWORD :'projector_password';

-- The database belongs to the owner, who creates the tables in its public schema.
ALTER DATABASE threadline OWNER TO threadline_owner;
\connect threadline
ALTER SCHEMA public OWNER TO threadline_owner;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO threadline_api, threadline_projector;

-- Tables that `threadline migrate` creates later get these rights as they are created.
-- (`threadline rebuild` gives the tables it puts in place the rights of those they replace.)
ALTER DEFAULT PRIVILEGES FOR ROLE threadline_owner IN SCHEMA public
    GRANT SELECT ON TABLES TO threadline_api;
ALTER DEFAULT PRIVILEGES FOR ROLE threadline_owner IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO threadline_projector;
