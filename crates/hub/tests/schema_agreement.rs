//! The schema is described once as data (`schema.rs`), but each backend's
//! tables come from its own versioned migrations (SQLite's in
//! `store/sqlite.rs`, PostgreSQL's in `migrations/postgres/`): migrations are
//! history and are never rewritten, so they cannot be generated from today's
//! description. This test is what keeps the three from drifting: it migrates
//! a fresh database of each backend and checks every table `schema.rs`
//! describes — column names and order, storage type, nullability, whether a
//! default exists, and the allowed values of enumerated columns.

use panorama_hub::changes::ChangeFeed;
use panorama_hub::schema::{ColDefault, ColType, Column, TABLES};
use panorama_hub::store::postgres::PgStore;
use panorama_hub::store::sqlite::SqliteStore;

/// What a migrated database says about one column.
#[derive(Debug, PartialEq)]
struct Found {
    name: String,
    /// Storage type, lower case (`text`, `integer`, `bigint`, `boolean`).
    ty: String,
    nullable: bool,
    has_default: bool,
}

/// The storage types a backend may use for a schema type (ids, timestamps
/// and JSON are canonical text on both; booleans are 0/1 integers on SQLite).
fn storage_types(ty: ColType, postgres: bool) -> &'static [&'static str] {
    match (ty, postgres) {
        (ColType::Uuid | ColType::Text | ColType::Json | ColType::Timestamp, _) => &["text"],
        (ColType::Int, false) | (ColType::Bool, false) => &["integer"],
        (ColType::Int, true) => &["bigint", "integer"],
        (ColType::Bool, true) => &["boolean"],
    }
}

fn check_column(
    table: &str,
    want: &Column,
    got: &Found,
    postgres: bool,
    problems: &mut Vec<String>,
) {
    let backend = if postgres { "postgres" } else { "sqlite" };
    let at = format!("{backend}: {table}.{}", want.name);
    if !storage_types(want.ty, postgres).contains(&got.ty.as_str()) {
        problems.push(format!(
            "{at}: stored as {} but schema.rs says {:?}",
            got.ty, want.ty
        ));
    }
    // A primary key is NOT NULL whatever the DDL spells out; SQLite's
    // table_info reports `TEXT PRIMARY KEY` as nullable, so only check
    // columns that are not the key there.
    if got.nullable != want.nullable {
        problems.push(format!(
            "{at}: nullable is {} but schema.rs says {}",
            got.nullable, want.nullable
        ));
    }
    // Ids and timestamps with a generated default (`NewUuid`, `Now`) are
    // filled by the hub, not by the database; constants must be in the DDL.
    if let ColDefault::Json(_) = want.default {
        if !got.has_default {
            problems.push(format!("{at}: schema.rs has a default the DDL lacks"));
        }
    }
}

fn compare(postgres: bool, actual: &dyn Fn(&str) -> (Vec<Found>, String)) -> Vec<String> {
    let mut problems = Vec::new();
    for table in TABLES {
        let (found, checks) = actual(table.name);
        let names: Vec<&str> = found.iter().map(|f| f.name.as_str()).collect();
        let expected: Vec<&str> = table.columns.iter().map(|c| c.name).collect();
        if names != expected {
            problems.push(format!(
                "{}: {}: columns {names:?}, schema.rs {expected:?}",
                if postgres { "postgres" } else { "sqlite" },
                table.name
            ));
            continue;
        }
        for (want, got) in table.columns.iter().zip(&found) {
            if want.name == table.primary_key && !postgres {
                continue;
            }
            check_column(table.name, want, got, postgres, &mut problems);
            if let Some(allowed) = want.allowed {
                for value in allowed {
                    if !checks.contains(&format!("'{value}'")) {
                        problems.push(format!(
                            "{}.{}: the DDL's CHECK lacks '{value}'",
                            table.name, want.name
                        ));
                    }
                }
            }
        }
    }
    problems
}

#[test]
fn migrated_sqlite_tables_match_schema_rs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.db");
    drop(SqliteStore::open(&path, ChangeFeed::default()).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    let actual = |table: &str| {
        let mut stmt = conn
            .prepare(&format!("PRAGMA table_info({table})"))
            .unwrap();
        let found = stmt
            .query_map([], |r| {
                Ok(Found {
                    name: r.get(1)?,
                    ty: r.get::<_, String>(2)?.to_lowercase(),
                    nullable: r.get::<_, i64>(3)? == 0,
                    has_default: r.get::<_, Option<String>>(4)?.is_some(),
                })
            })
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let ddl: String = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [table],
                |r| r.get(0),
            )
            .unwrap();
        (found, ddl)
    };
    let problems = compare(false, &actual);
    assert!(
        problems.is_empty(),
        "schema drift:\n{}",
        problems.join("\n")
    );
}

#[test]
fn migrated_postgres_tables_match_schema_rs() {
    if !panorama_testkit::postgres::installed() {
        eprintln!("SKIPPED: PostgreSQL 15 binaries not found (apt install postgresql)");
        return;
    }
    let url = panorama_testkit::postgres::fresh_database();
    drop(PgStore::connect_blocking(&url, ChangeFeed::default()).unwrap());
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let client = std::cell::RefCell::new(&mut client);
    let actual = |table: &str| {
        let mut c = client.borrow_mut();
        let found = c
            .query(
                "SELECT column_name::text, data_type::text, is_nullable = 'YES', column_default IS NOT NULL \
                 FROM information_schema.columns \
                 WHERE table_schema = 'public' AND table_name = $1 AND column_name <> '_rowid' \
                 ORDER BY ordinal_position",
                &[&table],
            )
            .unwrap()
            .iter()
            .map(|r| Found {
                name: r.get(0),
                ty: r.get::<_, String>(1).to_lowercase(),
                nullable: r.get(2),
                has_default: r.get(3),
            })
            .collect();
        let checks: Vec<String> = c
            .query(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint \
                 WHERE conrelid = $1::text::regclass AND contype = 'c'",
                &[&table],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        (found, checks.join("\n"))
    };
    let problems = compare(true, &actual);
    assert!(
        problems.is_empty(),
        "schema drift:\n{}",
        problems.join("\n")
    );
}
