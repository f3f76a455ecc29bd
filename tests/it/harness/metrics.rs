//! `/metrics` read as Prometheus text: every sample by `name{labels}`.

use std::collections::HashMap;

use super::App;

/// `name{labels}` -> value, for every sample line; panics on a malformed line.
pub fn parse(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix('#') {
            let kind = rest.split_whitespace().next().unwrap();
            assert!(
                kind == "HELP" || kind == "TYPE",
                "bad comment line {line:?}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(series.starts_with("stamp_relay_"), "{line:?}");
        if let Some((_, labels)) = series.split_once('{') {
            assert!(labels.ends_with('}'), "{line:?}");
        }
        out.insert(series.to_string(), v);
    }
    out
}

pub async fn scrape(app: &App) -> HashMap<String, f64> {
    let r = app.get("/metrics").send().await.unwrap();
    parse(&r.text().await.unwrap())
}
