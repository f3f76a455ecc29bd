//! The `[[subscriptions]]` entries checked into the model with the API's
//! own rules: every problem at once, each naming its key.

use super::Declared;
use crate::{
    config::{Config, ConfigError, ConsumerConfig, RawConfig, SourceConfig, SubscriptionConfig},
    consumer::Allow,
    store::Table,
    subscription::{self, Invalid, ManagedBy, Start, StartSpec, Subscription},
};

/// Every problem of the `[[subscriptions]]` entries that the API's rules
/// find (ids and secrets are checked with the rest of the file), each
/// naming its key: `subscriptions[1].url: ...`.
pub fn problems(raw: &RawConfig) -> Vec<String> {
    raw.subscriptions
        .iter()
        .enumerate()
        .filter_map(|(i, c)| check(i, c, &raw.sources, &raw.consumers).err())
        .flatten()
        .collect()
}

/// The subscriptions a validated configuration declares.
pub fn of(config: &Config) -> Result<Vec<Declared>, ConfigError> {
    let settings: Vec<SourceConfig> = config.sources.iter().map(|s| s.settings.clone()).collect();
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (i, decl) in config.subscriptions.iter().enumerate() {
        match check(i, &decl.settings, &settings, &config.consumers) {
            Ok(mut d) => {
                d.subscription.secret = subscription::SigningSecret::given(decl.secret.expose());
                out.push(d);
            }
            Err(p) => problems.extend(p),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(ConfigError { problems })
    }
}

/// One entry checked with the functions the API checks a request with.
pub(super) fn check(
    i: usize,
    c: &SubscriptionConfig,
    sources: &[SourceConfig],
    consumers: &[ConsumerConfig],
) -> Result<Declared, Vec<String>> {
    let known: Vec<Table> = sources
        .iter()
        .flat_map(|s| s.resources.iter().map(|r| Table::new(&s.name, r)))
        .collect();
    let mut p = Vec::new();
    let mut note = |e: Invalid| p.push(format!("subscriptions[{i}].{}: {}", e.field, e.message));
    for r in [
        subscription::validate_headers(&c.headers),
        subscription::validate_batch(c.batch_size.unwrap_or(1)),
        subscription::validate_in_flight(
            c.max_in_flight.unwrap_or(subscription::DEFAULT_IN_FLIGHT),
        ),
        subscription::validate_rate(c.rate_limit),
        subscription::validate_description(&c.description),
    ] {
        r.unwrap_or_else(&mut note);
    }
    let url = subscription::WebhookUrl::parse(&c.url).map_err(&mut note);
    let resources = subscription::parse_resources(&c.resources, &known).map_err(&mut note);
    let ops = subscription::parse_ops(&c.ops).map_err(&mut note);
    let fields =
        crate::filter::subscription_fields(c.filters.as_ref(), c.fields.as_ref()).map_err(|e| {
            note(Invalid {
                field: e.path,
                message: e.message,
            })
        });
    if let Ok(f) = &fields {
        subscription::validate_fields_alone(c.previous, f).unwrap_or_else(&mut note);
    }
    if let Ok(r) = &resources
        && let Err(e) = within_consumer(c, r, consumers)
    {
        note(e);
    }
    let tables = resources.as_ref().map(|r| r.of(&known)).unwrap_or_default();
    if c.previous {
        for t in tables.iter().filter(|t| !keeps_records(sources, t)) {
            note(Invalid {
                field: "previous".into(),
                message: format!(
                    "{t} does not keep records (keep_records = false), so events cannot carry previous values"
                ),
            });
        }
    }
    let start = start_of(c.start.as_ref(), &tables).map_err(&mut note);
    match (url, resources, ops, fields, start) {
        (Ok(url), Ok(resources), Ok(ops), Ok(fields), Ok(start)) if p.is_empty() => Ok(Declared {
            subscription: model(c, url, resources, ops, fields),
            start,
            from_oldest_kept: c.from_oldest_kept,
        }),
        _ => Err(p),
    }
}

/// The subscription an entry declares, its parts checked: no secret,
/// start points or times yet.
fn model(
    c: &SubscriptionConfig,
    url: subscription::WebhookUrl,
    resources: subscription::Coverage,
    ops: Vec<crate::events::Op>,
    fields: Option<Vec<String>>,
) -> Subscription {
    Subscription {
        id: c.id.clone(),
        url,
        resources,
        ops,
        start: Default::default(),
        headers: c.headers.clone(),
        batch_size: c.batch_size.unwrap_or(1),
        max_in_flight: c.max_in_flight.unwrap_or(subscription::DEFAULT_IN_FLIGHT),
        rate_limit: c.rate_limit,
        enabled: true,
        description: c.description.clone(),
        secret: subscription::SigningSecret::given(""),
        previous_secret: None,
        disabled_reason: None,
        created_ms: 0,
        updated_ms: 0,
        version: 0,
        previous: c.previous,
        filters: c.filters.clone(),
        fields,
        managed_by: Some(ManagedBy::Config),
        retry_requested_ms: None,
        consumer: c
            .consumer
            .clone()
            .unwrap_or_else(|| subscription::DEFAULT_CONSUMER.into()),
    }
}

/// The entry's consumer is `default` or declared, and its tables lie
/// within the consumer's lists (as the API checks a request).
fn within_consumer(
    c: &SubscriptionConfig,
    resources: &subscription::Coverage,
    consumers: &[ConsumerConfig],
) -> Result<(), Invalid> {
    let name = c
        .consumer
        .as_deref()
        .unwrap_or(subscription::DEFAULT_CONSUMER);
    let allow = match consumers.iter().find(|d| d.name == name) {
        Some(d) => Allow {
            sources: d.sources.clone(),
            resources: d.resources.clone(),
        },
        None if name == subscription::DEFAULT_CONSUMER => Allow::everything(),
        None => {
            return Err(Invalid {
                field: "consumer".into(),
                message: format!("{name:?} is not a [[consumers]] name (nor \"default\")"),
            });
        }
    };
    let outside = allow.outside(resources);
    if outside.is_empty() {
        return Ok(());
    }
    Err(Invalid {
        field: "resources".into(),
        message: format!(
            "{} outside consumer {name:?}'s sources and resources",
            outside.join(", ")
        ),
    })
}

fn keeps_records(sources: &[SourceConfig], t: &Table) -> bool {
    sources.iter().any(|s| s.name == t.source && s.keep_records)
}

fn start_of(spec: Option<&serde_json::Value>, tables: &[Table]) -> Result<Start, Invalid> {
    let Some(v) = spec else {
        return Ok(Start::Now);
    };
    let spec: StartSpec = serde_json::from_value(v.clone()).map_err(|_| Invalid {
        field: "start".into(),
        message: "must be \"now\", \"beginning\" or {\"source/resource\" = stamp, ...}".into(),
    })?;
    spec.parse("start", tables, true)
}
