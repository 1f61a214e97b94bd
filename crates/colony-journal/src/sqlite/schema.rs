//! The database schema and its forward-only migrations, versioned by `PRAGMA user_version`.

use crate::Error;
use rusqlite::Connection;
use std::path::Path;

/// `PRAGMA application_id` of a colony database: "coln".
pub(crate) const APPLICATION_ID: i32 = 0x636F_6C6E;

/// Migration `i` takes a database from version `i` to `i + 1`. Never edit one that shipped:
/// add another.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: tasks and their per-state counts.
    "CREATE TABLE tasks (
        id INTEGER PRIMARY KEY,
        key TEXT,
        priority INTEGER NOT NULL,
        requirement TEXT,
        payload BLOB NOT NULL,
        timeout_ms INTEGER NOT NULL,
        max_attempts INTEGER NOT NULL,
        state INTEGER NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 0,
        agent INTEGER,
        output BLOB,
        error TEXT,
        accepted_at INTEGER NOT NULL,
        finished_at INTEGER
    );
    CREATE TABLE counts (state INTEGER PRIMARY KEY, n INTEGER NOT NULL);
    INSERT INTO counts (state, n) VALUES (0, 0), (1, 0), (2, 0), (3, 0), (4, 0), (5, 0);",
    // 2: the agent hierarchy, indexed for chain-of-command queries.
    "CREATE TABLE tiers (tier INTEGER PRIMARY KEY, name TEXT NOT NULL);
    CREATE TABLE agents (
        id INTEGER PRIMARY KEY,
        tier INTEGER NOT NULL,
        parent INTEGER,
        pool INTEGER
    );
    CREATE INDEX agents_by_parent ON agents (parent);
    CREATE INDEX agents_by_tier ON agents (tier);",
    // 3: decisions among agents; their ballots are tasks id, id + 1, ... (one per seat).
    "CREATE TABLE decisions (
        id INTEGER PRIMARY KEY,
        options TEXT NOT NULL,
        seats TEXT NOT NULL,
        opened_at INTEGER NOT NULL,
        outcome TEXT,
        ended_at INTEGER
    );
    CREATE INDEX decisions_open ON decisions (id) WHERE outcome IS NULL;",
    // 4: decisions of more than one call: the opening may ask only the first seats (NULL:
    // every seat), and later calls (rounds, reviews, a judge) ask for more tasks.
    "ALTER TABLE decisions ADD COLUMN asked INTEGER;
    CREATE TABLE decision_calls (
        first INTEGER PRIMARY KEY,
        decision INTEGER NOT NULL,
        call TEXT NOT NULL,
        tasks INTEGER NOT NULL
    );
    CREATE INDEX decision_calls_by_decision ON decision_calls (decision);",
    // 5: workers' reputations, kept across restarts.
    "CREATE TABLE reputations (
        agent INTEGER PRIMARY KEY,
        pool INTEGER NOT NULL,
        score REAL NOT NULL,
        observations INTEGER NOT NULL
    );",
];

/// The version this build writes.
pub(crate) const LATEST: i32 = MIGRATIONS.len() as i32;

/// Checks that `conn` is a colony database this build can use, and brings it to [`LATEST`].
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), Error> {
    let read = |conn: &Connection, pragma: &str| -> Result<i32, Error> {
        conn.query_row(&format!("PRAGMA {pragma}"), [], |r| r.get(0))
            .map_err(|e| super::classify(e, path))
    };
    let app = read(conn, "application_id")?;
    let version = read(conn, "user_version")?;
    if app == 0 && version == 0 {
        let objects: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(|e| super::classify(e, path))?;
        if objects > 0 {
            return Err(Error::NotColony {
                path: path.display().to_string(),
            });
        }
    } else if app != APPLICATION_ID {
        return Err(Error::NotColony {
            path: path.display().to_string(),
        });
    }
    if version > LATEST {
        return Err(Error::TooNew {
            path: path.display().to_string(),
            version,
            supported: LATEST,
        });
    }
    for (v, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction().map_err(|e| super::classify(e, path))?;
        tx.execute_batch(sql)
            .map_err(|e| super::classify(e, path))?;
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(|e| super::classify(e, path))?;
        tx.pragma_update(None, "user_version", v as i32 + 1)
            .map_err(|e| super::classify(e, path))?;
        tx.commit().map_err(|e| super::classify(e, path))?;
    }
    Ok(())
}
