//! Stamps, DRF paging and result order.

use std::collections::HashMap;

use reqwest::StatusCode;
use serde_json::json;

use super::{spawn, stamps, text, with_tables};
use crate::{Change, Faults, Op, Order, SimConfig};

#[tokio::test]
async fn each_table_has_its_own_stamp_sequence_and_writes_take_top_plus_one() {
    let t = spawn(SimConfig {
        order: Order::Stamp,
        ..with_tables(&[("patients", 5), ("sites", 3)])
    })
    .await;
    assert_eq!(stamps(&t.page("/api/patients/").await), [1, 2, 3, 4, 5]);
    assert_eq!(stamps(&t.page("/api/sites/").await), [1, 2, 3]);

    let first = t.sim.state("patients")[0].clone();
    let id = text(&first, "uuid");
    let deleted = t
        .sim
        .apply(Change::new("patients", Op::Delete).with_id(id))
        .unwrap();
    assert_eq!((deleted.stamp, deleted.late), (6, false));
    let page = t.page("/api/patients/?sync=5").await;
    assert_eq!(page["count"], 1);
    let record = &page["results"][0];
    assert_eq!(
        (record["uuid"].as_str(), record["update_stamp"].as_u64()),
        (Some(id), Some(6))
    );
    assert!(record["deleted_at"].is_string());
    assert_eq!(record["deleted_reason"], "archived");
    // The old version's stamp is gone: the record is listed once, at 6.
    assert_eq!(stamps(&t.page("/api/patients/").await), [2, 3, 4, 5, 6]);

    let restored = t
        .sim
        .apply(Change::new("patients", Op::Restore).with_id(id))
        .unwrap();
    assert_eq!(restored.stamp, 7);
    let record = &t.page("/api/patients/?sync=6").await["results"][0];
    assert_eq!(
        (
            record["deleted_at"].is_null(),
            record["deleted_reason"].is_null()
        ),
        (true, true)
    );
    assert!(
        t.sim
            .apply(Change::new("patients", Op::Restore).with_id(id))
            .is_err()
    );
    assert_eq!(
        stamps(&t.page("/api/sites/").await),
        [1, 2, 3],
        "other tables keep their stamps"
    );
}

#[tokio::test]
async fn drf_envelope_pages_with_count_next_and_previous() {
    let t = spawn(SimConfig {
        order: Order::Stamp,
        ..with_tables(&[("patients", 7)])
    })
    .await;
    let host = t.base.trim_start_matches("http://");
    let first = t.page("/api/patients/?sync=0&page_size=3").await;
    assert_eq!(first["count"], 7);
    assert_eq!(
        first["next"],
        format!("http://{host}/api/patients/?sync=0&page=2&page_size=3")
    );
    assert_eq!(first["previous"], json!(null));
    assert_eq!(stamps(&first), [1, 2, 3]);

    let next = first["next"]
        .as_str()
        .unwrap()
        .trim_start_matches(&t.base)
        .to_owned();
    let second = t.page(&next).await;
    assert_eq!(stamps(&second), [4, 5, 6]);
    assert_eq!(
        second["previous"],
        format!("http://{host}/api/patients/?sync=0&page=1&page_size=3")
    );
    let third = t.page("/api/patients?page=3&page_size=3").await;
    assert_eq!(
        (stamps(&third), third["next"].clone()),
        (vec![7], json!(null))
    );

    let (status, body) = t.get("/api/patients/?page=4&page_size=3").await;
    assert_eq!(
        (status, body),
        (StatusCode::NOT_FOUND, json!({"detail": "Invalid page."}))
    );
    let (status, body) = t.get("/api/patients/?page=abc").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errors"][0]["field"], "page");
    assert!(body["detail"].as_str().unwrap().contains("abc"));
    let (status, body) = t.get("/api/wards/").await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (StatusCode::NOT_FOUND, Some("Not found."))
    );

    // Nothing newer than the top stamp: one empty page, not a 404.
    let empty = t.page("/api/patients/?sync=7").await;
    assert_eq!((empty["count"].clone(), stamps(&empty)), (json!(0), vec![]));
    assert_eq!(
        t.page("/api/patients/").await["results"]
            .as_array()
            .unwrap()
            .len(),
        7
    );
}

#[tokio::test]
async fn page_size_is_capped_silently_and_defaults() {
    let config = SimConfig {
        max_page_size: 5,
        default_page_size: 2,
        ..with_tables(&[("comments", 12)])
    };
    let t = spawn(config).await;
    let page = t.page("/api/comments/?page_size=100").await;
    assert_eq!(page["results"].as_array().unwrap().len(), 5);
    assert!(
        page["next"]
            .as_str()
            .unwrap()
            .ends_with("page=2&page_size=5")
    );
    assert_eq!(
        t.page("/api/comments/").await["results"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let logged = t.sim.requests();
    assert_eq!(
        (logged[0].page_size, logged[0].query.as_str()),
        (5, "page_size=100")
    );
}

/// (last_name, first_name) of each result.
fn names(page: &serde_json::Value) -> Vec<(String, String)> {
    let results = page["results"].as_array().unwrap();
    results
        .iter()
        .map(|r| {
            (
                text(r, "last_name").to_owned(),
                text(r, "first_name").to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn name_order_shifts_when_writes_land_between_pages() {
    let t = spawn(with_tables(&[("patients", 30)])).await;
    t.sim.set_faults(Faults {
        writes_per_page: 20,
        ..Faults::default()
    });
    let before: HashMap<String, String> = t
        .sim
        .state("patients")
        .iter()
        .map(|r| (text(r, "uuid").to_owned(), text(r, "last_name").to_owned()))
        .collect();

    let first = t.page("/api/patients/?page_size=10").await;
    assert!(
        names(&first).is_sorted(),
        "page 1 is in name order: {:?}",
        names(&first)
    );
    let stamps_first = stamps(&first);
    assert!(!stamps_first.is_sorted(), "name order is not stamp order");
    let second = t.page("/api/patients/?page=2&page_size=10").await;
    assert!(names(&second).is_sorted());

    // The 20 writes before page 2 renamed some patients, who moved.
    let renamed = t
        .sim
        .state("patients")
        .iter()
        .filter(|r| {
            before
                .get(text(r, "uuid"))
                .is_some_and(|old| old != text(r, "last_name"))
        })
        .count();
    assert!(renamed > 0, "some writes change last_name");
    let changed = t.page("/api/patients/?sync=30&page_size=50").await;
    assert!(changed["count"].as_u64().unwrap() >= 1);
    assert!(stamps(&changed).iter().all(|&s| (31..=50).contains(&s)));
    assert_ne!(
        t.page("/api/patients/?page_size=10").await["results"],
        first["results"]
    );
}

#[tokio::test]
async fn random_order_is_stable_between_requests_and_gaps_skip_stamps() {
    let config = SimConfig {
        order: Order::Random,
        stamp_gap_rate: 1.0,
        ..with_tables(&[("users", 20)])
    };
    let t = spawn(config).await;
    let once = stamps(&t.page("/api/users/?page_size=20").await);
    assert_eq!(once, stamps(&t.page("/api/users/?page_size=20").await));
    assert!(!once.is_sorted());
    let mut sorted = once.clone();
    sorted.sort();
    assert!(
        sorted.windows(2).all(|w| (2..=4).contains(&(w[1] - w[0]))),
        "gaps of 1-3: {sorted:?}"
    );
}

#[tokio::test]
async fn a_stamp_group_gives_rows_one_stamp_and_pages_list_them_in_a_fixed_order() {
    let config = SimConfig {
        order: Order::Stamp,
        stamp_group: 3,
        ..with_tables(&[("sites", 7)])
    };
    let t = spawn(config).await;
    let first = t.page("/api/sites/?page_size=10").await;
    assert_eq!(stamps(&first), [1, 1, 1, 2, 2, 2, 3]);
    // The writes of one call share stamps too, starting a group of their own.
    let applied = t.sim.random_writes(Some("sites"), 4);
    let new: Vec<u64> = applied.iter().map(|a| a.stamp).collect();
    assert_eq!(new, [4, 4, 4, 5]);
    // A bulk write may touch one record twice; it lists once.
    let written: std::collections::HashSet<&str> = applied.iter().map(|a| &*a.id).collect();
    let page = |n| format!("/api/sites/?sync=3&page_size=2&page={n}");
    let (one, two) = (t.page(&page(1)).await, t.page(&page(2)).await);
    assert_eq!(one["count"].as_u64(), Some(written.len() as u64));
    let mut ids: Vec<&str> = [&one, &two]
        .iter()
        .flat_map(|p| p["results"].as_array().unwrap())
        .map(|r| text(r, "uuid"))
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        written.len(),
        "offset pages within one stamp neither skip nor repeat"
    );
}
