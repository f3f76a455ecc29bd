//! Webhooks from subscription to receiver: signatures and secret rotation,
//! retries on a clock the test moves and retries made due now, batches, the
//! receiver's pace, redrive of dead letters, delivery rules and the test
//! ping, subscriptions declared in the configuration, subscription filters,
//! TLS behind a private CA, and the receivers of docs/webhooks.md.

mod batches;
mod declared;
mod pace;
mod ping;
mod receivers;
mod redrive;
mod retries;
mod retry_now;
mod rules;
mod subscription_filters;
mod tls;
mod webhooks;
