//! The integration suite: every scenario runs through HTTP on SQLite and on
//! PostgreSQL, against the fake WeChat; real gateway processes (`cli`, `crash`);
//! property tests of the parsers.

mod helpers;
mod instances;
mod keys;

mod access;
mod bad_input;
mod broadcast_crash;
mod broadcasts;
mod cli;
mod collect;
mod concurrency;
mod connections;
mod console;
mod contract;
mod crash;
mod metrics;
mod packaging;
mod parsers;
mod process;
mod proxy;
mod proxy_sdk;
mod push;
mod reliability;
mod request_id;
mod secrets;
mod send;
mod send_rules;
mod sessions;
mod settle;
mod spans;
mod storage;
mod subscribe;
mod templates;
mod token_recovery;
mod tokens;
mod webhooks;
