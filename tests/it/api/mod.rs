//! The HTTP API as its clients meet it: the REST routes and their auth,
//! openapi.yaml and asyncapi.yaml true to the server, the compatible read API
//! and its OAuth route, filters and positions on replay, the event catalog,
//! live streams (SSE) with their fan-out and tail, and the portal, through
//! its API and in headless Chromium.

mod asyncapi;
mod catalog;
mod compat;
mod compat_auth;
mod fanout;
mod filters;
mod live;
mod openapi;
mod portal;
mod portal_browser;
mod positions;
mod rest;
mod tail;
