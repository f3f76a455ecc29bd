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
CREATE TABLE IF NOT EXISTS subscriptions_version (
    id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL);
INSERT OR IGNORE INTO subscriptions_version (id, version) VALUES (1, 0);
CREATE TRIGGER IF NOT EXISTS subscription_inserted AFTER INSERT ON subscriptions
    BEGIN UPDATE subscriptions_version SET version = version + 1; END;
CREATE TRIGGER IF NOT EXISTS subscription_updated AFTER UPDATE ON subscriptions
    BEGIN UPDATE subscriptions_version SET version = version + 1; END;
CREATE TRIGGER IF NOT EXISTS subscription_deleted AFTER DELETE ON subscriptions
    BEGIN UPDATE subscriptions_version SET version = version + 1; END;
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

/// The connection and the identity (device, inode) of the file it opened:
/// a file replaced or removed under the relay is noticed on the next call,
/// which reopens the path, so the epoch check sees what is there now.
pub(super) struct Open {
    pub conn: Connection,
    pub file: Option<(u64, u64)>,
    /// The file was closed for a reopen that has not succeeded yet: `conn`
    /// is an empty placeholder, never to be served from.
    pub closed: bool,
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
        // Close the old file first: closing removes the -wal and -shm files by name.
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

pub(super) fn connect(path: &Path) -> rusqlite::Result<Open> {
    create_private_file(path);
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(SCHEMA)?;
    super::records::migrate(&conn)?;
    Ok(Open {
        conn,
        file: file_id(path),
        closed: false,
    })
}

#[cfg(test)]
mod tests {
    use crate::store::{Store, Target, sqlite::SqliteStore};

    /// A reopen that fails (a folder where the file was, then no folder at
    /// all) answers with the reason on every call, never from an empty
    /// database, and succeeds once the path can hold a file again.
    #[tokio::test]
    async fn a_failed_reopen_errs_until_the_file_can_be_opened() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let t = Target::new("s", "r");
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
}
