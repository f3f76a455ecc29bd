//! The unit everything is keyed by: one resource of one upstream source.
//! Its own module, below the store and the subscription model that both
//! name it.

/// One poll target: a resource of a source.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub source: String,
    pub resource: String,
}

impl Target {
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

impl Target {
    /// One of the relay's own tables, which `["*"]` does not cover.
    pub fn is_internal(&self) -> bool {
        self.source == RELAY_SOURCE
    }

    /// The lease of subscription `sub`'s delivery on this target: a name of
    /// its own beside the target's poll lease.
    pub fn delivery_lease(&self, sub_id: &str) -> Target {
        Target::new(&self.source, format!("{}:sub:{sub_id}", self.resource))
    }
}

/// `source/resource`, as subscriptions and the API name a target.
impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Target, String> {
        match s.split_once('/') {
            Some((source, resource)) if !source.is_empty() && !resource.is_empty() => {
                Ok(Target::new(source, resource))
            }
            _ => Err(format!("{s:?} is not a \"source/resource\" name")),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.source, self.resource)
    }
}
