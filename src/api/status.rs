//! `GET /`: one server-rendered page (no build step) with each target and
//! each subscription, refreshing itself. Behind a read token; a browser
//! sends it as the password of the Basic prompt.

use std::fmt::Write;

use axum::{extract::State, response::Html};

use super::{ApiState, problem::Problem};
use crate::events::now_ms;

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
    let store = &s.shared.store;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=5>\
         <title>stamp-relay</title><style>{STYLE}</style></head><body><h1>stamp-relay</h1>\
         <p>{} &middot; refreshes every 5 s</p><h2>Tables</h2><table id=targets><tr><th>table</th><th>cursor</th>\
         <th>events</th><th>records</th><th>events/min</th><th>last poll</th><th>polled by</th><th>state</th></tr>",
        esc(&store.describe())
    );
    for (t, _) in s.shared.targets.iter() {
        let last_id = store.last_id(t).await?;
        // The stored status: the same whichever instance polls the target.
        let last = store.poll_status(t).await?.unwrap_or_default();
        let state = match &last.error {
            Some(e) => format!("<span class=bad>{}</span>", esc(e)),
            None if last.ok_ms.is_some() => "<span class=ok>in sync</span>".into(),
            None => "starting".into(),
        };
        let _ = write!(
            h,
            "<tr data-target=\"{t}\"><td>{t}</td><td class=n data-cursor>{}</td><td class=n>{}</td><td class=n>{}</td>\
             <td class=n data-rate>{}</td><td>{}</td><td>{}</td><td>{state}</td></tr>",
            last_id.stamp,
            store.stream_len(t).await?,
            store.index_len(t).await?,
            last.rate_shown(),
            age((last.finished_ms > 0).then_some(last.finished_ms)),
            esc(&last.holder),
        );
    }
    subscriptions(&s, &mut h).await?;
    h.push_str("</table></body></html>");
    Ok(Html(h))
}

/// The subscriptions table: each one's lag, its events waiting for retries
/// and the tables where `delivery.max_waiting_retries` stops claiming.
async fn subscriptions(s: &ApiState, h: &mut String) -> Result<(), Problem> {
    let store = &s.shared.store;
    let limit = s.max_waiting_retries;
    let _ = write!(
        h,
        "</table><h2>Subscriptions</h2><table id=subscriptions><tr><th>id</th><th>url</th><th>state</th>\
         <th>lag (stamps)</th><th title=\"events held back by a failed event of their record, waiting for its \
         next attempt; with {limit} (delivery.max_waiting_retries) on a table, delivery claims nothing new \
         there\">waiting retries (limit {limit})</th><th>dead letters</th></tr>",
    );
    for sub in store.subscriptions().await? {
        let (mut lag, mut waiting, mut paused) = (0, 0, Vec::new());
        for (t, _) in s.shared.targets.iter().filter(|(t, _)| sub.covers(t)) {
            lag = lag.max(crate::delivery::lag(store.as_ref(), &sub, t).await?);
            let held = crate::delivery::backlog(store.as_ref(), &sub.id, t)
                .await?
                .waiting;
            waiting += held;
            if held >= limit {
                paused.push(t.to_string());
            }
        }
        let paused = if paused.is_empty() {
            String::new()
        } else {
            // The limit's effect: these tables claim nothing new for now.
            format!(
                " <span class=bad data-paused>claiming paused on {}</span>",
                esc(&paused.join(", "))
            )
        };
        let state = if sub.enabled {
            "<span class=ok>enabled</span>".to_string()
        } else {
            format!(
                "<span class=bad>disabled</span> {}",
                esc(sub.disabled_reason.as_deref().unwrap_or(""))
            )
        };
        let _ = write!(
            h,
            "<tr data-subscription=\"{id}\"><td>{id}</td><td>{}</td><td>{state}</td><td class=n data-lag>{lag}</td>\
             <td class=n data-waiting>{waiting}{paused}</td><td class=n data-dead>{}</td></tr>",
            // The page needs only a read token; a token in the URL stays admin-only.
            esc(&crate::subscription::url_for_logs(&sub.url)),
            store.dead_letters(&sub.id).await?.len(),
            id = esc(&sub.id),
        );
    }
    Ok(())
}
