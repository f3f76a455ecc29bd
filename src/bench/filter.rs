//! Filter evaluation cost: the same events rendered to CloudEvents JSON
//! (what every delivery and replay does) with no selection and through a
//! three-clause filter that names a record field, in process, as a ratio.
//! All events pass the filter, so the difference is the evaluation alone.

use std::time::Instant;

use crate::{
    cloudevents::EventSource,
    events::{Event, Op, StreamId},
    filter::{Filter, Selection},
    store::Table,
};

/// Passes every simulator patient, evaluating all three clauses.
const FILTER: &str = r#"[
  {"prefix": {"type": "io.stamp-relay.patients."}},
  {"not": {"exact": {"data.gender": "unknown"}}},
  {"any": [{"suffix": {"subject": "~"}}, {"prefix": {"source": "http"}}]}
]"#;

/// Rendered events per second without and with the filter.
pub struct Figures {
    pub unfiltered: f64,
    pub filtered: f64,
    pub passed: usize,
}

/// Times both over `payloads` (id, stamp, record JSON).
pub fn measure(payloads: &[(String, u64, String)]) -> Figures {
    let src = EventSource {
        table: Table::new("bench", "patients"),
        source_url: "http://bench/api/patients".into(),
        type_prefix: "io.stamp-relay".into(),
        fields: Default::default(),
    };
    let events: Vec<Event> = payloads
        .iter()
        .map(|(id, stamp, data)| Event {
            id: StreamId::new(*stamp, 0),
            op: Op::Updated,
            record: id.clone(),
            stamp: *stamp,
            prev: None,
            snapshot: false,
            observed: 1_700_000_000_000,
            data: data.clone(),
            prev_id: None,
            before: None,
        })
        .collect();
    let filter = Filter::parse(&serde_json::from_str(FILTER).expect("JSON")).expect("filter");
    let sel = Selection {
        filter: Some(filter),
        fields: None,
    };
    let everything = Selection::default();
    let time = |sel: &Selection| {
        let started = Instant::now();
        let sent = events.iter().filter_map(|e| sel.render(&src, e)).count();
        (started.elapsed().as_secs_f64().max(1e-9), sent)
    };
    // Interleaved, best of five each: the machine is shared and drifts.
    let (mut best, mut best_filtered, mut passed) = (f64::MAX, f64::MAX, 0);
    for _ in 0..5 {
        best = best.min(time(&everything).0);
        let (secs, sent) = time(&sel);
        (best_filtered, passed) = (best_filtered.min(secs), sent);
    }
    let n = events.len() as f64;
    let (unfiltered, filtered) = (n / best, n / best_filtered);
    Figures {
        unfiltered,
        filtered,
        passed,
    }
}

pub fn run(payloads: &[(String, u64, String)]) {
    let f = measure(payloads);
    println!(
        "{:<44} {:>12.0} {:>10.2}   ({} of {} passed)",
        "render + three-clause filter (vs none)",
        f.filtered,
        f.filtered / f.unfiltered,
        f.passed,
        payloads.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prints the figure for simulator-like patients; `--nocapture` shows it.
    #[test]
    fn the_filter_passes_every_patient_and_is_timed() {
        let payloads: Vec<_> = (1..=20_000u64)
            .map(|i| {
                let g = ["female", "male", "other"][i as usize % 3];
                let rec = serde_json::json!({"uuid": format!("p{i}"), "update_stamp": i,
                    "first_name": "Ada", "last_name": "Lovelace", "gender": g,
                    "site": "s1", "room": "12A", "deleted_at": null});
                (format!("p{i}"), i, rec.to_string())
            })
            .collect();
        let f = measure(&payloads);
        assert_eq!(f.passed, payloads.len());
        println!(
            "unfiltered {:.0}/s, filtered {:.0}/s, ratio {:.3}",
            f.unfiltered,
            f.filtered,
            f.filtered / f.unfiltered
        );
    }
}
