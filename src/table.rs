//! The unit everything is keyed by: one resource of one upstream source.
//! Its own module, below the store and the subscription model that both
//! name it.

/// One table: a resource of a source, the unit of polling, leasing, streams
/// and delivery.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Table {
    pub source: String,
    pub resource: String,
}

impl Table {
    pub fn new(source: impl Into<String>, resource: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            resource: resource.into(),
        }
    }
}

/// The source name of the relay's own tables (`_relay/health`), which no
/// configured source may take.
pub const RELAY_SOURCE: &str = "_relay";

impl Table {
    /// One of the relay's own tables, which `["*"]` does not cover.
    pub fn is_internal(&self) -> bool {
        self.source == RELAY_SOURCE
    }

    /// The lease of subscription `sub`'s delivery on this table: a name of
    /// its own beside the table's poll lease.
    pub fn delivery_lease(&self, sub_id: &str) -> Table {
        Table::new(&self.source, format!("{}:sub:{sub_id}", self.resource))
    }
}

/// `source/resource`, as subscriptions and the API name a table.
impl std::str::FromStr for Table {
    type Err = String;
    fn from_str(s: &str) -> Result<Table, String> {
        match s.split_once('/') {
            Some((source, resource)) if !source.is_empty() && !resource.is_empty() => {
                Ok(Table::new(source, resource))
            }
            _ => Err(format!("{s:?} is not a \"source/resource\" name")),
        }
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.source, self.resource)
    }
}
