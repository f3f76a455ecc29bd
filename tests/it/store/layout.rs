//! The Redis layout, which docs/redis-layout.md calls a public contract, read with plain Redis commands as a consumer would: the
//! stream entry IDs (`<stamp>-0`, a late event `<top stamp>-<seq>`), the
//! entry fields in their documented order, and the record index
//! (`<stamp>` or `<stamp>:deleted`).

use std::collections::HashMap;

use stamp_relay::{config::Paging, store::Table};
use stamp_relay_simulator::{self as simulator, Change, Faults, SimConfig};
use tokio_util::sync::CancellationToken;

use crate::harness::{Backend, Sim, TestStore, all_events, poll_until_quiet, relay, source};

const FIELDS: [&str; 7] = [
    "op", "record", "stamp", "prev", "snapshot", "observed", "data",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_layout_is_as_documented() {
    let Some(ts) = TestStore::open(Backend::Redis).await else {
        return;
    };
    let sim = Sim::start(SimConfig {
        seed: 8,
        initial: vec![("patients".into(), 4)],
        ..SimConfig::default()
    })
    .await;
    let mut src = source(&sim.base_url, &["patients"], Paging::Pages, 10);
    src.overlap = 0;
    let mut relay = relay(&ts, vec![src]);
    poll_until_quiet(&mut relay, 5).await;

    // Changes after the initial load: a delete, a restore, an update.
    let ids: Vec<String> = sim
        .sim
        .state("patients")
        .iter()
        .map(|r| r["uuid"].as_str().unwrap().to_owned())
        .collect();
    let change = |op, id: &str| Change::new("patients", op).with_id(id);
    sim.sim
        .apply(change(simulator::Op::Delete, &ids[0]))
        .unwrap();
    sim.sim
        .apply(change(simulator::Op::Delete, &ids[1]))
        .unwrap();
    poll_until_quiet(&mut relay, 5).await;
    sim.sim
        .apply(change(simulator::Op::Restore, &ids[1]))
        .unwrap();
    sim.sim
        .apply(change(simulator::Op::Update, &ids[2]))
        .unwrap();
    poll_until_quiet(&mut relay, 5).await;

    // One write committed after the cursor passed its stamp, which a
    // reconcile sweep appends as a late event.
    sim.sim.set_faults(Faults {
        late_rate: 1.0,
        late_after: 1000,
        ..Faults::default()
    });
    let hidden = sim.sim.random_writes(Some("patients"), 1);
    assert!(hidden.iter().all(|w| w.late));
    sim.sim.set_faults(Faults::default());
    sim.sim.random_writes(Some("patients"), 2);
    poll_until_quiet(&mut relay, 5).await;
    assert_eq!(sim.sim.flush_late(), 1);
    let swept = relay.pollers[0]
        .reconcile_once(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(swept.outcome.late, 1, "{swept:?}");

    let client = redis::Client::open(ts.redis.as_ref().unwrap().url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg("test:{sim:patients}:events")
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .unwrap();
    let index: HashMap<String, String> = redis::cmd("HGETALL")
        .arg("test:{sim:patients}:index")
        .query_async(&mut c)
        .await
        .unwrap();

    // The same events as the store API reads them, entry by entry.
    let events = all_events(ts.store.as_ref(), &Table::new("sim", "patients")).await;
    assert_eq!(entries.len(), events.len());
    assert!(events.len() >= 4 + 4 + 3, "{}", events.len());
    let mut top = (0u64, 0u64);
    let mut last: HashMap<&str, (u64, &str)> = HashMap::new();
    // Each record's latest event ID.
    let mut at: HashMap<&str, &str> = HashMap::new();
    for ((id, kv), e) in entries.iter().zip(&events) {
        let names: Vec<&str> = kv.iter().step_by(2).map(String::as_str).collect();
        // A change of a record whose last version was a late event ends
        // with `previd`, that event's ID.
        let previd = at
            .get(kv[3].as_str())
            .copied()
            .filter(|a| !a.ends_with("-0"));
        let want: Vec<&str> = FIELDS
            .iter()
            .copied()
            .chain(previd.map(|_| "previd"))
            .collect();
        assert_eq!(names, want, "{id}: the fields or their order");
        if let Some(p) = previd {
            assert_eq!(kv[15], p, "{id}: previd names the replaced version's event");
        }
        let f: HashMap<&str, &str> = kv
            .chunks(2)
            .map(|p| (p[0].as_str(), p[1].as_str()))
            .collect();
        let stamp: u64 = f["stamp"].parse().unwrap();
        let (s, seq) = id.split_once('-').unwrap();
        let (s, seq): (u64, u64) = (s.parse().unwrap(), seq.parse().unwrap());
        if seq == 0 {
            assert_eq!(s, stamp, "{id}: an in-order event's ID is <stamp>-0");
        } else {
            assert_eq!((s, seq), (top.0, top.1 + 1), "{id}: a late event");
            assert!(stamp < s, "{id}: late, stamp {stamp}");
        }
        top = (s, seq);
        assert_eq!(id, &e.id.to_string());
        assert_eq!(f["op"], e.op.as_str());
        assert_eq!(f["record"], e.record);
        assert_eq!(stamp, e.stamp);
        let prev = last.get(f["record"]).map(|(s, _)| s.to_string());
        assert_eq!(f["prev"], prev.as_deref().unwrap_or(""), "{id}: prev");
        assert_eq!(f["snapshot"], if e.snapshot { "1" } else { "0" });
        assert_eq!(f["observed"], e.observed.to_string());
        assert_eq!(f["data"], e.data, "{id}: the record JSON as received");
        let data: serde_json::Value = serde_json::from_str(f["data"]).unwrap();
        assert_eq!(data["uuid"], f["record"]);
        last.insert(f["record"], (stamp, f["op"]));
        at.insert(f["record"], id);
    }
    assert_eq!(
        entries.iter().filter(|(id, _)| !id.ends_with("-0")).count(),
        1,
        "one late event"
    );

    // The index: each record's last stamp, `:deleted` when that version
    // is a delete, `@<ID>` when its event is late.
    assert_eq!(index.len(), last.len());
    for (record, (stamp, op)) in &last {
        let mut want = if *op == "deleted" {
            format!("{stamp}:deleted")
        } else {
            stamp.to_string()
        };
        if !at[record].ends_with("-0") {
            want.push_str(&format!("@{}", at[record]));
        }
        assert_eq!(index[*record], want, "{record}");
    }
    assert!(index[&ids[0]].ends_with(":deleted"), "{}", index[&ids[0]]);
    assert!(!index[&ids[1]].contains(':'), "{}", index[&ids[1]]);

    // The record store copies nothing while the events are there: the
    // late set names the records whose latest version is a late event,
    // and the records hash and stamps set (versions whose events
    // retention removed) are empty.
    let late: HashMap<String, u64> = redis::cmd("ZRANGE")
        .arg("test:{sim:patients}:late")
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut c)
        .await
        .unwrap();
    let want: HashMap<String, u64> = last
        .iter()
        .filter(|(r, _)| !at[*r].ends_with("-0"))
        .map(|(r, (stamp, _))| (r.to_string(), *stamp))
        .collect();
    assert_eq!(late, want);
    assert_eq!(
        late.len(),
        1,
        "the late event is its record's latest version"
    );
    for key in ["records", "stamps"] {
        let n: u64 = redis::cmd("EXISTS")
            .arg(format!("test:{{sim:patients}}:{key}"))
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(n, 0, "{key}");
    }
}
