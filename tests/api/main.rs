//! The integration suite: every scenario runs through HTTP on SQLite and on
//! PostgreSQL, against the fake WeChat.

mod helpers;

mod access;
mod bad_input;
mod collect;
mod concurrency;
mod send;
mod reliability;
mod settle;
mod storage;
mod tokens;
