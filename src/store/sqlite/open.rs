//! Opening the embedded store's file: the schema, and noticing that the
//! file at the path is no longer the one open (replaced or removed under the
//! relay), which a store reset then reports (see poller/epoch.rs).

use std::{path::Path, time::Duration};

use rusqlite::Connection;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    source TEXT NOT NULL, resource TEXT NOT NULL,
    stamp INTEGER NOT NULL, seq INTEGER NOT NULL,
    op TEXT NOT NULL, record TEXT NOT NULL, record_stamp INTEGER NOT NULL,
    prev INTEGER, snapshot INTEGER NOT NULL, observed INTEGER NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (source, resource, stamp, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS record_index (
    source TEXT NOT NULL, resource TEXT NOT NULL, record TEXT NOT NULL,
    stamp INTEGER NOT NULL, deleted INTEGER NOT NULL,
    PRIMARY KEY (source, resource, record)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rejects (
    id INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL, resource TEXT NOT NULL,
    raw TEXT NOT NULL, reason TEXT NOT NULL, observed INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS subscriptions (
    id TEXT PRIMARY KEY NOT NULL, body TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS delivery_position (
    sub TEXT NOT NULL, source TEXT NOT NULL, resource TEXT NOT NULL, stamp INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (sub, source, resource)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS delivery_pending (
    sub TEXT NOT NULL, source TEXT NOT NULL, resource TEXT NOT NULL, stamp INTEGER NOT NULL, seq INTEGER NOT NULL,
    attempts INTEGER NOT NULL, next_at INTEGER NOT NULL,
    PRIMARY KEY (sub, source, resource, stamp, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letters (
    sub TEXT NOT NULL, key TEXT NOT NULL, at_ms INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (sub, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, sub TEXT NOT NULL, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS attempts_by_sub ON attempts (sub, id);
CREATE TABLE IF NOT EXISTS loading (
    source TEXT NOT NULL, resource TEXT NOT NULL,
    PRIMARY KEY (source, resource)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS trimmed (
    source TEXT NOT NULL, resource TEXT NOT NULL, stamp INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (source, resource)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS poll_status (
    source TEXT NOT NULL, resource TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (source, resource)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reconcile_requests (
    source TEXT NOT NULL, resource TEXT NOT NULL,
    PRIMARY KEY (source, resource)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS epochs (
    source TEXT NOT NULL, resource TEXT NOT NULL, epoch TEXT NOT NULL,
    PRIMARY KEY (source, resource)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    source TEXT NOT NULL, resource TEXT NOT NULL, holder TEXT NOT NULL, expires_ms INTEGER NOT NULL,
    PRIMARY KEY (source, resource)) WITHOUT ROWID;
";

/// Version 2: the instances' heartbeats (`scheduler/share.rs`), and the
/// subscriptions' write counter the delivery supervisor follows.
const VERSION_2: &str = "
CREATE TABLE IF NOT EXISTS subscriptions_version (
    id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL);
INSERT OR IGNORE INTO subscriptions_version (id, version) VALUES (1, 0);
CREATE TRIGGER IF NOT EXISTS subscription_inserted AFTER INSERT ON subscriptions
    BEGIN UPDATE subscriptions_version SET version = version + 1; END;
CREATE TRIGGER IF NOT EXISTS subscription_updated AFTER UPDATE ON subscriptions
    BEGIN UPDATE subscriptions_version SET version = version + 1; END;
CREATE TRIGGER IF NOT EXISTS subscription_deleted AFTER DELETE ON subscriptions
    BEGIN UPDATE subscriptions_version SET version = version + 1; END;
CREATE TABLE IF NOT EXISTS instances (
    id TEXT PRIMARY KEY, nonce TEXT NOT NULL, expires_ms INTEGER NOT NULL) WITHOUT ROWID;
";

/// The connection and the identity (device, inode) of the file it opened:
/// a file replaced or removed under the relay is noticed on the next call,
/// which reopens the path, so the epoch check sees what is there now.
pub(super) struct Open {
    pub conn: Connection,
    pub file: Option<(u64, u64)>,
    /// The file was closed for a reopen that has not succeeded yet: `conn`
    /// is an empty placeholder, never to be served from.
    pub closed: bool,
    /// Appends done in the open write transaction and not yet committed
    /// (`append.rs`, "Deferred commits"); none when no transaction is open.
    pub deferred: Option<super::append::Deferred>,
}

impl Drop for Open {
    /// A store let go (the relay stopping) commits the appends it deferred
    /// rather than have them fetched again.
    fn drop(&mut self) {
        let _ = super::append::commit_deferred(self);
    }
}

pub(super) fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The file at `path` is no longer the one `open` holds (`now` is its
/// identity, none when it is gone): reopen the path, so the epoch check sees
/// what is there now. When its folder is gone too there is nothing to
/// reopen; the open file is kept and the change noted once.
pub(super) fn reopen(
    open: &mut Open,
    path: &Path,
    now: Option<(u64, u64)>,
) -> rusqlite::Result<()> {
    if !open.closed {
        if !path.parent().is_some_and(Path::exists) {
            tracing::error!(path = %path.display(), "the embedded store's folder was removed; the open file is kept until restart");
            open.file = now;
            return Ok(());
        }
        tracing::error!(path = %path.display(), "the embedded store's file was replaced or removed; reopening it");
        // Close the old file first: closing removes the -wal and -shm files
        // by name. Deferred appends go with it: nobody read them, and the
        // store's highest-ID check sends their tables back to fetch them.
        open.deferred = None;
        drop(std::mem::replace(
            &mut open.conn,
            Connection::open_in_memory()?,
        ));
        open.closed = true;
    }
    // On failure `closed` stays set and the identity unchanged, so every
    // call tries again and fails with the reason rather than serving an
    // empty database.
    *open = connect(path)?;
    Ok(())
}

/// The store's folder, created readable by the relay's user alone (it
/// holds patient records and webhook secrets); an existing one that others
/// may read gets a warning with the fix.
pub(super) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    warn_if_shared(dir, "700");
    Ok(())
}

/// Creates the database file readable by its owner alone before SQLite
/// opens it: SQLite gives a new file 0644 and its `-wal` and `-shm` files
/// the mode of the database file.
fn create_private_file(path: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    if created.is_err() {
        // There already (or not creatable, which opening reports).
        warn_if_shared(path, "600");
    }
}

fn warn_if_shared(path: &Path, mode: &str) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "the embedded store (patient records, webhook secrets) is readable by other users; \
             run chmod {mode} {}",
            path.display()
        );
    }
}

/// The schema's migrations in order: the one at index `i` brings a file at
/// version `i` (`PRAGMA user_version`) to `i + 1`. Version 1 is the schema
/// as it was before files carried a version: its statements create what is
/// missing, so a file of any earlier layout (version 0) reaches it too.
/// Version 2 adds the instances' heartbeats and the documents (sources made
/// through the API, nudges).
const MIGRATIONS: [fn(&Connection) -> rusqlite::Result<()>; 2] = [
    |c| {
        c.execute_batch(SCHEMA)?;
        super::records::migrate(c)
    },
    |c| {
        c.execute_batch(VERSION_2)?;
        c.execute_batch(super::documents::SCHEMA)
    },
];

/// Brings the file to the current schema version, each migration in a
/// transaction of its own with the version it reaches; run at open only, so
/// no read or write migrates. A file from a newer build is refused.
fn migrate(c: &Connection) -> rusqlite::Result<()> {
    let at = c.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))? as usize;
    if at > MIGRATIONS.len() {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISMATCH),
            Some(format!(
                "schema version {at} is newer than this build's {}; run a newer build",
                MIGRATIONS.len()
            )),
        ));
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(at) {
        c.execute_batch("BEGIN IMMEDIATE")?;
        let done = step(c).and_then(|()| c.pragma_update(None, "user_version", i as i64 + 1));
        match done {
            Ok(()) => c.execute_batch("COMMIT")?,
            Err(e) => {
                let _ = c.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
        tracing::info!(version = i + 1, "the embedded store's schema was migrated");
    }
    Ok(())
}

pub(super) fn connect(path: &Path) -> rusqlite::Result<Open> {
    create_private_file(path);
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // A chunk's index updates land on pages all over the index: a page
    // cache that holds it (64 MiB at most), and a checkpoint every 64 MiB
    // of log rather than every 4 MiB, write each such page once per
    // checkpoint rather than once per chunk. Durability is as before:
    // see docs/operations.md ("The embedded store").
    conn.pragma_update(None, "cache_size", -65536)?;
    conn.pragma_update(None, "wal_autocheckpoint", 16384)?;
    // Temporary tables and indexes (the `json_each` of a chunk's record
    // ids, sorts) are kept in memory rather than in a file written and
    // thrown away.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    migrate(&conn)?;
    Ok(Open {
        conn,
        file: file_id(path),
        closed: false,
        deferred: None,
    })
}

/// A private in-memory database with the schema a file gets, migrated by
/// the same steps; there is no file, so no identity to check and no log.
pub(super) fn connect_in_memory() -> rusqlite::Result<Open> {
    let conn = Connection::open_in_memory()?;
    migrate(&conn)?;
    Ok(Open {
        conn,
        file: None,
        closed: false,
        deferred: None,
    })
}

#[cfg(test)]
mod tests {
    use crate::store::{Store, Table, sqlite::SqliteStore};

    /// A reopen that fails (a folder where the file was, then no folder at
    /// all) answers with the reason on every call, never from an empty
    /// database, and succeeds once the path can hold a file again.
    #[tokio::test]
    async fn a_failed_reopen_errs_until_the_file_can_be_opened() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let t = Table::new("s", "r");
        store.last_id(&t).await.unwrap();
        let path = dir.path().join("stamp-relay.sqlite3");
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        for _ in 0..2 {
            let e = store.last_id(&t).await.unwrap_err().to_string();
            assert!(e.contains("unable to open"), "{e}");
        }
        // The whole folder goes: still the reason, not an empty database.
        std::fs::remove_dir_all(dir.path()).unwrap();
        let e = store.last_id(&t).await.unwrap_err().to_string();
        assert!(e.contains("unable to open"), "{e}");
        std::fs::create_dir_all(dir.path()).unwrap();
        assert_eq!(
            store.last_id(&t).await.unwrap(),
            crate::events::StreamId::ZERO,
            "a fresh file, with its tables"
        );
    }

    /// A file made by the first schema (no version, no pointer columns, no
    /// kept records) is migrated at open to the current version: its events
    /// and index read as before, and a second open finds nothing to do.
    #[tokio::test]
    async fn a_file_of_the_first_schema_is_migrated_at_open() {
        use crate::store::records::{RecordStore, RecordsQuery};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stamp-relay.sqlite3");
        let old = rusqlite::Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE events (
                source TEXT NOT NULL, resource TEXT NOT NULL,
                stamp INTEGER NOT NULL, seq INTEGER NOT NULL,
                op TEXT NOT NULL, record TEXT NOT NULL, record_stamp INTEGER NOT NULL,
                prev INTEGER, snapshot INTEGER NOT NULL, observed INTEGER NOT NULL, data TEXT NOT NULL,
                PRIMARY KEY (source, resource, stamp, seq)) WITHOUT ROWID;
             CREATE TABLE record_index (
                source TEXT NOT NULL, resource TEXT NOT NULL, record TEXT NOT NULL,
                stamp INTEGER NOT NULL, deleted INTEGER NOT NULL,
                PRIMARY KEY (source, resource, record)) WITHOUT ROWID;
             INSERT INTO events VALUES ('s', 'r', 7, 0, 'created', 'a', 7, NULL, 1, 5, '{\"uuid\":\"a\"}');
             INSERT INTO record_index VALUES ('s', 'r', 'a', 7, 0);",
        )
        .unwrap();
        drop(old);
        let t = Table::new("s", "r");
        for _ in 0..2 {
            let store = SqliteStore::open(dir.path()).unwrap();
            let events = store
                .read(&t, crate::events::StreamId::ZERO, 10)
                .await
                .unwrap();
            assert_eq!(events.len(), 1);
            assert_eq!((events[0].record.as_str(), events[0].prev_id), ("a", None));
            let entry = store.index_entry(&t, "a").await.unwrap().unwrap();
            assert_eq!((entry.stamp, entry.at), (7, None));
            store.keep_records(&t, true);
            let q = RecordsQuery {
                above: 0,
                until: None,
                after: None,
                offset: 0,
                limit: 10,
                count: None,
            };
            let page = store.records(&t, q).await.unwrap();
            assert_eq!(page.records.len(), 1, "the index joins its event");
        }
        let c = rusqlite::Connection::open(&path).unwrap();
        let version: i64 = c
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version as usize, super::MIGRATIONS.len());
    }

    /// A file a newer build migrated past this build's schema is refused at
    /// open, naming the versions, rather than read with the wrong layout.
    #[test]
    fn a_file_from_a_newer_build_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stamp-relay.sqlite3");
        let c = rusqlite::Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        let e = SqliteStore::open(dir.path()).err().unwrap().to_string();
        assert!(e.contains("schema version 99 is newer"), "{e}");
    }
}
