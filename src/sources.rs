//! Sources as data: upstreams added through `/v1/sources`, kept in the
//! store as documents of kind [`KIND`] beside the configuration file's
//! `[[sources]]`, checked by the very function `check-config` uses
//! ([`crate::config::check_source`]), with their credentials sealed
//! (`seal.rs`) and shown only as a fingerprint (docs/sources.md).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{AuthConfig, DeclaredSchema, Source, SourceConfig, check_source};

pub mod seal;
pub mod sync;

pub use seal::{Credentials, Sealed, SourceKey};

/// The document kind API-made sources are stored under.
pub const KIND: &str = "sources";

/// An API-made source as stored: its settings (whose `auth` names the
/// credential fields, not environment variables), the sealed credentials,
/// and whether it is paused.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSource {
    pub settings: SourceConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Sealed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    #[serde(default)]
    pub paused: bool,
    pub created_ms: u64,
    pub updated_ms: u64,
}

/// How the relay authenticates to an API-made source: the values
/// themselves, sealed before they are stored. `Debug` prints no value.
#[derive(Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ApiAuth {
    OAuth {
        client_id: String,
        client_secret: String,
        token_url: Option<String>,
    },
    Basic {
        username: String,
        password: String,
    },
    Bearer {
        token: String,
    },
    None,
}

impl std::fmt::Debug for ApiAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiAuth(***)")
    }
}

impl ApiAuth {
    /// The settings' `auth` (naming the credential fields) and the
    /// credentials to seal; an empty value is a problem naming its field.
    pub fn split(self) -> Result<(AuthConfig, Credentials), Invalid> {
        let (auth, pairs): (AuthConfig, Vec<(&str, String)>) = match self {
            ApiAuth::None => (AuthConfig::None, vec![]),
            ApiAuth::Bearer { token } => (
                AuthConfig::Bearer {
                    token_env: "token".into(),
                },
                vec![("token", token)],
            ),
            ApiAuth::Basic { username, password } => (
                AuthConfig::Basic {
                    username_env: "username".into(),
                    password_env: "password".into(),
                },
                vec![("username", username), ("password", password)],
            ),
            ApiAuth::OAuth {
                client_id,
                client_secret,
                token_url,
            } => (
                AuthConfig::OAuth {
                    client_id_env: "client_id".into(),
                    client_secret_env: "client_secret".into(),
                    token_url,
                },
                vec![("client_id", client_id), ("client_secret", client_secret)],
            ),
        };
        let mut creds = Credentials::default();
        for (field, value) in pairs {
            if value.is_empty() {
                return Err(Invalid::one(
                    format!("auth.{field}"),
                    format!("auth.{field}: must not be empty; give the credential's value"),
                ));
            }
            creds.0.insert(field.to_string(), value);
        }
        Ok((auth, creds))
    }
}

/// What is wrong with a source given through the API: the first field
/// named, and every problem (each `field: what to do`).
#[derive(Debug)]
pub struct Invalid {
    pub field: String,
    pub problems: Vec<String>,
}

impl Invalid {
    fn one(field: String, problem: String) -> Invalid {
        Invalid {
            field,
            problems: vec![problem],
        }
    }

    /// From `check_source`'s problems, which start with their field.
    fn from_problems(problems: Vec<String>) -> Invalid {
        let field = problems
            .first()
            .and_then(|p| p.split_once(':'))
            .map(|(f, _)| f.to_string())
            .unwrap_or_default();
        Invalid { field, problems }
    }
}

/// The settings of a source as the API takes them (the `[[sources]]`
/// keys, `auth` apart): unknown keys and wrong types name their field.
pub fn settings_from_json(body: Value) -> Result<SourceConfig, Invalid> {
    let settings: SourceConfig = serde_path_to_error::deserialize(body).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner().to_string();
        Invalid::one(field.clone(), format!("{field}: {inner}"))
    })?;
    if settings.tls_ca_file.is_some() {
        return Err(Invalid::one(
            "tls_ca_file".into(),
            "tls_ca_file: a file on the relay's host is not set through the API; declare a \
             source that needs a private CA in the configuration file"
                .into(),
        ));
    }
    if let Some((r, _)) = settings
        .schemas
        .iter()
        .find(|(_, s)| matches!(s, DeclaredSchema::File(_)))
    {
        return Err(Invalid::one(
            format!("schemas.{r}"),
            format!("schemas.{r}: give the JSON Schema inline (an object), not a file path"),
        ));
    }
    Ok(settings)
}

/// The settings as JSON without `auth`, the base a PATCH overlays.
pub fn settings_json(settings: &SourceConfig) -> Map<String, Value> {
    let mut v = match serde_json::to_value(settings) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    v.remove("auth");
    v
}

/// Checks `settings` with `creds` as `check-config` checks a
/// `[[sources]]` entry, into the source the relay polls.
pub fn check(settings: &SourceConfig, creds: &Credentials) -> Result<Source, Invalid> {
    let env = |field: &str| creds.0.get(field).cloned();
    check_source(settings, &env, &|k: &str| k.to_string()).map_err(Invalid::from_problems)
}

impl StoredSource {
    /// The source to poll: credentials opened with `key`, checked again
    /// (a stored document edited by hand, or from another build, is
    /// refused with its reason rather than polled half-understood).
    pub fn to_source(&self, key: Option<&SourceKey>) -> Result<Source, String> {
        let name = &self.settings.name;
        let creds = match (&self.credentials, key) {
            (None, _) => Credentials::default(),
            (Some(sealed), Some(key)) => key.open(name, sealed)?,
            (Some(_), None) => {
                return Err(format!(
                    "source {name:?} has credentials, and {} is not set; set the key they were \
                     sealed with",
                    seal::KEY_VAR
                ));
            }
        };
        check(&self.settings, &creds).map_err(|e| e.problems.join("; "))
    }

    /// The source as the API shows it: settings, `auth` with its kind and
    /// the credentials' fingerprint, never a value.
    pub fn view(&self) -> Value {
        let mut v = settings_json(&self.settings);
        v.insert(
            "auth".into(),
            auth_view(&self.settings.auth, self.fingerprint.as_deref()),
        );
        v.insert("paused".into(), self.paused.into());
        v.insert("managed_by".into(), Value::Null);
        v.insert("created_ms".into(), self.created_ms.into());
        v.insert("updated_ms".into(), self.updated_ms.into());
        Value::Object(v)
    }
}

/// A configuration file's source as the API shows it.
pub fn config_view(settings: &SourceConfig) -> Value {
    let mut v = settings_json(settings);
    v.insert("auth".into(), auth_view(&settings.auth, None));
    v.insert("paused".into(), false.into());
    v.insert("managed_by".into(), "config".into());
    Value::Object(v)
}

fn auth_view(auth: &AuthConfig, fingerprint: Option<&str>) -> Value {
    let kind = match auth {
        AuthConfig::OAuth { token_url, .. } => {
            return serde_json::json!({"kind": "oauth", "token_url": token_url, "fingerprint": fingerprint});
        }
        AuthConfig::Basic { .. } => "basic",
        AuthConfig::Bearer { .. } => "bearer",
        AuthConfig::None => "none",
    };
    serde_json::json!({ "kind": kind, "fingerprint": fingerprint })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> Value {
        serde_json::json!({"name": "acme", "base_url": "https://acme.example/api", "resources": ["patients"]})
    }

    #[test]
    fn checks_as_check_config_does_and_names_the_field() {
        let s = settings_from_json(body()).unwrap();
        assert_eq!(check(&s, &Credentials::default()).unwrap().name(), "acme");
        let mut bad = body();
        bad["base_url"] = "ftp://x".into();
        let e = check(&settings_from_json(bad).unwrap(), &Credentials::default()).unwrap_err();
        assert_eq!(e.field, "base_url", "{e:?}");
        let mut unknown = body();
        unknown["polling"] = 1.into();
        let e = settings_from_json(unknown).unwrap_err();
        assert!(e.problems[0].contains("polling"), "{e:?}");
        let mut file = body();
        file["tls_ca_file"] = "/etc/passwd".into();
        assert_eq!(settings_from_json(file).unwrap_err().field, "tls_ca_file");
    }

    #[test]
    fn credentials_resolve_through_their_field_names_and_never_show() {
        let auth: ApiAuth = serde_json::from_value(serde_json::json!(
            {"kind": "oauth", "client_id": "id-1", "client_secret": "s3cr3t-value"}
        ))
        .unwrap();
        assert!(!format!("{auth:?}").contains("s3cr3t"));
        let (auth, creds) = auth.split().unwrap();
        let mut s = settings_from_json(body()).unwrap();
        s.auth = auth;
        let source = check(&s, &creds).unwrap();
        assert!(matches!(source.auth, crate::config::Auth::OAuth { .. }));
        let key = SourceKey::new([3; 32]);
        let stored = StoredSource {
            credentials: Some(key.seal("acme", &creds)),
            fingerprint: Some(key.fingerprint("acme", &creds)),
            settings: s,
            paused: false,
            created_ms: 1,
            updated_ms: 1,
        };
        let json = serde_json::to_string(&stored).unwrap();
        assert!(!json.contains("s3cr3t") && !json.contains("id-1"), "{json}");
        let view = stored.view().to_string();
        assert!(
            !view.contains("s3cr3t") && view.contains("fingerprint"),
            "{view}"
        );
        assert!(stored.to_source(Some(&key)).is_ok());
        assert!(stored.to_source(None).unwrap_err().contains(seal::KEY_VAR));
        let empty: ApiAuth =
            serde_json::from_value(serde_json::json!({"kind": "bearer", "token": ""})).unwrap();
        assert_eq!(empty.split().unwrap_err().field, "auth.token");
    }
}
