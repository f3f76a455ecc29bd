//! Field projection: the record reduced to the fields a reader asked for,
//! nested paths keeping their nesting, the id and stamp fields always kept.
//! Values keep their exact bytes; an empty list makes thin events.

use serde_json::Value;

use super::{
    FilterError,
    json::{PathTree, for_each_entry, split_path},
};
use crate::config::FieldNames;

#[derive(Debug, Clone, PartialEq)]
pub struct Projection {
    tree: PathTree,
    /// No fields asked for: events carry no `data` at all.
    thin: bool,
}

impl Projection {
    /// A projection onto `fields` (dotted paths), keeping the source's id
    /// and stamp fields; errors are named `<root>[i]`.
    pub fn new<S: AsRef<str>>(
        fields: &[S],
        names: &FieldNames,
        root: &str,
    ) -> Result<Projection, FilterError> {
        let mut tree = PathTree::default();
        for (i, f) in fields.iter().enumerate() {
            let f = f.as_ref();
            let parts = split_path(f).ok_or_else(|| FilterError {
                path: format!("{root}[{i}]"),
                message: format!(
                    "{f:?} is not a field path; name a record field, nested fields joined by dots"
                ),
            })?;
            tree.insert(&parts);
        }
        let thin = fields.is_empty();
        if !thin {
            tree.insert(&[names.id.as_str()]);
            tree.insert(&[names.stamp.as_str()]);
        }
        Ok(Projection { tree, thin })
    }

    /// As [`Projection::new`] from a JSON array of strings.
    pub fn from_json(v: &Value, names: &FieldNames, root: &str) -> Result<Projection, FilterError> {
        let fault = |path: String, message: &str| FilterError {
            path,
            message: message.into(),
        };
        let items = v
            .as_array()
            .ok_or_else(|| fault(root.into(), "must be an array of field paths"))?;
        let fields = items
            .iter()
            .enumerate()
            .map(|(i, f)| {
                f.as_str()
                    .ok_or_else(|| fault(format!("{root}[{i}]"), "must be a string"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(&fields, names, root)
    }

    pub fn is_thin(&self) -> bool {
        self.thin
    }

    /// The record with only the chosen fields, in the record's order. A
    /// field the record lacks stays absent, as does an object none of whose
    /// chosen fields it holds; a record that is not an object is kept whole.
    pub fn project(&self, record: &str) -> String {
        match select(&self.tree, record) {
            Some((json, _)) => json,
            None => record.to_string(),
        }
    }
}

/// The object `json` cut down to `tree` and how many fields it kept;
/// `None` when `json` is not an object.
fn select(tree: &PathTree, json: &str) -> Option<(String, usize)> {
    let mut out = String::with_capacity(json.len().min(256));
    out.push('{');
    let mut kept = 0;
    let is_object = for_each_entry(json, |k, v| {
        let Some(node) = tree.child(&k) else { return };
        let nested;
        let piece = if node.end {
            v.get()
        } else {
            match select(node, v.get()) {
                Some((json, n)) if n > 0 => {
                    nested = json;
                    nested.as_str()
                }
                _ => return,
            }
        };
        if kept > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(&*k).expect("strings serialize"));
        out.push(':');
        out.push_str(piece);
        kept += 1;
    });
    out.push('}');
    is_object.then_some((out, kept))
}
