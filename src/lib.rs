//! formid-gateway: a ledger of WeChat mini-program push credentials, the send
//! path that spends them, and the central access_token keeper.
//!
//! Where things live:
//! - [`api`]: the HTTP API (routes, auth, one file per endpoint group).
//! - [`ledger`]: the rules (credential kinds, validation, errcodes, the send path).
//! - [`storage`]: the storage trait and its SQLite and PostgreSQL implementations.
//! - [`wechat`]: the client for WeChat's server API; [`tokens`]: the access_token keeper.
//! - [`workers`]: background work (token refresh, sweeping).
//! - [`fake_wechat`]: a fake WeChat server for tests and the demo.
//! - [`config`], [`startup`], [`clock`], [`telemetry`], [`demo`]: wiring.

pub mod api;
pub mod clock;
pub mod config;
pub mod demo;
pub mod fake_wechat;
pub mod ledger;
pub mod startup;
pub mod storage;
pub mod telemetry;
pub mod tokens;
pub mod wechat;
pub mod workers;
