//! A store that loses everything it holds under a running relay, as its
//! backend would lose it: Redis flushed, or the embedded file replaced.

use super::TestStore;

/// Removes everything the store holds, as the backend would lose it.
pub async fn wipe(ts: &TestStore) {
    match &ts.redis {
        Some(redis) => {
            let client = redis::Client::open(redis.url()).unwrap();
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            let () = redis::cmd("FLUSHALL").query_async(&mut c).await.unwrap();
        }
        None => {
            // A fresh, empty file moved over the store's file, as a restore
            // of the wrong backup or a new volume would leave it.
            let path = ts.config.data_dir.join("stamp-relay.sqlite3");
            let fresh = ts.dir.path().join("empty.sqlite3");
            std::fs::write(&fresh, b"").unwrap();
            for side in ["-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{side}", path.display()));
            }
            std::fs::rename(&fresh, &path).unwrap();
        }
    }
}
