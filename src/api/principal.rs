//! Who is calling: the [`Principal`] the auth layer (`auth.rs`) resolves
//! from the presented credential and attaches to every authenticated
//! request. Handlers take it as an extractor and ask it what the caller
//! may see: [`Principal::sees`] for a table, [`Principal::owns`] for a
//! subscription. What a principal may not see answers 404, never 403, so
//! ids and tables of others do not leak (docs/consumers.md).

use axum::{
    extract::FromRequestParts,
    http::{StatusCode, request::Parts},
};

use super::problem::Problem;
use crate::{consumer::Allow, subscription::Subscription, table::Table};

/// The caller of an authenticated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An `[[api.tokens]]` token of scope `admin`: everything.
    Admin { token: String },
    /// An `[[api.tokens]]` token of scope `read`, possibly limited to
    /// sources and tables (`sources`, `resources`).
    Read { token: String, allow: Allow },
    /// A consumer, through a token of scope `consumer`, a token issued by
    /// `POST /v1/consumers/{name}/tokens`, or a portal link: its own
    /// subscriptions and the tables of its allow-list.
    Consumer {
        name: String,
        allow: Allow,
        via: Via,
    },
}

/// The credential a request presented, kept beside its [`Principal`] so
/// a live stream can check it again while it runs (a revoked token or
/// portal link, a deleted consumer, a narrowed allow-list end it). Never
/// logged nor shown.
#[derive(Clone)]
pub struct Credential(pub std::sync::Arc<str>);

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(..)")
    }
}

/// How a consumer principal came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A token of the configuration or issued through the API.
    Token,
    /// A portal link (`/portal/#<token>`), valid until its expiry (unix s).
    PortalLink { expires_at: u64 },
}

/// What a route needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Any principal; tables filtered by [`Principal::sees`].
    Read,
    /// Admin or consumer: subscriptions filtered by [`Principal::owns`].
    Owner,
    /// Admin or a read token without limits: the status page, metrics.
    Operator,
    /// Admin only: sources, consumers.
    Admin,
}

impl Principal {
    /// When this principal's access ends (unix s): a portal link's expiry.
    /// A live stream it opened ends then too.
    pub fn expires_at(&self) -> Option<u64> {
        match self {
            Principal::Consumer {
                via: Via::PortalLink { expires_at },
                ..
            } => Some(*expires_at),
            _ => None,
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Principal::Admin { .. })
    }

    /// The consumer this principal acts as, if it is one.
    pub fn consumer(&self) -> Option<&str> {
        match self {
            Principal::Consumer { name, .. } => Some(name),
            _ => None,
        }
    }

    /// The allow-list of tables (everything for admin).
    pub fn allow(&self) -> Allow {
        match self {
            Principal::Admin { .. } => Allow::everything(),
            Principal::Read { allow, .. } | Principal::Consumer { allow, .. } => allow.clone(),
        }
    }

    /// Whether it may read table `t` (events, records, live, compat).
    pub fn sees(&self, t: &Table) -> bool {
        match self {
            Principal::Admin { .. } => true,
            Principal::Read { allow, .. } | Principal::Consumer { allow, .. } => allow.allows(t),
        }
    }

    /// Whether it may see and change subscription `s`.
    pub fn owns(&self, s: &Subscription) -> bool {
        match self {
            Principal::Admin { .. } => true,
            Principal::Read { .. } => false,
            Principal::Consumer { name, .. } => *name == s.consumer,
        }
    }

    /// Whether it may call a route that needs `need`.
    pub fn may(&self, need: Need) -> bool {
        match (need, self) {
            (_, Principal::Admin { .. }) | (Need::Read, _) => true,
            (Need::Owner, Principal::Consumer { .. }) => true,
            (Need::Operator, Principal::Read { allow, .. }) => allow.is_everything(),
            _ => false,
        }
    }

    /// The 404 for a table it may not see: the same as for no table.
    pub fn unseen(t: &Table) -> Problem {
        Problem::not_found(format!(
            "{t} is not a configured source/resource; see GET /v1/resources"
        ))
    }
}

/// Handlers behind the auth layer take the principal as an argument; a
/// route without the layer answers 401.
impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        parts.extensions.get::<Principal>().cloned().ok_or_else(|| {
            Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send Authorization: Bearer <token>",
            )
        })
    }
}
