//! The one-way dependency rule between top-level modules (ARCHITECTURE.md,
//! "Dependencies"): a test that reads every source file's `crate::` paths
//! and fails on any cycle between top-level modules.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The top-level module a file under `src/` belongs to (`None` for the
/// crate root and `main.rs`).
fn top_module(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

/// The first path segment after every `crate::`, also inside
/// `use crate::{a::…, b, …}` groups.
fn imported(src: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in src.match_indices("crate::") {
        let rest = &src[i + "crate::".len()..];
        match rest.strip_prefix('{') {
            Some(group) => out.extend(group_heads(group)),
            None => out.extend(ident(rest)),
        }
    }
    out
}

/// The heads of the items of a `{…}` group, up to its closing brace.
fn group_heads(group: &str) -> Vec<String> {
    let (mut depth, mut heads, mut at_item) = (0, Vec::new(), true);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => at_item = true,
            c if at_item && depth == 0 && !c.is_whitespace() => {
                heads.extend(ident(&group[i..]));
                at_item = false;
            }
            _ => {}
        }
    }
    heads
}

fn ident(s: &str) -> Option<String> {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    (end > 0 && s[..end].starts_with(|c: char| c.is_ascii_lowercase()))
        .then(|| s[..end].to_string())
}

fn graph(root: &Path) -> Graph {
    let mut g = Graph::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let Some(top) = top_module(path.strip_prefix(root).unwrap()) else {
                continue;
            };
            if path.extension().is_some_and(|e| e == "rs") {
                let deps = imported(&std::fs::read_to_string(&path).unwrap());
                let edges = g.entry(top.clone()).or_default();
                edges.extend(deps.into_iter().filter(|d| *d != top && d != "self"));
            }
        }
    }
    g
}

/// A cycle through `from`, as the path of modules that closes it.
fn cycle_from(g: &Graph, from: &str) -> Option<Vec<String>> {
    let mut stack = vec![vec![from.to_string()]];
    let mut seen = BTreeSet::new();
    while let Some(path) = stack.pop() {
        let last = path.last().unwrap();
        for next in g.get(last).into_iter().flatten() {
            if next == from {
                return Some([path.clone(), vec![next.clone()]].concat());
            }
            if seen.insert(next.clone()) {
                stack.push([path.clone(), vec![next.clone()]].concat());
            }
        }
    }
    None
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let g = graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(
        g.contains_key("store") && g["api"].contains("store"),
        "{g:?}"
    );
    let cycles: Vec<String> = g
        .keys()
        .filter_map(|m| cycle_from(&g, m))
        .map(|c| c.join(" -> "))
        .collect();
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_scan_sees_grouped_imports_and_cycles() {
    let src = "use crate::{a::X, b::{c, d}, e};\nlet x = crate::f::g();";
    let found: Vec<_> = imported(src).into_iter().collect();
    assert_eq!(found, ["a", "b", "e", "f"]);
    let mut g = Graph::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    assert_eq!(cycle_from(&g, "a"), None);
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(cycle_from(&g, "a").unwrap(), ["a", "b", "c", "a"]);
}
