//! A model upstream in the test's process: a table of records with update
//! stamps, served as [`Pages`] the way docs/upstream.md and the simulator
//! describe the PainChek list API: the records above `sync`, one page of
//! `page_size` at a time, with the `count` of the whole delta and a `next`
//! link while more pages follow, in stamp order (what `keyset` needs) or
//! name order (PainChek's own). Every write takes the table's top stamp + 1;
//! a delete sets `deleted_at`, a restore clears it; a late write takes its
//! stamp now and shows only when committed. A rule sees each request
//! before it is answered: it may change the table (an edit during a walk)
//! or fail the request (what is left after the client's retries).

use std::{collections::BTreeMap, sync::Mutex, time::Duration};

use serde_json::json;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::{poller::Pages, record::Page, upstream::UpstreamError};

/// How long the model takes to answer, on the paused clock.
const LATENCY: Duration = Duration::from_millis(40);

/// Order of a list answer's results.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Order {
    /// Stamp ascending, rows of one stamp by id.
    Stamp,
    /// By id (a name), whatever the stamps: rows keep their place when
    /// edited, so offset pages over a changing delta shift.
    Name,
}

/// A record's current version.
#[derive(Debug, Clone, Copy)]
struct Version {
    stamp: u64,
    deleted: bool,
}

/// The upstream's table.
pub struct Data {
    order: Order,
    page_size: usize,
    top: u64,
    /// Visible records by id.
    records: BTreeMap<String, Version>,
    /// Written with a stamp, not yet visible (a commit still running).
    late: BTreeMap<String, Version>,
}

/// What the model does with one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Answer {
    Serve,
    /// Fails with this HTTP status.
    Fail(u16),
}

/// A list request: `sync`, `page`, and how many requests came before.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Request {
    pub sync: u64,
    pub page: u32,
    pub nth: usize,
}

type Rule = Box<dyn FnMut(&mut Data, Request) -> Answer + Send>;

pub struct Model {
    data: Mutex<Data>,
    rule: Mutex<Rule>,
    requests: Mutex<Vec<(Request, tokio::time::Instant)>>,
}

impl Data {
    /// A new version of `id` (created when unknown) at the next stamp.
    pub fn write(&mut self, id: &str) -> u64 {
        let deleted = self.records.get(id).is_some_and(|v| v.deleted);
        self.put(id, deleted)
    }

    /// Writes each of `ids` (`"a b c"`), one stamp each.
    pub fn write_all(&mut self, ids: &str) {
        for id in ids.split_whitespace() {
            self.write(id);
        }
    }

    /// Sets `deleted_at` of `id` (a new version).
    pub fn delete(&mut self, id: &str) -> u64 {
        self.put(id, true)
    }

    /// Clears `deleted_at` of `id` (a new version).
    pub fn restore(&mut self, id: &str) -> u64 {
        self.put(id, false)
    }

    /// One bulk update: every one of `ids` at one new stamp.
    pub fn bulk(&mut self, ids: &str) -> u64 {
        self.top += 1;
        for id in ids.split_whitespace() {
            let version = Version {
                stamp: self.top,
                deleted: false,
            };
            self.records.insert(id.into(), version);
        }
        self.top
    }

    /// A write of `id` that takes its stamp now and shows when
    /// [`Data::commit_late`] says so.
    pub fn write_late(&mut self, id: &str) -> u64 {
        self.top += 1;
        let version = Version {
            stamp: self.top,
            deleted: false,
        };
        self.late.insert(id.into(), version);
        self.top
    }

    /// The late write of `id` becomes visible.
    pub fn commit_late(&mut self, id: &str) {
        let v = self.late.remove(id).expect("a late write");
        self.records.insert(id.into(), v);
    }

    fn put(&mut self, id: &str, deleted: bool) -> u64 {
        self.top += 1;
        let stamp = self.top;
        self.records.insert(id.into(), Version { stamp, deleted });
        stamp
    }

    /// The current version of every visible record, `id@stamp`, by stamp.
    pub fn versions(&self) -> Vec<String> {
        self.versions_above(0)
    }

    /// [`Data::versions`] with a stamp above `stamp`.
    pub fn versions_above(&self, stamp: u64) -> Vec<String> {
        let mut all: Vec<_> = (self.records.iter())
            .filter(|(_, v)| v.stamp > stamp)
            .collect();
        all.sort_by_key(|(id, v)| (v.stamp, (*id).clone()));
        all.iter()
            .map(|(id, v)| format!("{id}@{}", v.stamp))
            .collect()
    }

    /// The delta above `sync`, in the model's order.
    fn delta(&self, sync: u64) -> Vec<(&String, Version)> {
        let mut rows: Vec<_> = (self.records.iter())
            .filter(|(_, v)| v.stamp > sync)
            .map(|(id, v)| (id, *v))
            .collect();
        if self.order == Order::Stamp {
            rows.sort_by_key(|(id, v)| (v.stamp, (*id).clone()));
        }
        rows
    }

    /// Page `page` of the delta above `sync`, or the 404 past its last page.
    fn answer(&self, sync: u64, page: u32, url: &Url) -> Result<Page, UpstreamError> {
        let rows = self.delta(sync);
        let size = self.page_size;
        let pages = rows.len().div_ceil(size).max(1);
        let page = page as usize;
        if page == 0 || page > pages {
            return Err(failed(url, 404));
        }
        let of = |(id, v): &(&String, Version)| {
            let deleted_at = v.deleted.then_some("2026-12-01T00:00:00Z");
            let raw = json!({ "uuid": id, "update_stamp": v.stamp, "deleted_at": deleted_at });
            serde_json::value::to_raw_value(&raw).unwrap()
        };
        let results = rows.iter().skip((page - 1) * size).take(size).map(of);
        Ok(Page {
            count: rows.len() as u64,
            next: (page < pages).then(|| format!("page {}", page + 1)),
            results: results.collect(),
        })
    }
}

fn failed(url: &Url, status: u16) -> UpstreamError {
    UpstreamError::Status {
        url: url.to_string(),
        status,
        detail: "the model says no".into(),
        retry_after: None,
    }
}

impl Model {
    pub fn new(order: Order, page_size: usize) -> Model {
        let data = Data {
            order,
            page_size,
            top: 0,
            records: BTreeMap::new(),
            late: BTreeMap::new(),
        };
        Model {
            data: Mutex::new(data),
            rule: Mutex::new(Box::new(|_, _| Answer::Serve)),
            requests: Mutex::default(),
        }
    }

    /// The table, to change between polls.
    pub fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data.lock().unwrap()
    }

    /// From now on, `rule` sees every request before it is answered.
    pub fn on_request(&self, rule: impl FnMut(&mut Data, Request) -> Answer + Send + 'static) {
        *self.rule.lock().unwrap() = Box::new(rule);
    }

    /// `act` on the first request `when` holds of; every other request
    /// is served.
    pub fn once(
        &self,
        when: impl Fn(Request) -> bool + Send + 'static,
        act: impl FnOnce(&mut Data) -> Answer + Send + 'static,
    ) {
        let mut act = Some(act);
        self.on_request(move |data, r| match act.take_if(|_| when(r)) {
            Some(act) => act(data),
            None => Answer::Serve,
        });
    }

    /// Every request so far, with the (paused) time it came.
    pub fn requests(&self) -> Vec<(Request, tokio::time::Instant)> {
        self.requests.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl Pages for Model {
    async fn page(
        &self,
        resource: &str,
        sync: u64,
        page: u32,
        _cancel: &CancellationToken,
    ) -> Result<Page, UpstreamError> {
        let url = self.page_url(resource, sync, page);
        let request = {
            let mut requests = self.requests.lock().unwrap();
            let r = Request {
                sync,
                page,
                nth: requests.len(),
            };
            requests.push((r, tokio::time::Instant::now()));
            r
        };
        tokio::time::sleep(LATENCY).await;
        let mut data = self.data.lock().unwrap();
        match (self.rule.lock().unwrap())(&mut data, request) {
            Answer::Serve => data.answer(sync, page, &url),
            Answer::Fail(status) => Err(failed(&url, status)),
        }
    }

    fn page_url(&self, resource: &str, sync: u64, page: u32) -> Url {
        let url = format!("https://upstream.example/api/{resource}/?sync={sync}&page={page}");
        Url::parse(&url).unwrap()
    }
}
