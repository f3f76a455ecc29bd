//! openapi.yaml is true to the server: every documented route answers and
//! every routed path is documented. Real responses are checked against the
//! schemas by the suites that make them (`harness/openapi.rs`).

use std::collections::BTreeSet;

use crate::harness::openapi::documented;

/// (METHOD, path) pairs the router declares, read from its source.
fn routed() -> BTreeSet<(String, String)> {
    let src =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/mod.rs")).unwrap();
    let mut out = BTreeSet::new();
    for chunk in src.split(".route(").skip(1) {
        let path = chunk.split('"').nth(1).unwrap().to_string();
        // The method routers of this route, up to the route call's end.
        let body = chunk.split(".route(").next().unwrap();
        let body = &body[..body.find("))\n").map(|i| i + 2).unwrap_or(body.len())];
        for m in ["get", "post", "patch", "put", "delete"] {
            if body.contains(&format!("{m}(")) {
                out.insert((m.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

#[test]
fn every_route_is_documented_and_every_documented_route_exists() {
    let (doc, routes) = (documented(), routed());
    assert!(
        routes.len() >= 10,
        "parsed too few routes from src/api/mod.rs: {routes:?}"
    );
    let missing_doc: Vec<_> = routes.difference(&doc).collect();
    let missing_route: Vec<_> = doc.difference(&routes).collect();
    assert!(
        missing_doc.is_empty(),
        "routes missing from openapi.yaml: {missing_doc:?}"
    );
    assert!(
        missing_route.is_empty(),
        "documented routes the router lacks: {missing_route:?}"
    );
}
