//! The PostgreSQL roles we ship (deploy/postgres/roles.sql): set up only with passwords of the
//! operator's choosing, as docker-compose.yml sets them up (deploy/postgres/roles.sh), and
//! kept through `threadline rebuild`, whose tables give every role exactly the rights it had
//! on those they replace, so the api keeps reading and the projector keeps writing.

use crate::harness::operator::run_command;
use crate::harness::postgres::{Postgres, DEPLOY_DATABASE};
use crate::harness::*;
use serde_json::Value;
use sqlx::Connection;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn deploy_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A cluster with the database `threadline`, as the postgres image makes it from
/// `POSTGRES_DB`.
async fn cluster_with_database() -> Postgres {
    let pg = Postgres::start().await;
    let mut admin = sqlx::PgConnection::connect(&pg.url("postgres"))
        .await
        .expect("connecting as the superuser");
    sqlx::raw_sql(&format!("CREATE DATABASE {DEPLOY_DATABASE}"))
        .execute(&mut admin)
        .await
        .expect("creating the database");
    pg
}

/// Runs `program` with `args` and exactly `env` (plus PATH), as the superuser's client of `pg`.
fn run(program: &Path, args: &[&str], env: &[(&str, &str)], pg: &Postgres) -> Output {
    Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", pg.port().to_string())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()))
}

async fn roles_in(pg: &Postgres) -> Vec<String> {
    let mut admin = sqlx::PgConnection::connect(&pg.url("postgres"))
        .await
        .expect("connecting as the superuser");
    sqlx::query_scalar("SELECT rolname::text FROM pg_roles WHERE rolname LIKE 'threadline%'")
        .fetch_all(&mut admin)
        .await
        .expect("listing the roles")
}

#[tokio::test]
async fn roles_sql_refuses_to_run_without_every_password_and_creates_no_role() {
    let pg = cluster_with_database().await;
    let psql = crate::harness::process::find_program("psql", &[]).expect("psql is installed");
    let roles = deploy_file("deploy/postgres/roles.sql");
    let roles = roles.to_str().expect("a UTF-8 path");
    for given in [
        &[][..],
        &["-v", "owner_password=pw-owner", "-v", "api_password=pw-api"],
        &[
            "-v",
            "owner_password=pw-owner",
            "-v",
            "api_password=",
            "-v",
            "projector_password=pw-projector",
        ],
    ] {
        let mut args = vec!["-X", "-q", "-U", "postgres", "-d", "postgres"];
        args.extend_from_slice(given);
        args.extend_from_slice(&["-f", roles]);
        let out = run(&psql, &args, &[], &pg);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "roles.sql ran with {given:?}");
        assert!(stderr.contains("projector_password"), "{given:?}: {stderr}");
        assert_eq!(roles_in(&pg).await, Vec::<String>::new(), "{given:?}");
    }
    assert!(
        !std::fs::read_to_string(deploy_file("deploy/postgres/roles.sql"))
            .expect("roles.sql")
            .contains("change-me"),
        "roles.sql holds an example password"
    );
}

#[tokio::test]
async fn roles_sh_gives_each_role_the_password_of_its_environment() {
    let pg = cluster_with_database().await;
    let script = deploy_file("deploy/postgres/roles.sh");
    let roles = deploy_file("deploy/postgres/roles.sql");
    let roles = roles.to_str().expect("a UTF-8 path");
    let passwords = [
        ("owner", "pw-owner-from-env"),
        ("api", "pw-api-from-env"),
        ("projector", "pw-projector-from-env"),
    ];
    // As the postgres image runs it: POSTGRES_USER, POSTGRES_DB and the compose file's
    // variables; the roles file where this checkout has it.
    let mut env = vec![
        ("POSTGRES_USER", "postgres"),
        ("POSTGRES_DB", DEPLOY_DATABASE),
        ("THREADLINE_ROLES_SQL", roles),
    ];
    let names: Vec<(String, &str)> = passwords
        .iter()
        .map(|(role, pw)| (format!("THREADLINE_{}_PASSWORD", role.to_uppercase()), *pw))
        .collect();
    let without_api: Vec<(&str, &str)> = env
        .iter()
        .copied()
        .chain(
            names
                .iter()
                .filter(|(n, _)| !n.contains("_API_"))
                .map(|(n, p)| (n.as_str(), *p)),
        )
        .collect();
    let refused = run(&script, &[], &without_api, &pg);
    assert!(
        !refused.status.success(),
        "roles.sh ran without the api's password"
    );
    assert_eq!(roles_in(&pg).await, Vec::<String>::new());

    pg.require_passwords().await;
    env.extend(names.iter().map(|(n, p)| (n.as_str(), *p)));
    let out = run(&script, &[], &env, &pg);
    assert!(
        out.status.success(),
        "roles.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut admin = sqlx::PgConnection::connect(&pg.url("postgres"))
        .await
        .expect("connecting as the superuser");
    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT rolpassword FROM pg_authid WHERE rolname LIKE 'threadline%' ORDER BY rolname",
    )
    .fetch_all(&mut admin)
    .await
    .expect("reading the stored passwords");
    assert_eq!(stored.len(), 3);
    assert!(
        stored.iter().all(|p| p.starts_with("SCRAM-SHA-256$")),
        "a password is not stored as SCRAM"
    );
    for (role, password) in passwords {
        let url = pg.role_url(&format!("threadline_{role}"), password, DEPLOY_DATABASE);
        let conn = sqlx::PgConnection::connect(&url).await;
        assert!(
            conn.is_ok(),
            "threadline_{role} cannot log in: {:?}",
            conn.err()
        );
        let wrong = pg.role_url(
            &format!("threadline_{role}"),
            &format!("{role}-change-me"),
            DEPLOY_DATABASE,
        );
        // Bounded: the server may not have read its new pg_hba.conf yet.
        eventually(
            &format!("threadline_{role} to be refused its old example password"),
            std::time::Duration::from_secs(10),
            || {
                let wrong = wrong.clone();
                async move {
                    sqlx::PgConnection::connect(&wrong)
                        .await
                        .is_err()
                        .then_some(())
                }
            },
        )
        .await;
    }
}

/// Each serving table's owner and every right on it: (table, owner, grantee, privilege,
/// grantable), sorted. A table without an ACL of its own counts with the default one.
async fn rights(app: &mut App) -> Vec<(String, String, String, String, bool)> {
    let db = app.db().await;
    sqlx::query_as(
        "SELECT c.relname::text, pg_get_userbyid(c.relowner)::text, \
                CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee)::text END, \
                a.privilege_type, a.is_grantable \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         CROSS JOIN LATERAL aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a \
         WHERE n.nspname = 'public' AND c.relname IN ('threads', 'messages') \
         ORDER BY 1, 3, 4",
    )
    .fetch_all(&db)
    .await
    .expect("reading the tables' rights")
}

fn bodies(thread: &Value) -> Vec<String> {
    thread["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["body"].as_str().expect("a body").to_owned())
        .collect()
}

#[tokio::test]
async fn a_rebuild_under_the_shipped_roles_keeps_every_roles_rights() {
    let mut app = spawn_app().await;
    assert!(
        app.roles().is_some(),
        "the roles must run as the shipped ones"
    );
    let thread = app.new_thread().await;
    app.say(&thread, "before the rebuild").await;
    assert_eq!(
        bodies(&app.get_thread(&thread).await),
        ["before the rebuild"]
    );
    let before = rights(&mut app).await;
    for role in ["threadline_api", "threadline_projector"] {
        assert!(
            before.iter().any(|(_, _, grantee, _, _)| grantee == role),
            "{role} has no right on the tables before the rebuild: {before:?}"
        );
    }

    // As an operator runs it: the owner's role (the harness's operator commands run as it).
    run_command(&app, &["rebuild"]).await.expect(0);

    assert_eq!(rights(&mut app).await, before);
    // The api reads the new tables, and the projector writes them.
    assert_eq!(
        bodies(&app.get_thread(&thread).await),
        ["before the rebuild"]
    );
    app.say(&thread, "after the rebuild").await;
    assert_eq!(
        bodies(&app.get_thread(&thread).await),
        ["before the rebuild", "after the rebuild"]
    );
    let fresh = app.new_thread().await;
    app.say(&fresh, "a new thread").await;
    assert_eq!(bodies(&app.get_thread(&fresh).await), ["a new thread"]);
    // As the operator goes on: verify as the owner, and a projector restarted on the new
    // tables writes them too.
    run_command(&app, &["verify"]).await.expect(0);
    app.restart("projector", 0).await;
    app.say(&fresh, "after a restart").await;
    assert_eq!(
        bodies(&app.get_thread(&fresh).await),
        ["a new thread", "after a restart"]
    );
    for role in ["api", "projector"] {
        assert!(
            !app.logs(role, 0).contains("permission denied"),
            "the {role} was refused after the rebuild"
        );
    }
}

/// The developer's setup, which no shipped role can do: every role connects as the superuser
/// (`.superuser()`), the database does not exist yet, and replicas started side by side race
/// to create and migrate it on start (`MIGRATE_ON_START`, the default), as `scripts/run` does.
#[tokio::test]
async fn roles_started_side_by_side_as_the_superuser_create_and_migrate_the_database() {
    let app = options()
        .superuser()
        .replicas("api", 2)
        .replicas("projector", 2)
        .start()
        .await;
    assert!(app.roles().is_none());
    let thread = app.new_thread().await;
    app.say(&thread, "on a fresh database").await;
    assert_eq!(
        bodies(&app.get_thread(&thread).await),
        ["on a fresh database"]
    );
    assert_eq!(
        bodies(&app.client(1, 0).get_thread(&thread).await),
        ["on a fresh database"]
    );
}

/// An operator who runs `threadline rebuild` as the superuser (which may do anything, hence
/// `run_command_with` and the superuser's URL) still leaves the tables to the owner, with
/// every role's rights as they were: a later `threadline migrate` as the owner still works.
#[tokio::test]
async fn a_rebuild_as_the_superuser_leaves_the_tables_to_the_owner_with_the_same_rights() {
    let mut app = spawn_app().await;
    let thread = app.new_thread().await;
    app.say(&thread, "before the rebuild").await;
    let before = rights(&mut app).await;
    let mut env = app.env_of("operator");
    env.retain(|(key, _)| key != "DATABASE_URL");
    env.push(("DATABASE_URL".to_owned(), app.database_url.clone()));
    crate::harness::operator::run_command_with(&["rebuild"], &env)
        .await
        .expect(0);
    assert_eq!(rights(&mut app).await, before);
    app.say(&thread, "after the rebuild").await;
    assert_eq!(
        bodies(&app.get_thread(&thread).await),
        ["before the rebuild", "after the rebuild"]
    );
    run_command(&app, &["migrate"]).await.expect(0);
}
