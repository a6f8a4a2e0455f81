//! The integration suite: every scenario runs through HTTP on SQLite and on
//! PostgreSQL, against the fake WeChat.

mod helpers;
mod instances;

mod access;
mod bad_input;
mod collect;
mod concurrency;
mod reliability;
mod send;
mod settle;
mod storage;
mod tokens;
