//! `GET /`: one server-rendered page (no build step), refreshing itself:
//! sources and tables counted by health state on top, then the sources a
//! search picks (`?q=&state=&page=`), worst first, a page at a time, with
//! their tables, then each consumer's health (linking to its subscriptions,
//! `?consumer=`), then each subscription. Behind a read token; a browser
//! sends it as the password of the Basic prompt.

use std::fmt::Write;

use axum::{extract::State, response::Html};
use serde::Deserialize;

use super::{ApiState, extract::QueryParams, problem::Problem};
use crate::{
    events::now_ms,
    health::State as Health,
    status::{self, Overview, Query, SubscriptionView, TableView},
};

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn age(ms: Option<u64>) -> String {
    match ms {
        None => "never".into(),
        Some(at) => format!("{} s ago", now_ms().saturating_sub(at) / 1000),
    }
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin-bottom:2em}\
th,td{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.bad{color:#b00020}.ok{color:#1b5e20}";

/// `?q=&state=&page=`, read as text so a bad value gets a problem naming it.
#[derive(Deserialize)]
pub struct PageQuery {
    q: Option<String>,
    /// Only this consumer's subscriptions.
    consumer: Option<String>,
    state: Option<String>,
    page: Option<String>,
}

pub async fn page(
    State(s): State<ApiState>,
    QueryParams(pq): QueryParams<PageQuery>,
) -> Result<Html<String>, Problem> {
    let query = Query::parse(pq.q.as_deref(), pq.state.as_deref(), pq.page.as_deref())
        .map_err(|(field, detail)| Problem::invalid(field, detail))?;
    let tables = s.shared.source_tables();
    let keys: Vec<_> = tables.iter().map(|t| t.table.clone()).collect();
    let store = s.shared.store.as_ref();
    let overview = status::overview(store, &keys, &query).await?;
    let mut subscriptions = status::subscriptions(store, &keys, s.max_waiting_retries).await?;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=5>\
         <title>stamp-relay</title><style>{STYLE}</style></head><body><h1>stamp-relay</h1>\
         <p>{} &middot; refreshes every 5 s</p>",
        esc(&store.describe())
    );
    sources(&mut h, &overview, &query);
    let consumers = s.consumers.list().await?;
    consumers_health(&mut h, &consumers, &subscriptions);
    if let Some(c) = pq.consumer.as_deref().filter(|c| !c.is_empty()) {
        subscriptions.retain(|v| v.subscription.consumer == c);
    }
    let _ = write!(
        h,
        "<h2>Tables</h2><table id=targets><tr><th>table</th><th>cursor</th>\
         <th>events</th><th>records</th><th>events/min</th><th>last poll</th><th>polled by</th><th>state</th></tr>"
    );
    for source in &overview.sources {
        source.tables.iter().for_each(|t| table_row(&mut h, t));
    }
    let limit = s.max_waiting_retries;
    let _ = write!(
        h,
        "</table><h2>Subscriptions</h2><table id=subscriptions><tr><th>id</th><th>url</th><th>state</th>\
         <th>lag (stamps)</th><th title=\"events held back by a failed event of their record, waiting for its \
         next attempt; with {limit} (delivery.max_waiting_retries) on a table, delivery claims nothing new \
         there\">waiting retries (limit {limit})</th><th>dead letters</th></tr>",
    );
    subscriptions
        .iter()
        .for_each(|v| subscription_row(&mut h, v));
    h.push_str("</table></body></html>");
    Ok(Html(h))
}

/// Each consumer's health: its subscriptions, how many fail, their dead
/// letters and the most one trails, linking to its subscriptions below.
fn consumers_health(
    h: &mut String,
    consumers: &[crate::consumer::Consumer],
    subs: &[SubscriptionView],
) {
    h.push_str(
        "<h2>Consumers</h2><table id=consumers><tr><th>consumer</th><th>subscriptions</th>\
        <th>failing</th><th>dead letters</th><th>lag (stamps)</th></tr>",
    );
    for c in consumers {
        let own: Vec<&SubscriptionView> = subs
            .iter()
            .filter(|v| v.subscription.consumer == c.name)
            .collect();
        let failing = own
            .iter()
            .filter(|v| !v.subscription.enabled || v.delivery_note(now_ms()).is_some())
            .count();
        let dead: usize = own.iter().map(|v| v.dead_letters).sum();
        let lag = own.iter().map(|v| v.lag).max().unwrap_or(0);
        let mut link = url::form_urlencoded::Serializer::new(String::new());
        link.append_pair("consumer", &c.name);
        let _ = write!(
            h,
            "<tr data-consumer=\"{name}\"><td><a href=\"?{}#subscriptions\">{name}</a></td><td class=n>{}</td>\
             <td class=\"n {}\" data-failing>{failing}</td><td class=n data-dead>{dead}</td><td class=n>{lag}</td></tr>",
            esc(&link.finish()),
            own.len(),
            if failing > 0 { "bad" } else { "ok" },
            name = esc(&c.name),
        );
    }
    h.push_str("</table>");
}

/// The counts by state, the search form, and the page of sources.
fn sources(h: &mut String, o: &Overview, query: &Query) {
    h.push_str("<h2>Sources</h2>");
    counts(h, "sources", &o.sources_by_state);
    counts(h, "tables", &o.tables_by_state);
    search(h, o, query);
    h.push_str("<table id=sources><tr><th>source</th><th>state</th><th>since</th><th>tables</th><th>reason</th></tr>");
    for s in &o.sources {
        let class = if s.health.state == Health::Healthy {
            "ok"
        } else {
            "bad"
        };
        let _ = write!(
            h,
            "<tr data-source=\"{name}\" data-state=\"{state}\"><td>{name}</td><td class={class}>{state}</td><td>{}</td>\
             <td>{}</td><td>{}</td></tr>",
            age(Some(s.health.since)),
            s.health.tables_in_words(),
            esc(s.health.reason.as_deref().unwrap_or("")),
            name = esc(&s.name),
            state = s.health.state,
        );
    }
    h.push_str("</table>");
}

/// One line of counts by state (`sources` or `tables`), each linking to
/// the sources in that state.
fn counts(h: &mut String, kind: &str, counts: &[(Health, usize)]) {
    let _ = write!(h, "<p id={kind}-by-state>{kind}:");
    for (state, n) in counts {
        let class = match (*n, *state) {
            (0, _) => "",
            (_, Health::Healthy) => "ok",
            _ => "bad",
        };
        let _ = write!(
            h,
            " <a class={class} data-count=\"{state}\" href=\"?state={state}\">{state} {n}</a>"
        );
    }
    h.push_str("</p>");
}

/// The search form and the paging line with its links.
fn search(h: &mut String, o: &Overview, query: &Query) {
    let q = query.q.as_deref().unwrap_or("");
    let _ = write!(
        h,
        "<form method=get><input name=q placeholder=\"source name\" value=\"{}\"> <select name=state><option value=\"\">any state</option>",
        esc(q)
    );
    for state in Health::ALL {
        let selected = if query.state == Some(state) {
            " selected"
        } else {
            ""
        };
        let _ = write!(h, "<option{selected}>{state}</option>");
    }
    let _ = write!(
        h,
        "</select> <button>search</button></form><p id=paging data-matching={} data-page={} data-pages={}>{} sources match &middot; page {} of {}",
        o.matching, o.page, o.pages, o.matching, o.page, o.pages
    );
    let link = |page: usize| {
        let mut url = url::form_urlencoded::Serializer::new(String::new());
        url.append_pair("q", q);
        url.append_pair("state", query.state.map_or("", |s| s.name()));
        url.append_pair("page", &page.to_string());
        esc(&url.finish())
    };
    if o.page > 1 {
        let _ = write!(
            h,
            " &middot; <a rel=prev href=\"?{}\">previous</a>",
            link(o.page - 1)
        );
    }
    if o.page < o.pages {
        let _ = write!(
            h,
            " &middot; <a rel=next href=\"?{}\">next</a>",
            link(o.page + 1)
        );
    }
    h.push_str("</p>");
}

fn table_row(h: &mut String, v: &TableView) {
    let last = &v.poll;
    let state = match &last.error {
        Some(e) => format!("<span class=bad>{}</span>", esc(e)),
        None if last.ok_ms.is_some() => "<span class=ok>in sync</span>".into(),
        None => "starting".into(),
    };
    let alerts = crate::store::alerts::describe(&last.alerts);
    let state = if alerts.is_empty() {
        state
    } else {
        // Each kind is explained in docs/sync.md, "What the relay detects".
        format!(
            "{state} <span class=bad data-alerts>{}</span>",
            esc(&alerts)
        )
    };
    let _ = write!(
        h,
        "<tr data-target=\"{t}\" data-health=\"{health}\"><td>{t}</td><td class=n data-cursor>{}</td><td class=n>{}</td><td class=n>{}</td>\
         <td class=n data-rate>{}</td><td>{}</td><td>{}</td><td>{state}</td></tr>",
        v.last_id.stamp,
        v.stream_length,
        v.records,
        last.rate_shown(),
        age((last.finished_ms > 0).then_some(last.finished_ms)),
        esc(&last.holder),
        t = v.table,
        health = last.health.as_ref().map_or("", |h| h.state.name()),
    );
}

fn subscription_row(h: &mut String, v: &SubscriptionView) {
    let sub = &v.subscription;
    let paused = if v.paused.is_empty() {
        String::new()
    } else {
        // The limit's effect: these tables claim nothing new for now.
        let tables: Vec<String> = v.paused.iter().map(|t| t.to_string()).collect();
        format!(
            " <span class=bad data-paused>claiming paused on {}</span>",
            esc(&tables.join(", "))
        )
    };
    let mut state = if sub.enabled {
        "<span class=ok>enabled</span>".to_string()
    } else {
        format!(
            "<span class=bad>disabled</span> {}",
            esc(sub.disabled_reason.as_deref().unwrap_or(""))
        )
    };
    if let Some(note) = v.delivery_note(now_ms()) {
        let _ = write!(state, " <div class=bad data-failure>{}</div>", esc(&note));
    }
    let _ = write!(
        h,
        "<tr data-subscription=\"{id}\" data-consumer=\"{consumer}\"><td>{id}{managed}</td><td>{}</td><td>{state}</td><td class=n data-lag>{}</td>\
         <td class=n data-waiting>{}{paused}</td><td class=n data-dead>{}</td></tr>",
        // The page needs only a read token; a token in the URL stays admin-only.
        esc(&sub.url.for_logs()),
        v.lag,
        v.waiting_retries,
        v.dead_letters,
        id = esc(&sub.id),
        consumer = esc(&sub.consumer),
        managed = if sub.managed_by.is_some() {
            " <small>(config)</small>"
        } else {
            ""
        },
    );
}
