//! The read model's tables as a replay builds them: beside the serving ones, in the same
//! shape (columns from the serving tables, so a migration is followed without a change here),
//! with their indexes and keys added once the rows are in.

use sqlx::{Executor, PgConnection};
use threadline_ports::rebuild::RebuildError;
use threadline_ports::StoreError;

/// The tables of the read model.
pub const TABLES: [&str; 2] = ["threads", "messages"];

/// `name` quoted as an SQL identifier.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The schema that holds the serving tables: where `threads` resolves with the connection's
/// default search path.
pub async fn serving_schema(conn: &mut PgConnection) -> Result<String, StoreError> {
    sqlx::query_scalar(
        "SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.oid = 'threads'::regclass",
    )
    .fetch_one(conn)
    .await
    .map_err(StoreError::database)
}

/// Creates empty tables shaped like the serving ones in `schema` (`pg_temp` for temporary
/// tables), without indexes or keys.
pub async fn create_like(
    conn: &mut PgConnection,
    schema: &str,
    serving: &str,
) -> Result<(), RebuildError> {
    for table in TABLES {
        let statement = format!(
            "CREATE TABLE {schema}.{table} (LIKE {}.{table} INCLUDING DEFAULTS)",
            quote(serving)
        );
        conn.execute(statement.as_str())
            .await
            .map_err(StoreError::database)?;
    }
    Ok(())
}

/// Gives each table of `to` the owner and exactly the rights (grantees, privileges, grant
/// options) of the table of the same name in `from`. Rights follow a table when it moves to
/// another schema, but a table created elsewhere and moved into the serving schema never got
/// the serving schema's default privileges, which is how the shipped roles receive theirs
/// (deploy/postgres/roles.sql): without this, a rebuild would leave the api and the projector
/// without the right to read or write the tables it puts in place.
pub async fn copy_privileges(
    conn: &mut PgConnection,
    from: &str,
    to: &str,
) -> Result<(), RebuildError> {
    for table in TABLES {
        let statements: Vec<String> = sqlx::query_scalar(PRIVILEGE_STATEMENTS)
            .bind(from)
            .bind(to)
            .bind(table)
            .fetch_all(&mut *conn)
            .await
            .map_err(StoreError::database)?;
        if statements.is_empty() {
            return Err(RebuildError::Tables(format!(
                "cannot read the rights on {from}.{table} and {to}.{table}"
            )));
        }
        conn.execute(statements.concat().as_str())
            .await
            .map_err(StoreError::database)?;
    }
    Ok(())
}

/// The statements that make the table `$3` of schema `$2` like that of schema `$1` in owner
/// and rights: the old table's owner, every right of the new one revoked, then every right of
/// the old one granted, to the grantees it names (`PUBLIC` is grantee 0). A table without an
/// ACL of its own has the default one (`acldefault`).
const PRIVILEGE_STATEMENTS: &str = "\
WITH old AS (
    SELECT c.relowner, coalesce(c.relacl, acldefault('r', c.relowner)) AS acl
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = $1 AND c.relname = $3
), new AS (
    SELECT c.relowner, coalesce(c.relacl, acldefault('r', c.relowner)) AS acl,
           format('%I.%I', n.nspname, c.relname) AS name
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = $2 AND c.relname = $3
)
SELECT s FROM (
    SELECT 0 AS step, format('ALTER TABLE %s OWNER TO %I;', new.name, pg_get_userbyid(old.relowner)) AS s
    FROM old, new
    UNION ALL
    SELECT DISTINCT 1, format('REVOKE ALL ON %s FROM %s;', new.name,
        CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END)
    FROM old, new, aclexplode(new.acl) a
    UNION ALL
    SELECT 2, format('GRANT %s ON %s TO %s%s;', a.privilege_type, new.name,
        CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
        CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)
    FROM old, new, aclexplode(old.acl) a
) statements
ORDER BY step, s";

/// A serving table's index: table, index, its definition, and the constraint it backs.
type IndexRow = (String, String, String, Option<String>, Option<String>);

/// The statements that give the tables in `schema` the serving tables' keys and indexes,
/// under the same names.
pub async fn index_statements(
    conn: &mut PgConnection,
    schema: &str,
    serving: &str,
) -> Result<Vec<String>, RebuildError> {
    let rows: Vec<IndexRow> = sqlx::query_as(
        "SELECT t.relname::text, i.relname::text, pg_get_indexdef(x.indexrelid), \
                con.conname::text, pg_get_constraintdef(con.oid) \
         FROM pg_index x \
         JOIN pg_class t ON t.oid = x.indrelid \
         JOIN pg_class i ON i.oid = x.indexrelid \
         JOIN pg_namespace n ON n.oid = t.relnamespace \
         LEFT JOIN pg_constraint con ON con.conindid = x.indexrelid AND con.conrelid = t.oid \
         WHERE n.nspname = $1 AND t.relname = ANY($2) \
         ORDER BY t.relname, i.relname",
    )
    .bind(serving)
    .bind(TABLES.map(str::to_owned).to_vec())
    .fetch_all(conn)
    .await
    .map_err(StoreError::database)?;
    rows.into_iter()
        .map(|(table, index, definition, constraint, constraint_def)| {
            match (constraint, constraint_def) {
                (Some(name), Some(def)) => Ok(format!(
                    "ALTER TABLE {schema}.{table} ADD CONSTRAINT {} {def}",
                    quote(&name)
                )),
                _ => retarget(&definition, serving, schema, &table).ok_or_else(|| {
                    RebuildError::Tables(format!(
                        "cannot copy index {index} of the serving tables: {definition}"
                    ))
                }),
            }
        })
        .collect()
}

/// Moves an index definition from `serving.table` to `schema.table`.
fn retarget(definition: &str, serving: &str, schema: &str, table: &str) -> Option<String> {
    let on = [
        format!(" ON {}.{table} ", quote(serving)),
        format!(" ON {serving}.{table} "),
        format!(" ON {table} "),
    ];
    let found = on.iter().find(|o| definition.contains(o.as_str()))?;
    Some(definition.replacen(found.as_str(), &format!(" ON {schema}.{table} "), 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_definitions_move_to_the_new_schema() {
        assert_eq!(
            retarget(
                "CREATE INDEX messages_thread_order ON public.messages USING btree (thread_id, stream_seq)",
                "public",
                "threadline_rebuild",
                "messages"
            )
            .as_deref(),
            Some("CREATE INDEX messages_thread_order ON threadline_rebuild.messages USING btree (thread_id, stream_seq)")
        );
        assert_eq!(
            retarget("CREATE INDEX x ON other.t (a)", "public", "s", "messages"),
            None
        );
    }
}
