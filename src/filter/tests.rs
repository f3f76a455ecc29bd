//! Filters, projection and rendering over PainChek-like records.

use serde_json::{Value, json};

use super::*;
use crate::{
    cloudevents::EventSource,
    config::FieldNames,
    events::{Event, Op, StreamId},
    store::Table,
};

fn source(resource: &str) -> EventSource {
    EventSource {
        table: Table::new("pc", resource),
        source_url: format!("https://painchek.example/api/{resource}"),
        type_prefix: "io.stamp-relay".into(),
        fields: FieldNames::default(),
    }
}

fn event(op: Op, stamp: u64, data: Value) -> Event {
    Event {
        id: StreamId::new(stamp, 0),
        op,
        record: data["uuid"].as_str().unwrap_or("r").into(),
        stamp,
        prev: None,
        snapshot: stamp < 10,
        observed: 1_700_000_000_123,
        data: data.to_string(),
        prev_id: None,
        before: None,
    }
}

fn patient(site: &str, gender: &str, deleted: bool) -> Value {
    json!({"uuid": "p1", "update_stamp": 760, "site": site, "gender": gender,
           "deleted_at": if deleted { json!("2024-05-01T00:00:00Z") } else { Value::Null }})
}

fn assessment(score: Value) -> Value {
    json!({"uuid": "a1", "update_stamp": 42, "patient": "p1",
           "assessment": {"pain_score": score, "tool": "PainChek"}})
}

/// Whether `filter` (JSON text) passes `e` of a `resource` source.
fn passes(filter: &str, resource: &str, e: &Event) -> bool {
    let f = Filter::parse(&serde_json::from_str(filter).unwrap()).unwrap();
    f.matches(&EventView::new(&source(resource), e))
}

fn error(filter: &str) -> String {
    Filter::parse(&serde_json::from_str(filter).unwrap())
        .unwrap_err()
        .to_string()
}

#[test]
fn exact_prefix_and_suffix_over_context_attributes() {
    let e = event(Op::Deleted, 760, patient("s1", "F", true));
    assert!(passes(
        r#"{"exact": {"type": "io.stamp-relay.patients.deleted"}}"#,
        "patients",
        &e
    ));
    assert!(!passes(
        r#"{"exact": {"type": "io.stamp-relay.patients"}}"#,
        "patients",
        &e
    ));
    assert!(passes(
        r#"{"prefix": {"type": "io.stamp-relay.patients."}}"#,
        "patients",
        &e
    ));
    assert!(passes(
        r#"{"suffix": {"type": ".deleted"}}"#,
        "patients",
        &e
    ));
    assert!(!passes(
        r#"{"suffix": {"type": ".created"}}"#,
        "patients",
        &e
    ));
    assert!(passes(
        r#"{"exact": {"subject": "p1", "updatestamp": "760"}}"#,
        "patients",
        &e
    ));
    assert!(!passes(
        r#"{"exact": {"subject": "p1", "updatestamp": "761"}}"#,
        "patients",
        &e
    ));
}

#[test]
fn the_other_context_attributes_and_extensions() {
    let e = event(Op::Deleted, 760, patient("s1", "F", true));
    assert!(passes(
        r#"{"exact": {"id": "pc:patients:p1:760"}}"#,
        "patients",
        &e
    ));
    assert!(passes(
        r#"{"suffix": {"source": "/api/patients"}}"#,
        "patients",
        &e
    ));
    assert!(passes(
        r#"{"exact": {"snapshot": "false", "streamid": "760-0"}}"#,
        "patients",
        &e
    ));
    assert!(passes(
        r#"{"prefix": {"time": "2023-11-14T22:13:20"}}"#,
        "patients",
        &e
    ));
    assert!(passes(
        r#"{"exact": {"specversion": "1.0", "datacontenttype": "application/json"}}"#,
        "patients",
        &e
    ));
    assert!(
        !passes(r#"{"prefix": {"dataschema": ""}}"#, "patients", &e),
        "absent never matches"
    );
}

#[test]
fn data_paths_compare_strings_numbers_and_nested_fields() {
    let p = event(Op::Updated, 760, patient("s1", "F", false));
    assert!(passes(
        r#"{"exact": {"data.site": "s1", "data.gender": "F"}}"#,
        "patients",
        &p
    ));
    assert!(!passes(r#"{"exact": {"data.site": "s2"}}"#, "patients", &p));
    assert!(passes(
        r#"{"exact": {"data.update_stamp": "760"}}"#,
        "patients",
        &p
    ));
    assert!(
        !passes(r#"{"exact": {"data.deleted_at": "null"}}"#, "patients", &p),
        "null never matches"
    );
    assert!(
        !passes(r#"{"prefix": {"data.nothing": ""}}"#, "patients", &p),
        "missing never matches"
    );
    let a = event(Op::Created, 42, assessment(json!(7)));
    assert!(passes(
        r#"{"exact": {"data.assessment.pain_score": "7"}}"#,
        "assessments",
        &a
    ));
    assert!(passes(
        r#"{"prefix": {"data.assessment.tool": "Pain"}}"#,
        "assessments",
        &a
    ));
    assert!(
        !passes(r#"{"exact": {"data.assessment": "7"}}"#, "assessments", &a),
        "objects never match"
    );
    assert!(!passes(
        r#"{"exact": {"data.patient.pain_score": "7"}}"#,
        "assessments",
        &a
    ));
    let raw = Event {
        data: r#"{"uuid":"a","assessment":{"pain_score":1.50,"ok":true}}"#.into(),
        ..a
    };
    assert!(passes(
        r#"{"exact": {"data.assessment.pain_score": "1.50", "data.assessment.ok": "true"}}"#,
        "assessments",
        &raw
    ));
    assert!(!passes(
        r#"{"exact": {"data.assessment.pain_score": "1.5"}}"#,
        "assessments",
        &raw
    ));
}

#[test]
fn all_any_not_and_top_level_lists_nest() {
    let deleted_f = event(Op::Deleted, 760, patient("s1", "F", true));
    let updated_m = event(Op::Updated, 761, patient("s2", "M", false));
    let f = r#"[{"prefix": {"data.site": "s"}},
                {"any": [{"suffix": {"type": ".deleted"}}, {"exact": {"data.gender": "M"}}]},
                {"not": {"exact": {"data.site": "s3"}}}]"#;
    assert!(passes(f, "patients", &deleted_f));
    assert!(passes(f, "patients", &updated_m));
    let s3 = event(Op::Deleted, 762, patient("s3", "F", true));
    assert!(!passes(f, "patients", &s3));
    let all = r#"{"all": [{"exact": {"data.gender": "F"}}, {"not": {"not": {"suffix": {"type": "deleted"}}}}]}"#;
    assert!(passes(all, "patients", &deleted_f));
    assert!(!passes(all, "patients", &updated_m));
    assert!(
        passes("[]", "patients", &updated_m),
        "an empty list passes everything"
    );
}

#[test]
fn faults_are_named_by_their_path() {
    let cases = [
        (
            r#"[{"any": [{"exact": {"type": "x"}}, {"regex": {"type": "x"}}]}]"#,
            r#"filters[0].any[1]: unknown dialect "regex""#,
        ),
        (
            r#"[{"exact": {"type": 3}}]"#,
            r#"filters[0].exact: value of "type" must be a string"#,
        ),
        (
            r#"{"any": []}"#,
            "filters.any: must hold at least one filter",
        ),
        (r#"{"all": {}}"#, "filters.all: must be an array of filters"),
        (
            r#"{"exact": {"type": "a"}, "not": {}}"#,
            "filters: a filter has exactly one dialect key",
        ),
        (r#"{}"#, "filters: empty filter"),
        (r#"[1]"#, "filters[0]: a filter must be an object"),
        (
            r#"{"exact": {}}"#,
            "filters.exact: must be an object of attribute names",
        ),
        (
            r#"{"not": {"prefix": {"colour": "x"}}}"#,
            r#"filters.not.prefix: unknown attribute "colour""#,
        ),
        (
            r#"{"exact": {"data..site": "x"}}"#,
            r#"filters.exact: "data..site" is not a data path"#,
        ),
        (
            r#"{"exact": {"data": "x"}}"#,
            r#"filters.exact: unknown attribute "data""#,
        ),
    ];
    for (filter, want) in cases {
        let got = error(filter);
        assert!(got.starts_with(want), "{filter}: {got}");
    }
}

fn project(fields: &[&str], record: &Value) -> Value {
    let p = Projection::new(fields, &FieldNames::default(), "fields").unwrap();
    serde_json::from_str(&p.project(&record.to_string())).unwrap()
}

#[test]
fn projection_keeps_chosen_fields_and_the_id_and_stamp() {
    let p = project(&["gender"], &patient("s1", "F", false));
    assert_eq!(p, json!({"uuid": "p1", "update_stamp": 760, "gender": "F"}));
    let a = project(&["assessment.pain_score", "missing"], &assessment(json!(7)));
    assert_eq!(
        a,
        json!({"uuid": "a1", "update_stamp": 42, "assessment": {"pain_score": 7}})
    );
    let whole = project(&["assessment", "assessment.tool"], &assessment(json!(7)));
    assert_eq!(
        whole["assessment"],
        json!({"pain_score": 7, "tool": "PainChek"})
    );
    let none = project(&["assessment.none", "patient.x"], &assessment(json!(7)));
    assert_eq!(
        none,
        json!({"uuid": "a1", "update_stamp": 42}),
        "empty parents are left out"
    );
    let names = FieldNames {
        id: "id".into(),
        stamp: "ts".into(),
        ..FieldNames::default()
    };
    let p = Projection::new(&["b"], &names, "fields").unwrap();
    assert_eq!(
        p.project(r#"{"id":1,"ts":2,"a":3,"b":4.50}"#),
        r#"{"id":1,"ts":2,"b":4.50}"#
    );
    assert_eq!(p.project("[1]"), "[1]");
}

#[test]
fn projection_faults_are_named_by_their_path() {
    let names = FieldNames::default();
    let e = Projection::new(&["a", "b..c"], &names, "fields").unwrap_err();
    assert!(
        e.to_string()
            .starts_with(r#"fields[1]: "b..c" is not a field path"#),
        "{e}"
    );
    let e = Projection::from_json(&json!(["a", 1]), &names, "fields").unwrap_err();
    assert_eq!(e.to_string(), "fields[1]: must be a string");
    let e = Projection::from_json(&json!("a"), &names, "fields").unwrap_err();
    assert_eq!(e.path, "fields");
    assert!(
        Projection::from_json(&json!([]), &names, "fields")
            .unwrap()
            .is_thin()
    );
}

#[test]
fn rendering_filters_projects_and_thins() {
    let src = source("patients");
    let e = event(Op::Updated, 760, patient("s1", "F", false));
    let names = FieldNames::default();
    let sel = |f: Option<&str>, fields: Option<&str>| from_query(f, fields, &names).unwrap();
    assert_eq!(sel(None, None).render(&src, &e).unwrap(), src.to_json(&e));
    assert_eq!(
        sel(Some(r#"{"exact":{"data.site":"s2"}}"#), None).render(&src, &e),
        None
    );
    let v: Value =
        serde_json::from_str(&sel(None, Some("gender")).render(&src, &e).unwrap()).unwrap();
    assert_eq!(
        v["data"],
        json!({"uuid": "p1", "update_stamp": 760, "gender": "F"})
    );
    assert_eq!(v["type"], "io.stamp-relay.patients.updated");
    let thin: Value = serde_json::from_str(&sel(None, Some("")).render(&src, &e).unwrap()).unwrap();
    assert!(
        thin.get("data").is_none() && thin.get("datacontenttype").is_none(),
        "{thin}"
    );
    assert_eq!(
        (thin["subject"].clone(), thin["updatestamp"].clone()),
        (json!("p1"), json!(760))
    );
}

/// With previous values the selection writes the record-with-previous
/// data and names its schema, as the webhook, replay and live paths share.
#[test]
fn writing_with_previous_values_wraps_the_record() {
    let src = source("patients");
    let mut e = event(Op::Updated, 760, patient("s1", "F", false));
    e.before = Some(patient("s1", "M", false).to_string());
    let mut out = Vec::new();
    let mut w = crate::cloudevents::Writer::new(&src);
    assert!(Selection::default().write(&mut w, &mut out, &e, true));
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["dataschema"], crate::previous::DATASCHEMA);
    assert_eq!(v["data"]["previous"], json!({"gender": "M"}));
    assert_eq!(v["data"]["record"]["gender"], "F");
    let mut only = Vec::new();
    let sel = from_query(
        Some(r#"{"exact":{"data.site":"s2"}}"#),
        None,
        &FieldNames::default(),
    );
    assert!(!sel.unwrap().write(&mut w, &mut only, &e, true));
    assert!(only.is_empty());
}

#[test]
fn query_faults_name_the_parameter_and_path() {
    let names = FieldNames::default();
    let e = from_query(Some(r#"[{"regex":{}}]"#), None, &names).unwrap_err();
    assert_eq!(e.path, "filter[0]");
    assert!(
        e.to_string()
            .starts_with(r#"filter[0]: unknown dialect "regex""#),
        "{e}"
    );
    let e = from_query(Some("{nope"), None, &names).unwrap_err();
    assert!(e.to_string().starts_with("filter: not JSON"), "{e}");
    let e = from_query(None, Some("a,,b"), &names).unwrap_err();
    assert_eq!(e.path, "fields[1]");
}

#[test]
fn a_document_selection_names_its_members() {
    let names = FieldNames::default();
    let filters =
        json!([{"any": [{"suffix": {"type": ".deleted"}}, {"exact": {"data.site": "s1"}}]}]);
    let fields = json!(["gender"]);
    let sel = Selection::from_json(Some(&filters), Some(&fields), &names).unwrap();
    let src = source("patients");
    let e = event(Op::Updated, 760, patient("s1", "F", false));
    assert!(sel.matches(&EventView::new(&src, &e)));
    let data = sel.project(&e.data).unwrap();
    let data: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(
        data,
        json!({"uuid": "p1", "update_stamp": 760, "gender": "F"})
    );
    let other = event(Op::Updated, 761, patient("s2", "F", false));
    assert!(!sel.matches(&EventView::new(&src, &other)));
    assert!(
        Selection::from_json(None, None, &names)
            .unwrap()
            .is_everything()
    );
    let bad = json!([{"exact": {"type": 1}}]);
    let e = Selection::from_json(Some(&bad), None, &names).unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"filters[0].exact: value of "type" must be a string"#
    );
    let e = Selection::from_json(None, Some(&json!([true])), &names).unwrap_err();
    assert_eq!(e.path, "fields[0]");
}
