//! Consumers and scoped access (docs/consumers.md): no route leaks across
//! consumers, and delivery follows each consumer's allow-list.

mod access;
mod consumer_delivery;
