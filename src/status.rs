//! The status view, read from the store for every surface that shows it:
//! `GET /v1/resources` (JSON), the status page at `/` (HTML) and
//! `stamp-relay status` (text) each format the same views. The page and
//! the command show an [`Overview`]: sources by health, worst first,
//! searched and paged, so they stay small at thousands of sources. Everything
//! here comes from the store, so every instance shows the same facts
//! whichever one polls a table or delivers to a subscription.

use std::collections::BTreeMap;

use crate::{
    delivery::Backlog,
    events::StreamId,
    health::{Health, SourceHealth, State},
    store::{PollStatus, Standing, Store, StoreResult, Table, position_or_start},
    subscription::Subscription,
};

/// One table as the store has it.
pub struct TableView {
    pub table: Table,
    /// The stream's last ID; its stamp is the cursor.
    pub last_id: StreamId,
    pub stream_length: u64,
    /// Records in the index.
    pub records: u64,
    /// The last poll as its lease holder wrote it.
    pub poll: PollStatus,
}

/// One subscription with its delivery state over the tables it covers.
pub struct SubscriptionView {
    pub subscription: Subscription,
    /// The most any covered table trails, in stamps (`store::lag`, from the
    /// same reads).
    pub lag: u64,
    /// Claimed but not yet delivered.
    pub pending: usize,
    /// Pending events held back by a waiting retry: failed events and the
    /// later events of their records, counted as the worker counts them.
    pub waiting_retries: usize,
    /// Tables where the waiting retries reached `delivery.max_waiting_retries`,
    /// so the worker claims nothing new there for now.
    pub paused: Vec<Table>,
    pub dead_letters: usize,
    /// The newest failed attempt among the recent ones, if any.
    pub last_failure: Option<Failure>,
    /// When the earliest waiting retry is due (unix ms).
    pub next_attempt_ms: Option<u64>,
}

impl SubscriptionView {
    /// The last failure and the next attempt in words, as the page and
    /// `stamp-relay status` show them at `now` (unix ms): "last failure 12 s
    /// ago on sim/patients: HTTP 503; next attempt in 4 s".
    pub fn delivery_note(&self, now: u64) -> Option<String> {
        let failed = self.last_failure.as_ref().map(|f| {
            let ago = now.saturating_sub(f.at_ms) / 1000;
            let on = match f.table.as_str() {
                "" => "a ping".to_string(),
                t => t.to_string(),
            };
            format!("last failure {ago} s ago on {on}: {}", f.reason)
        });
        let next = self.next_attempt_ms.map(|at| {
            format!(
                "next attempt in {} s",
                at.saturating_sub(now).div_ceil(1000)
            )
        });
        let parts: Vec<String> = failed.into_iter().chain(next).collect();
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// A failed attempt as the status surfaces show it.
pub struct Failure {
    pub at_ms: u64,
    /// `source/resource`, empty for a ping.
    pub table: String,
    pub reason: String,
}

/// Attempts read for the last failure: a failure older than these is history.
const RECENT_ATTEMPTS: usize = 100;

async fn last_failure(store: &dyn Store, sub_id: &str) -> StoreResult<Option<Failure>> {
    let recent = store.attempts(sub_id, RECENT_ATTEMPTS).await?;
    Ok(recent.into_iter().find_map(|a| {
        a.failure().map(|reason| Failure {
            at_ms: a.at_ms,
            table: a.table,
            reason,
        })
    }))
}

pub async fn tables(store: &dyn Store, tables: &[Table]) -> StoreResult<Vec<TableView>> {
    let mut out = Vec::with_capacity(tables.len());
    for t in tables {
        let poll = store.poll_status(t).await?.unwrap_or_default();
        out.push(table(store, t, poll).await?);
    }
    Ok(out)
}

async fn table(store: &dyn Store, t: &Table, poll: PollStatus) -> StoreResult<TableView> {
    Ok(TableView {
        table: t.clone(),
        last_id: store.last_id(t).await?,
        stream_length: store.stream_len(t).await?,
        records: store.index_len(t).await?,
        poll,
    })
}

/// Which sources a surface shows: a search in their names, one state, and
/// a page (from 1) of [`PAGE_SIZE`].
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub q: Option<String>,
    pub state: Option<State>,
    pub page: usize,
}

impl Query {
    /// Reads `?q=&state=&page=` (or the `status` command's flags); an
    /// error names the field at fault.
    pub fn parse(
        q: Option<&str>,
        state: Option<&str>,
        page: Option<&str>,
    ) -> Result<Query, (&'static str, String)> {
        let state = match state.filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(State::parse(s).ok_or_else(|| {
                let names: Vec<&str> = State::ALL.iter().map(|s| s.name()).collect();
                (
                    "state",
                    format!("{s:?} is not a state; one of {}", names.join(", ")),
                )
            })?),
        };
        let page = match page.filter(|p| !p.is_empty()) {
            None => 1,
            Some(p) => p
                .parse::<usize>()
                .ok()
                .filter(|&n| n >= 1)
                .ok_or_else(|| ("page", format!("{p:?} is not a page number (1, 2, ...)")))?,
        };
        let q = q.map(str::trim).filter(|q| !q.is_empty()).map(String::from);
        Ok(Query { q, state, page })
    }
}

/// Sources per page of the status page and `stamp-relay status`.
pub const PAGE_SIZE: usize = 50;

/// One source: its health folded from its tables', and its tables.
pub struct SourceView {
    pub name: String,
    pub health: SourceHealth,
    pub tables: Vec<TableView>,
}

/// The sources a [`Query`] picks, worst first, with counts over them all.
pub struct Overview {
    /// Every source by state, and every table by state (worst first, zeros
    /// included), whatever the search.
    pub sources_by_state: Vec<(State, usize)>,
    pub tables_by_state: Vec<(State, usize)>,
    /// Sources the search and state match, and the page of them shown.
    pub matching: usize,
    pub page: usize,
    pub pages: usize,
    pub sources: Vec<SourceView>,
}

/// A table's health as stored; one never judged counts as healthy since now.
fn health_of(poll: &PollStatus, now: u64) -> Health {
    poll.health.clone().unwrap_or_else(|| Health::new(now))
}

/// Tables with their stored poll status.
pub type Polls = Vec<(Table, PollStatus)>;

/// The pure part of [`overview`]: sources folded, counted, searched,
/// sorted worst first (then by name) and paged. Answers the page's
/// sources with their tables.
pub fn pick(tables: Polls, query: &Query, page_size: usize, now: u64) -> (Overview, Vec<Polls>) {
    let tables_by_state = crate::health::count(tables.iter().map(|(_, p)| health_of(p, now).state));
    let mut by_source: BTreeMap<String, Polls> = BTreeMap::new();
    for (t, p) in tables {
        by_source.entry(t.source.clone()).or_default().push((t, p));
    }
    let mut sources: Vec<(String, SourceHealth, Polls)> = by_source
        .into_iter()
        .map(|(name, ts)| {
            let healths: Vec<Health> = ts.iter().map(|(_, p)| health_of(p, now)).collect();
            (name, SourceHealth::of(&healths, now), ts)
        })
        .collect();
    let sources_by_state = crate::health::count(sources.iter().map(|(_, h, _)| h.state));
    let needle = query.q.as_deref().unwrap_or("").to_lowercase();
    sources.retain(|(name, h, _)| {
        name.to_lowercase().contains(&needle) && query.state.is_none_or(|s| h.state == s)
    });
    sources.sort_by(|a, b| (a.1.state, &a.0).cmp(&(b.1.state, &b.0)));
    let matching = sources.len();
    let pages = matching.div_ceil(page_size).max(1);
    let page = query.page.clamp(1, pages);
    let shown: Vec<_> = sources
        .into_iter()
        .skip((page - 1) * page_size)
        .take(page_size)
        .collect();
    let mut tables = Vec::with_capacity(shown.len());
    let mut views = Vec::with_capacity(shown.len());
    for (name, health, ts) in shown {
        tables.push(ts);
        views.push(SourceView {
            name,
            health,
            tables: Vec::new(),
        });
    }
    let overview = Overview {
        sources_by_state,
        tables_by_state,
        matching,
        page,
        pages,
        sources: views,
    };
    (overview, tables)
}

/// The sources `query` picks from `tables`: each table's poll status is
/// read for the counts, and the stream figures only for the page shown,
/// so a page costs the same at 2,000 sources as at 20.
pub async fn overview(store: &dyn Store, tables: &[Table], query: &Query) -> StoreResult<Overview> {
    // Reads in flight at once: thousands of tables cost a round trip per chunk.
    const AT_ONCE: usize = 32;
    let mut polls = Vec::with_capacity(tables.len());
    for chunk in tables.chunks(AT_ONCE) {
        let read = chunk.iter().map(|t| store.poll_status(t));
        let got = futures_util::future::try_join_all(read).await?;
        polls.extend(
            chunk
                .iter()
                .cloned()
                .zip(got.into_iter().map(Option::unwrap_or_default)),
        );
    }
    let (mut overview, picked) = pick(polls, query, PAGE_SIZE, crate::events::now_ms());
    for (view, ts) in overview.sources.iter_mut().zip(picked) {
        for (t, poll) in ts {
            view.tables.push(table(store, &t, poll).await?);
        }
    }
    Ok(overview)
}

pub async fn subscriptions(
    store: &dyn Store,
    tables: &[Table],
    max_waiting_retries: usize,
) -> StoreResult<Vec<SubscriptionView>> {
    let mut out = Vec::new();
    for subscription in store.subscriptions().await? {
        let mut view = SubscriptionView {
            lag: 0,
            pending: 0,
            waiting_retries: 0,
            paused: Vec::new(),
            dead_letters: store.dead_letters(&subscription.id).await?.len(),
            last_failure: last_failure(store, &subscription.id).await?,
            next_attempt_ms: None,
            subscription,
        };
        for t in tables.iter().filter(|t| view.subscription.covers(t)) {
            // One read of the pending set serves the lag and the counts.
            let position = position_or_start(store, &view.subscription, t).await?;
            let pending = store.pending(&view.subscription.id, t).await?;
            let standing = Standing::of(position, pending.first().map(|(e, _)| e.id));
            let retries = pending.iter().filter(|(_, st)| st.attempts > 0);
            let next = retries.map(|(_, st)| st.next_at_ms).min();
            view.next_attempt_ms = view.next_attempt_ms.into_iter().chain(next).min();
            view.lag = view.lag.max(standing.lag(store.last_id(t).await?));
            let held = Backlog::of(pending);
            view.pending += held.pending;
            view.waiting_retries += held.waiting;
            if held.waiting >= max_waiting_retries {
                view.paused.push(t.clone());
            }
        }
        out.push(view);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(source: &str, resource: &str, state: Option<State>) -> (Table, PollStatus) {
        let health = state.map(|state| Health {
            state,
            reason: None,
            since: 5,
            next_attempt: None,
        });
        let poll = PollStatus {
            health,
            ..PollStatus::default()
        };
        (Table::new(source, resource), poll)
    }

    fn names(o: &Overview) -> Vec<&str> {
        o.sources.iter().map(|s| s.name.as_str()).collect()
    }

    fn tables() -> Vec<(Table, PollStatus)> {
        vec![
            table("alpha", "a", Some(State::Healthy)),
            table("alpha", "b", Some(State::Failing)),
            table("beta", "a", None),
            table("gamma", "a", Some(State::AuthFailed)),
            table("delta", "a", Some(State::Healthy)),
        ]
    }

    #[test]
    fn the_worst_sources_come_first_and_counts_cover_every_source() {
        let q = Query::parse(None, None, None).unwrap();
        let (o, picked) = pick(tables(), &q, 10, 9);
        assert_eq!(names(&o), ["gamma", "alpha", "beta", "delta"]);
        assert_eq!(picked[1].len(), 2, "alpha's two tables");
        assert_eq!(o.sources_by_state[0], (State::AuthFailed, 1));
        assert_eq!(o.sources_by_state[1], (State::Failing, 1));
        assert_eq!(o.sources_by_state[5], (State::Healthy, 2));
        assert_eq!(
            o.tables_by_state[5],
            (State::Healthy, 3),
            "a table never judged counts healthy"
        );
        assert_eq!((o.matching, o.page, o.pages), (4, 1, 1));
    }

    #[test]
    fn a_search_and_a_state_narrow_and_pages_split_the_rest() {
        let q = Query::parse(Some(" ALP "), None, None).unwrap();
        assert_eq!(names(&pick(tables(), &q, 10, 9).0), ["alpha"]);
        let q = Query::parse(None, Some("healthy"), None).unwrap();
        let (o, _) = pick(tables(), &q, 10, 9);
        assert_eq!(names(&o), ["beta", "delta"]);
        assert_eq!(
            o.sources_by_state[1],
            (State::Failing, 1),
            "counts ignore the search"
        );
        let q = Query::parse(None, None, Some("2")).unwrap();
        let (o, _) = pick(tables(), &q, 3, 9);
        assert_eq!((names(&o), o.page, o.pages), (vec!["delta"], 2, 2));
        // A page past the last shows the last.
        let q = Query::parse(None, None, Some("9")).unwrap();
        assert_eq!(pick(tables(), &q, 3, 9).0.page, 2);
    }

    #[test]
    fn bad_query_values_name_their_field() {
        assert_eq!(
            Query::parse(None, Some("fine"), None).unwrap_err().0,
            "state"
        );
        assert_eq!(Query::parse(None, None, Some("0")).unwrap_err().0, "page");
        assert_eq!(Query::parse(None, None, Some("x")).unwrap_err().0, "page");
        let q = Query::parse(Some(""), Some(""), Some("")).unwrap();
        assert_eq!((q.q, q.state, q.page), (None, None, 1));
    }
}
