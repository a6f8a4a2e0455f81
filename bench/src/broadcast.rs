//! The broadcast runs: `N` users holding one subscribe grant each (and the
//! users the send runs left a grant), one broadcast to every holder, on a freshly started gateway (so its peak RSS
//! is the broadcast's). Recorded per size: total time from the POST to the
//! job's end, sends per second and its ratio to the best single-send rate
//! of the same sitting (subscribe sends, any client count), the time from
//! the POST to the first send, and the gateway's peak RSS.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};

use crate::load::Stats;
use crate::procs::Proc;
use crate::{figure, http, Bench, Record, SEND_APP};

/// The broadcasts of one latency: one run per size in `--broadcast`.
/// Returns the gateway the caller carries on with (a new process).
pub async fn measure_broadcasts(
    bench: &mut Bench,
    backend: &str,
    latency: u64,
    label: &str,
    mut gateway: Proc,
) -> anyhow::Result<Proc> {
    if bench.subscribe_template.is_none() || bench.args.broadcast.is_empty() {
        return Ok(gateway);
    }
    let single = bench
        .results
        .records
        .iter()
        .filter(|r| {
            r.backend == backend
                && r.upstream_latency_ms == latency
                && r.measure == "send"
                && r.channel() == "subscribe"
        })
        .map(|r| r.stats.rate)
        .fold(0.0, f64::max);
    for size in bench.args.broadcast.clone() {
        // The send runs' template: users they left a grant are recipients
        // too (counted in `recipients`).
        let template = bench.subscribe_template.clone().unwrap_or_default();
        seed_holders(bench, &template, size).await?;
        // A fresh process: its peak RSS is this broadcast's.
        gateway.stop();
        gateway = bench
            .start_gateway(
                &bench.database_url.clone(),
                &format!("{label}-broadcast-{size}"),
            )
            .await?;
        let run = run_one(bench, &template, size).await?;
        let kib = gateway.peak_rss_kib()?;
        let rate = run.recipients as f64 / run.total_s.max(1e-9);
        let note = format!(
            "{} recipients, total {:.1} s, first send after {} ms, {:.2}× single sends ({:.0}/s), peak RSS {:.1} MiB",
            run.recipients,
            run.total_s,
            run.first_send_ms,
            rate / single.max(1e-9),
            single,
            kib as f64 / 1024.0
        );
        bench.record(Record {
            stored: run.recipients as i64,
            note,
            ..figure(
                backend,
                "broadcast",
                latency,
                0,
                Stats {
                    rate,
                    p50_ms: run.first_send_ms as f64,
                    max_ms: kib as f64 / 1024.0,
                    units: run.sent,
                    window_s: run.total_s,
                    ..Stats::default()
                },
            )
        })?;
    }
    Ok(gateway)
}

struct BroadcastRun {
    recipients: u64,
    total_s: f64,
    first_send_ms: i64,
    sent: u64,
}

/// Posts the broadcast to every holder and polls it to its end.
async fn run_one(bench: &Bench, template: &str, size: u64) -> anyhow::Result<BroadcastRun> {
    let url = format!("{}/v1/apps/{SEND_APP}/broadcasts", bench.gateway_url());
    let body = json!({"template_id": template, "audience": "holders",
        "data": {"thing1": {"value": "restock"}, "character_string2": {"value": "SN1"}}});
    let created: Value = bench
        .http
        .post(&url)
        .bearer_auth(http::API_KEY)
        .json(&body)
        .send()
        .await?
        .json()
        .await?;
    let id = created["id"]
        .as_str()
        .with_context(|| format!("the broadcast answered {created}"))?
        .to_owned();
    let recipients = created["recipients"].as_u64().unwrap_or(0);
    anyhow::ensure!(
        recipients >= size,
        "the broadcast has {recipients} recipients, fewer than the {size} seeded"
    );
    // Once a second, as an operator's page would: the times measured are
    // the job's own, so the poll does not round them, and a progress read
    // (which counts the job's recipients) does not load the run.
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let progress: Value = bench
            .http
            .get(format!("{url}/{id}"))
            .bearer_auth(http::API_KEY)
            .send()
            .await?
            .json()
            .await?;
        if progress["finished_at"].is_string() {
            let at = |field: &str| {
                progress[field]
                    .as_str()
                    .and_then(|text| chrono::DateTime::parse_from_rfc3339(text).ok())
                    .map_or(0, |time| time.timestamp_millis())
            };
            return Ok(BroadcastRun {
                recipients,
                total_s: (at("finished_at") - at("created_at")) as f64 / 1000.0,
                first_send_ms: at("first_send_at") - at("created_at"),
                sent: progress["sent"].as_u64().unwrap_or(0),
            });
        }
    }
}

/// `size` users `bc{size}u{n}` holding one grant of `template` each: at the
/// fake and in the ledger.
async fn seed_holders(bench: &Bench, template: &str, size: u64) -> anyhow::Result<()> {
    let prefix = format!("bc{size}u");
    let seeding = Instant::now();
    let users: Vec<String> = (0..size).map(|n| format!("{prefix}{n}")).collect();
    http::grant_at_fake(
        &bench.http,
        &bench.fake_url(),
        SEND_APP,
        template,
        &users,
        1,
    )
    .await
    .context("granting at the fake")?;
    drop(users);
    crate::db::seed_grants(
        &bench.database_url,
        SEND_APP,
        template,
        &prefix,
        size as i64,
        1,
    )
    .await?;
    println!(
        "    seeded {size} holders in {:.1}s",
        seeding.elapsed().as_secs_f64()
    );
    Ok(())
}
