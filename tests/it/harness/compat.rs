//! Reading the compatible API (`/compat/{source}/api/{resource}/?sync=N`) as
//! an upstream's client does: one page with its raw records, a walk
//! following `next`, and the fields of a raw record.

use serde_json::{Value, value::RawValue};

use super::READ_TOKEN;

/// One page of a DRF listing: the envelope, and each result's raw bytes.
pub struct Page {
    pub count: u64,
    pub next: Option<String>,
    pub previous: Option<String>,
    pub results: Vec<String>,
    pub resume_after: Option<String>,
}

pub async fn page(http: &reqwest::Client, url: &str) -> Page {
    let resp = http
        .get(url)
        .basic_auth("integration", Some(READ_TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{url}");
    let resume_after = resp
        .headers()
        .get("stamp-relay-resume-after")
        .map(|v| v.to_str().unwrap().to_string());
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        count: u64,
        next: Option<String>,
        previous: Option<String>,
        #[serde(borrow)]
        results: Vec<&'a RawValue>,
    }
    let text = resp.text().await.unwrap();
    let e: Envelope = serde_json::from_str(&text).unwrap();
    Page {
        count: e.count,
        next: e.next,
        previous: e.previous,
        results: e.results.iter().map(|r| r.get().to_string()).collect(),
        resume_after,
    }
}

/// Follows `next` from `url` to the end: every result, and page 1's resume position.
pub async fn walk(http: &reqwest::Client, url: &str) -> (Vec<String>, String) {
    let first = page(http, url).await;
    let resume = first.resume_after.clone().unwrap();
    let (mut out, mut next) = (first.results, first.next);
    while let Some(url) = next {
        let p = page(http, &url).await;
        out.extend(p.results);
        next = p.next;
    }
    (out, resume)
}

pub fn field(raw: &str, name: &str) -> Value {
    serde_json::from_str::<Value>(raw).unwrap()[name].clone()
}

pub fn stamp_of(raw: &str) -> u64 {
    field(raw, "update_stamp").as_u64().unwrap()
}
