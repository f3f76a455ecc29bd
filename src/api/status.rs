//! `GET /`: one server-rendered page (no build step) with each target and
//! each subscription, refreshing itself. Behind a read token; a browser
//! sends it as the password of the Basic prompt.

use std::fmt::Write;

use axum::{extract::State, response::Html};

use super::{ApiState, problem::Problem};
use crate::{
    events::now_ms,
    status::{self, SubscriptionView, TableView},
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

pub async fn page(State(s): State<ApiState>) -> Result<Html<String>, Problem> {
    let targets = s.shared.targets();
    let snap = status::snapshot(s.shared.store.as_ref(), &targets, s.max_waiting_retries).await?;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=5>\
         <title>stamp-relay</title><style>{STYLE}</style></head><body><h1>stamp-relay</h1>\
         <p>{} &middot; refreshes every 5 s</p><h2>Tables</h2><table id=targets><tr><th>table</th><th>cursor</th>\
         <th>events</th><th>records</th><th>events/min</th><th>last poll</th><th>polled by</th><th>state</th></tr>",
        esc(&snap.store)
    );
    snap.tables.iter().for_each(|t| table_row(&mut h, t));
    let limit = snap.max_waiting_retries;
    let _ = write!(
        h,
        "</table><h2>Subscriptions</h2><table id=subscriptions><tr><th>id</th><th>url</th><th>state</th>\
         <th>lag (stamps)</th><th title=\"events held back by a failed event of their record, waiting for its \
         next attempt; with {limit} (delivery.max_waiting_retries) on a table, delivery claims nothing new \
         there\">waiting retries (limit {limit})</th><th>dead letters</th></tr>",
    );
    snap.subscriptions
        .iter()
        .for_each(|v| subscription_row(&mut h, v));
    h.push_str("</table></body></html>");
    Ok(Html(h))
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
        "<tr data-target=\"{t}\"><td>{t}</td><td class=n data-cursor>{}</td><td class=n>{}</td><td class=n>{}</td>\
         <td class=n data-rate>{}</td><td>{}</td><td>{}</td><td>{state}</td></tr>",
        v.last_id.stamp,
        v.stream_length,
        v.records,
        last.rate_shown(),
        age((last.finished_ms > 0).then_some(last.finished_ms)),
        esc(&last.holder),
        t = v.target,
    );
}

fn subscription_row(h: &mut String, v: &SubscriptionView) {
    let sub = &v.sub;
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
        "<tr data-subscription=\"{id}\"><td>{id}{managed}</td><td>{}</td><td>{state}</td><td class=n data-lag>{}</td>\
         <td class=n data-waiting>{}{paused}</td><td class=n data-dead>{}</td></tr>",
        // The page needs only a read token; a token in the URL stays admin-only.
        esc(&sub.url.for_logs()),
        v.lag,
        v.waiting_retries,
        v.dead_letters,
        id = esc(&sub.id),
        managed = if sub.managed_by.is_some() {
            " <small>(config)</small>"
        } else {
            ""
        },
    );
}
