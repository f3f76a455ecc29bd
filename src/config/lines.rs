//! The line of a key in the configuration file, for problems that name it:
//! table headers (`[store.retention]`, `[[sources]]` counted per array)
//! and `key = value` lines are followed to the key path a problem names
//! (`sources`, `0`, `base_url`). A key the file does not spell out (a
//! value inside a list, an inline table) gets the line of its nearest
//! ancestor that it does.

use std::collections::HashMap;

/// The 1-based line of `path` in the TOML `text`, or of its longest
/// ancestor written there; None when not even its first key is.
pub fn line_of(text: &str, path: &[String]) -> Option<usize> {
    let mut table: Vec<String> = Vec::new();
    let mut arrays: HashMap<String, usize> = HashMap::new();
    let mut best: Option<(usize, usize)> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        let at = if let Some(h) = line.strip_prefix("[[") {
            let mut name = keys(h.split("]]").next().unwrap_or(""));
            let last = name.pop().unwrap_or_default();
            table = resolve(&name, &arrays);
            table.push(last);
            let count = arrays.entry(table.join(".")).or_insert(0);
            table.push(count.to_string());
            *count += 1;
            table.clone()
        } else if let Some(h) = line.strip_prefix('[') {
            table = resolve(&keys(h.split(']').next().unwrap_or("")), &arrays);
            table.clone()
        } else if let Some((key, _)) = line.split_once('=').filter(|_| starts_key(line)) {
            table.iter().cloned().chain(keys(key)).collect()
        } else {
            continue;
        };
        let shared = at.iter().zip(path).take_while(|(a, b)| a == b).count();
        if shared == at.len() && shared > 0 && best.is_none_or(|(len, _)| shared >= len) {
            best = Some((shared, n + 1));
        }
    }
    best.map(|(_, line)| line)
}

/// The dotted keys of a header or key, unquoted.
fn keys(s: &str) -> Vec<String> {
    s.split('.')
        .map(|k| k.trim().trim_matches('"').trim_matches('\'').to_string())
        .collect()
}

/// A header's keys with the current index after each array of tables
/// among them (`[sources.auth]` is the last `[[sources]]` item's `auth`).
fn resolve(name: &[String], arrays: &HashMap<String, usize>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for k in name {
        out.push(k.clone());
        if let Some(count) = arrays.get(&out.join(".")) {
            out.push(count.saturating_sub(1).to_string());
        }
    }
    out
}

fn starts_key(line: &str) -> bool {
    line.starts_with(|c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '"' | '\''))
}

#[cfg(test)]
mod tests {
    use super::line_of;

    const FILE: &str = "# relay\n[store]\nlease_ttl = 5\n\n[[sources]]\nname = \"a\"\n\
                        [sources.auth]\nkind = \"x\"\n[[sources]]\nname = \"b\"\n\
                        resources = [1, 2]\n[store.retention]\nmax_events = \"x\"\n";

    fn at(path: &str) -> Option<usize> {
        let path: Vec<String> = path.split('.').map(String::from).collect();
        line_of(FILE, &path)
    }

    #[test]
    fn keys_are_found_under_their_tables_and_array_items() {
        assert_eq!(at("store.lease_ttl"), Some(3));
        assert_eq!(at("sources.0.name"), Some(6));
        assert_eq!(at("sources.0.auth.kind"), Some(8));
        assert_eq!(at("sources.1.name"), Some(10));
        assert_eq!(at("sources.1.resources.1"), Some(11), "the list's line");
        assert_eq!(at("store.retention.max_events"), Some(13));
        assert_eq!(at("sources.1.page_size"), Some(9), "the item's header");
        assert_eq!(at("delivery.request_timeout"), None);
    }
}
