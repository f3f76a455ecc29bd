//! The compatible read API: `GET /compat/{source}/api/{resource}/?sync=N`
//! answers like the upstream's list endpoint (docs/upstream.md), from the
//! latest-record store: the DRF envelope (`count`, `next`, `previous`,
//! `results`) around every record whose latest stamp is above N, exactly
//! as the upstream holds it, in stamp order. An integration written
//! against the upstream points its base URL here instead.
//!
//! Paging is a snapshot: page 1 pins the table's top stamp, and `next`
//! carries it (`until`) with the last stamp served (`after`) and the
//! snapshot's `count` (counted once, on page 1), so a walk
//! neither skips nor repeats records while appends land. A record changed
//! during the walk leaves the snapshot (its new stamp is above `until`);
//! the next `sync` (or the event stream after `until`) brings it.

use std::sync::Arc;

use axum::{
    extract::{Query, State},
    http::{StatusCode, Uri, header},
    response::{IntoResponse, Response},
};

use super::{ApiState, extract::PathParams, problem::ApiResult, problem::Problem};
use crate::{
    config::{Config, QueryNames},
    events::MAX_STAMP,
    store::{
        Table,
        records::{RecordsPage, RecordsQuery},
    },
    topology::{self, Topology},
};

/// What the read-replica routes need to know about one table.
#[derive(Debug, Clone)]
pub struct TableSettings {
    pub keep_records: bool,
    pub query: QueryNames,
    pub default_page_size: usize,
    pub max_page_size: usize,
}

/// The tables of the topology, and the relay's public URL for links.
pub struct Tables {
    pub topology: Arc<Topology>,
    pub public_url: Option<String>,
}

impl TableSettings {
    /// What a table's source configures; an internal table answers with
    /// the upstream's defaults.
    fn of(t: &topology::TableEntry) -> TableSettings {
        let Some(source) = &t.source else {
            return TableSettings {
                keep_records: t.keep_records,
                query: QueryNames::default(),
                default_page_size: 500,
                max_page_size: 1000,
            };
        };
        let settings = &source.config.settings;
        let max = settings.max_page_size.max(1) as usize;
        TableSettings {
            keep_records: t.keep_records,
            query: settings.query.clone(),
            default_page_size: (settings.page_size as usize).min(max),
            max_page_size: max,
        }
    }
}

impl Tables {
    pub fn new(topology: Arc<Topology>, c: &Config) -> Arc<Tables> {
        Arc::new(Tables {
            topology,
            public_url: c.api.public_url.clone(),
        })
    }

    /// Whether `t` keeps its latest records (a snapshot to resync from).
    pub fn keeps(&self, t: &Table) -> bool {
        self.topology
            .table(t)
            .is_some_and(|table| table.keep_records)
    }

    /// The table's settings; 404 for an unknown table, 409 when it does not
    /// keep records (the features reading them cannot answer).
    pub fn kept(&self, t: &Table) -> ApiResult<TableSettings> {
        let table = self.topology.table(t).ok_or_else(|| {
            Problem::not_found(format!(
                "{t} is not a configured source/resource; see GET /v1/resources"
            ))
        })?;
        if !table.keep_records {
            return Err(records_not_kept(t));
        }
        Ok(TableSettings::of(&table))
    }
}

/// Where a reader whose position retention passed rebuilds a table: the
/// compatible listing from the start (docs/resync.md).
pub fn snapshot_path(t: &Table) -> String {
    format!("/compat/{}/api/{}/?sync=0", t.source, t.resource)
}

/// 409 for a feature that needs the latest-record store on a table without it.
pub fn records_not_kept(t: &Table) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "records_not_kept",
        format!(
            "{t} does not keep its latest records: source {:?} sets keep_records = false; \
             remove that setting to use record lookup, the compatible API and previous values",
            t.source
        ),
    )
}

/// The query of one list request, in the upstream's parameter names plus
/// the snapshot's `until` and `after`.
#[derive(Debug, PartialEq, Eq)]
struct ListParams {
    sync: u64,
    page: usize,
    page_size: usize,
    until: Option<u64>,
    after: Option<u64>,
    /// The snapshot's count, carried by the links (counted once per walk).
    count: Option<u64>,
}

fn parse(pairs: &[(String, String)], table: &TableSettings) -> ApiResult<ListParams> {
    let get = |name: &str| pairs.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v);
    let num = |name: &str, min: u64| -> ApiResult<Option<u64>> {
        get(name)
            .map(|v| match v.parse::<u64>() {
                _ if Problem::is_out_of_range(v) => Err(Problem::out_of_range(name, v)),
                Ok(n) if n >= min => Ok(n),
                _ => Err(Problem::invalid(
                    name,
                    format!("{name} must be an integer of at least {min}, got {v:?}"),
                )),
            })
            .transpose()
    };
    let q = &table.query;
    let size = num(&q.page_size, 1)?.map_or(table.default_page_size, |n| n as usize);
    let page_size = size.min(table.max_page_size);
    let page = num(&q.page, 1)?.unwrap_or(1);
    // The offset of the page must fit too: past it, no page has records.
    if (page - 1)
        .checked_mul(page_size as u64)
        .is_none_or(|o| o > MAX_STAMP)
    {
        return Err(Problem::bad_position(
            &q.page,
            format!(
                "{} {page} starts past {MAX_STAMP}, the largest position, at {page_size} records a page",
                q.page
            ),
        ));
    }
    Ok(ListParams {
        sync: num(&q.sync, 0)?.unwrap_or(0),
        page: page as usize,
        page_size,
        until: num("until", 0)?,
        after: num("after", 0)?,
        count: num("count", 0)?,
    })
}

/// What the links start with: the configured `api.public_url`, or nothing
/// (links relative to the relay's root). Never the request's `Host`, which
/// the client chooses: a forged one would point a walk's next page at
/// another server.
pub(super) fn origin(tables: &Tables) -> &str {
    tables
        .public_url
        .as_deref()
        .map_or("", |u| u.trim_end_matches('/'))
}

/// The `next` and `previous` links, as JSON (`null` when absent).
fn links(
    base: &str,
    table: &TableSettings,
    p: &ListParams,
    page: &RecordsPage,
    more: bool,
) -> (String, String) {
    let q = &table.query;
    let link = |n: usize, after: Option<u64>| {
        let mut url = format!(
            "{base}?{}={}&{}={n}&{}={}&until={}&count={}",
            q.sync, p.sync, q.page, q.page_size, p.page_size, page.until, page.count
        );
        if let Some(a) = after {
            url.push_str(&format!("&after={a}"));
        }
        serde_json::Value::from(url).to_string()
    };
    let next = match page.records.last() {
        Some(last) if more => link(p.page + 1, Some(last.stamp)),
        _ => "null".into(),
    };
    let previous = if p.page > 1 {
        link(p.page - 1, None)
    } else {
        "null".into()
    };
    (next, previous)
}

/// The upstream's list answer: the kept records' JSON as stored, unparsed.
fn body(page: &RecordsPage, next: &str, previous: &str) -> String {
    let size: usize = page.records.iter().map(|r| r.data.len() + 1).sum();
    let mut body = String::with_capacity(size + 300);
    body.push_str(&format!(
        "{{\"count\":{},\"next\":{next},\"previous\":{previous},\"results\":[",
        page.count
    ));
    for (n, r) in page.records.iter().enumerate() {
        if n > 0 {
            body.push(',');
        }
        body.push_str(&r.data);
    }
    body.push_str("]}");
    body
}

pub async fn list(
    State(s): State<ApiState>,
    who: super::principal::Principal,
    PathParams((source, resource)): PathParams<(String, String)>,
    Query(pairs): Query<Vec<(String, String)>>,
    uri: Uri,
) -> ApiResult<Response> {
    let t = Table::new(source, resource);
    if !who.sees(&t) {
        return Err(super::principal::Principal::unseen(&t));
    }
    let table = s.compat.kept(&t)?;
    let p = parse(&pairs, &table)?;
    let q = RecordsQuery {
        above: p.sync,
        until: p.until,
        after: p.after,
        // A followed `next` link pages by key; a page asked for by number
        // alone by offset, like the upstream.
        offset: if p.after.is_some() {
            0
        } else {
            (p.page - 1) * p.page_size
        },
        limit: p.page_size + 1,
        count: p.count,
    };
    let mut page = s.shared.store.records(&t, q).await?;
    let more = page.records.len() > p.page_size;
    page.records.truncate(p.page_size);
    if page.records.is_empty() && p.page > 1 {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "invalid_page",
            "Invalid page.",
        ));
    }
    let base = format!("{}{}", origin(&s.compat), uri.path());
    let (next, previous) = links(&base, &table, &p, &page, more);
    let body = body(&page, &next, &previous);
    let resume = page.last_id.to_string();
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (
                header::HeaderName::from_static("stamp-relay-resume-after"),
                resume,
            ),
        ],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> TableSettings {
        TableSettings {
            keep_records: true,
            query: QueryNames {
                sync: "since".into(),
                page: "p".into(),
                page_size: "n".into(),
            },
            default_page_size: 50,
            max_page_size: 100,
        }
    }

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parameters_use_the_upstream_names_and_cap() {
        let p = parse(
            &pairs(&[("since", "3"), ("p", "2"), ("n", "500"), ("until", "9")]),
            &table(),
        )
        .unwrap();
        assert_eq!(
            p,
            ListParams {
                sync: 3,
                page: 2,
                page_size: 100,
                until: Some(9),
                after: None,
                count: None,
            }
        );
        let p = parse(&pairs(&[("sync", "3")]), &table()).unwrap();
        assert_eq!(
            (p.sync, p.page, p.page_size),
            (0, 1, 50),
            "sync is not this upstream's name"
        );
        let e = parse(&pairs(&[("p", "0")]), &table()).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("p"));
        assert!(parse(&pairs(&[("since", "-1")]), &table()).is_err());
    }

    #[test]
    fn next_pins_the_snapshot_and_previous_pages_back() {
        let t = table();
        let p = parse(&pairs(&[("since", "3"), ("n", "2"), ("p", "2")]), &t).unwrap();
        let rec = |stamp| crate::store::records::StoredRecord {
            id: "x".into(),
            stamp,
            deleted: false,
            data: "{}".into(),
        };
        let page = RecordsPage {
            count: 9,
            until: 40,
            last_id: crate::events::StreamId::new(40, 0),
            records: vec![rec(7), rec(8)],
        };
        let (next, prev) = links("http://h/c/", &t, &p, &page, true);
        assert_eq!(
            next,
            r#""http://h/c/?since=3&p=3&n=2&until=40&count=9&after=8""#
        );
        assert_eq!(prev, r#""http://h/c/?since=3&p=1&n=2&until=40&count=9""#);
        let (next, _) = links("http://h/c/", &t, &p, &page, false);
        assert_eq!(next, "null");
    }
}
