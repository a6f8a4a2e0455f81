//! formid-gateway: a ledger of WeChat mini-program push credentials, the send
//! path that spends them, and the central access_token keeper.
//!
//! Where things live:
//! - [`api`]: the HTTP API (routes, auth, one file per endpoint group).
//! - [`ledger`]: the rules (credential kinds, validation, errcodes), from `formid-core`.
//! - [`sending`]: the send path: a request checked against its template,
//!   credentials claimed, WeChat called, the answer settled.
//! - [`storage`]: the storage trait and its SQLite and PostgreSQL implementations.
//! - [`wechat`]: the client for WeChat's server API; [`tokens`]: the access_token keeper;
//!   [`templates`]: each app's template catalogue, kept from WeChat, and the
//!   wire calls of template management.
//! - [`broadcasts`]: one template message to many users, each through the send path.
//! - [`workers`]: background work (token refresh, sweeping); [`stats`]: the
//!   ledger in figures for operators (the console and the gauges).
//! - [`monitoring`]: the metrics, and `/metrics` on a listener of its own.
//! - [`config`], [`startup`], [`clock`], [`telemetry`]: wiring.
//!
//! The fake WeChat (`crates/fake-wechat`) and the demo (`crates/demo`) are
//! crates of their own: the production binary does not contain them.

pub mod api;
pub mod broadcasts;
pub mod cache;
pub mod clock;
pub mod config;
pub mod keys;
pub mod ledger;
pub mod monitoring;
pub mod proxy;
pub mod push;
pub mod sending;
pub mod sessions;
pub mod startup;
pub mod stats;
pub mod storage;
pub mod telemetry;
pub mod templates;
pub mod tokens;
pub mod webhooks;
pub mod wechat;
pub mod workers;
