//! `/portal/`: the self-service portal, a static bundle compiled into the
//! binary (`assets/portal/`, no build step). The files hold no data and
//! need no token: the page reads the bearer token from the URL fragment
//! (never sent to the server), keeps it in the tab's sessionStorage, and
//! does everything through the documented JSON API (docs/portal.md).

use axum::{
    http::{HeaderValue, header},
    response::{IntoResponse, Redirect, Response},
};

const HTML: &str = include_str!("../../assets/portal/portal.html");
const JS: &str = include_str!("../../assets/portal/portal.js");
const CSS: &str = include_str!("../../assets/portal/portal.css");

/// Only the bundle's own script and style run; data comes only from this
/// origin's API; no page may frame the portal.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; \
     form-action 'self'";

fn file(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

pub async fn page() -> Response {
    file("text/html; charset=utf-8", HTML)
}

pub async fn script() -> Response {
    file("text/javascript; charset=utf-8", JS)
}

pub async fn style() -> Response {
    file("text/css; charset=utf-8", CSS)
}

/// `/portal` without the slash: the page's relative links need it.
pub async fn slash() -> Redirect {
    Redirect::permanent("/portal/")
}
