#!/bin/sh
# Runs roles.sql with the roles' passwords from the environment as psql variables: the
# postgres image runs this on its first start (docker-compose.yml mounts it into
# /docker-entrypoint-initdb.d/ and roles.sql at /etc/threadline/roles.sql). psql refuses to
# go on without any of THREADLINE_OWNER_PASSWORD, THREADLINE_API_PASSWORD and
# THREADLINE_PROJECTOR_PASSWORD; docker-compose.yml requires them.
psql -X -q -v ON_ERROR_STOP=1 \
  --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-threadline}" \
  -v owner_password="${THREADLINE_OWNER_PASSWORD:-}" \
  -v api_password="${THREADLINE_API_PASSWORD:-}" \
  -v projector_password="${THREADLINE_PROJECTOR_PASSWORD:-}" \
  -f "${THREADLINE_ROLES_SQL:-/etc/threadline/roles.sql}" || exit 1
