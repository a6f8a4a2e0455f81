//! Markdown tables of a results file, with each target met or missed.

use std::fmt::Write;

use crate::{Record, Results};

fn find(results: &Results, pick: impl Fn(&Record) -> bool) -> Option<&Record> {
    results.records.iter().rev().find(|record| pick(record))
}

/// A limit's rate with the connections it ran on, or a dash when it was not measured.
fn limit_cell(limit: Option<&Record>) -> String {
    limit.map_or("–".into(), |l| {
        format!("{:.0} ({})", l.stats.rate, l.clients)
    })
}

fn ratio(value: f64, limit: Option<f64>) -> String {
    match limit {
        Some(limit) if limit > 0.0 => format!("{:.2}", value / limit),
        _ => "–".into(),
    }
}

fn opt(value: Option<f64>) -> String {
    value.map_or("–".into(), |v| format!("{v:.0}"))
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

/// The bare claim comparable to a gateway run at `clients`: SQLite has one
/// writer; PostgreSQL is measured at the gateway's pool size at most.
fn bare_claim<'a>(results: &'a Results, backend: &str, clients: usize) -> Option<&'a Record> {
    let candidates: Vec<&Record> = results
        .records
        .iter()
        .filter(|r| r.backend == backend && r.measure == "bare_claim")
        .collect();
    candidates
        .iter()
        .filter(|r| r.clients <= clients)
        .max_by_key(|r| r.clients)
        .or_else(|| candidates.first())
        .copied()
}

/// The send channels of the results, legacy first.
fn channels(results: &Results) -> Vec<&str> {
    let mut seen: Vec<&str> = Vec::new();
    for record in results.records.iter().filter(|r| r.measure == "send") {
        if !seen.contains(&record.channel()) {
            seen.push(record.channel());
        }
    }
    seen.sort_unstable_by_key(|c| (*c != "template", *c));
    seen
}

/// The backend column of a target: the backend alone for legacy sends
/// (as in results files that predate subscribe messages), with the channel
/// for subscribe sends.
fn channel_label(backend: &str, channel: &str) -> String {
    if channel == "template" {
        backend.to_owned()
    } else {
        format!("{backend}, {channel}")
    }
}

/// Section 1b: each configuration's legacy and subscribe send rates in one
/// row, when both channels were measured.
fn side_by_side(out: &mut String, results: &Results) {
    let sends: Vec<&Record> = results
        .records
        .iter()
        .filter(|r| r.measure == "send")
        .collect();
    let pairs: Vec<(&Record, &Record)> = sends
        .iter()
        .filter(|r| r.channel() == "template")
        .filter_map(|legacy| {
            sends
                .iter()
                .find(|r| {
                    r.channel() == "subscribe"
                        && r.backend == legacy.backend
                        && r.upstream_latency_ms == legacy.upstream_latency_ms
                        && r.clients == legacy.clients
                })
                .map(|subscribe| (*legacy, *subscribe))
        })
        .collect();
    if pairs.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n### 1b. Legacy and subscribe sends side by side (same clients, same run)\n"
    );
    let _ = writeln!(
        out,
        "| backend | WeChat latency | clients | legacy sends/s | subscribe sends/s | subscribe / legacy | legacy p50 ms | subscribe p50 ms | legacy p99 ms | subscribe p99 ms |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    for (legacy, subscribe) in pairs {
        let _ = writeln!(
            out,
            "| {} | {} ms | {} | {:.0} | {:.0} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            legacy.backend,
            legacy.upstream_latency_ms,
            legacy.clients,
            legacy.stats.rate,
            subscribe.stats.rate,
            ratio(subscribe.stats.rate, Some(legacy.stats.rate)),
            legacy.stats.p50_ms,
            subscribe.stats.p50_ms,
            legacy.stats.p99_ms,
            subscribe.stats.p99_ms,
        );
    }
}

/// The whole report: every section's table and the targets.
pub fn markdown(results: &Results) -> String {
    let mut out = String::new();
    sends_section(&mut out, results);
    side_by_side(&mut out, results);
    collection_section(&mut out, results);
    growth_section(&mut out, results);
    memory_section(&mut out, results);
    broadcast_section(&mut out, results);
    limits_section(&mut out, results);
    targets_section(&mut out, results);
    out
}

/// The backends of the results, each once, in order of first appearance.
fn backends(results: &Results) -> Vec<String> {
    let mut seen = Vec::new();
    for record in &results.records {
        if !seen.contains(&record.backend) {
            seen.push(record.backend.clone());
        }
    }
    seen
}

/// Section 1: every send run against the fake WeChat hit directly and the
/// bare claim.
fn sends_section(out: &mut String, results: &Results) {
    let _ = writeln!(out, "### 1. Sends (`POST /v1/apps/{{appid}}/messages`)\n");
    let _ = writeln!(
        out,
        "| backend | WeChat latency | clients | channel | sends/s | p50 ms | p99 ms | fake direct/s | ratio to fake | bare claim/s (conns) | ratio to bare claim |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
    for record in results.records.iter().filter(|r| r.measure == "send") {
        // The fake hit directly on the same channel.
        let fake = find(results, |r| {
            r.measure == "fake_direct"
                && r.backend == record.backend
                && r.upstream_latency_ms == record.upstream_latency_ms
                && r.clients == record.clients
                && r.channel() == record.channel()
        })
        .map(|r| r.stats.rate);
        let claim = bare_claim(results, &record.backend, record.clients);
        let _ = writeln!(
            out,
            "| {} | {} ms | {} | {} | {:.0} | {:.2} | {:.2} | {} | {} | {} | {} |",
            record.backend,
            record.upstream_latency_ms,
            record.clients,
            record.channel(),
            record.stats.rate,
            record.stats.p50_ms,
            record.stats.p99_ms,
            opt(fake),
            ratio(record.stats.rate, fake),
            limit_cell(claim),
            ratio(record.stats.rate, claim.map(|c| c.stats.rate)),
        );
    }
}

/// Section 2: every collection run against the bare insert of its batch.
fn collection_section(out: &mut String, results: &Results) {
    let _ = writeln!(
        out,
        "\n### 2. Collection (`POST /v1/apps/{{appid}}/credentials`)\n"
    );
    let _ = writeln!(
        out,
        "| backend | batch | clients | credentials/s | p50 ms | p99 ms | bare insert/s (conns) | ratio |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for record in results.records.iter().filter(|r| r.measure == "collect") {
        let bare = find(results, |r| {
            r.measure == "bare_insert" && r.backend == record.backend && r.batch == record.batch
        });
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {} | {} |",
            record.backend,
            record.batch,
            record.clients,
            record.stats.rate,
            record.stats.p50_ms,
            record.stats.p99_ms,
            limit_cell(bare),
            ratio(record.stats.rate, bare.map(|b| b.stats.rate)),
        );
    }
}

/// Section 3: send latency as the stored credentials grow, against the
/// smallest ledger.
fn growth_section(out: &mut String, results: &Results) {
    let _ = writeln!(
        out,
        "\n### 3. Claim cost as the ledger grows (WeChat latency 0)\n"
    );
    let _ = writeln!(
        out,
        "| backend | stored credentials | clients | sends/s | p50 ms | p99 ms | p50 / p50 at smallest | p99 / p99 at smallest |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for record in results
        .records
        .iter()
        .filter(|r| r.measure == "growth_send")
    {
        let base = results
            .records
            .iter()
            .filter(|r| {
                r.measure == "growth_send"
                    && r.backend == record.backend
                    && r.clients == record.clients
            })
            .min_by_key(|r| r.stored);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {} | {} |",
            record.backend,
            record.stored,
            record.clients,
            record.stats.rate,
            record.stats.p50_ms,
            record.stats.p99_ms,
            ratio(record.stats.p50_ms, base.map(|b| b.stats.p50_ms)),
            ratio(record.stats.p99_ms, base.map(|b| b.stats.p99_ms)),
        );
    }
}

/// Section 4: the gateway's peak memory per run.
fn memory_section(out: &mut String, results: &Results) {
    let _ = writeln!(out, "\n### 4. Peak memory of the gateway (VmHWM)\n");
    let _ = writeln!(
        out,
        "| backend | WeChat latency | gateway process | VmHWM MB |"
    );
    let _ = writeln!(out, "|---|---|---|---|");
    for record in results.records.iter().filter(|r| r.measure == "rss") {
        let _ = writeln!(
            out,
            "| {} | {} ms | {} | {:.1} |",
            record.backend, record.upstream_latency_ms, record.note, record.stats.rate
        );
    }
}

/// The broadcast runs: one job to every holder, on a fresh gateway process.
fn broadcast_section(out: &mut String, results: &Results) {
    let runs: Vec<&Record> = results
        .records
        .iter()
        .filter(|r| r.measure == "broadcast")
        .collect();
    if runs.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n### Broadcasts (one job to every holder of a grant)\n"
    );
    let _ = writeln!(
        out,
        "| backend | WeChat latency | recipients | total s | sends/s | × single sends | first send ms | VmHWM MB |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for record in runs {
        let single = find(results, |r| {
            r.measure == "send"
                && r.channel() == "subscribe"
                && r.backend == record.backend
                && r.upstream_latency_ms == record.upstream_latency_ms
        })
        .map(|_| {
            results
                .records
                .iter()
                .filter(|r| {
                    r.measure == "send"
                        && r.channel() == "subscribe"
                        && r.backend == record.backend
                        && r.upstream_latency_ms == record.upstream_latency_ms
                })
                .map(|r| r.stats.rate)
                .fold(0.0, f64::max)
        });
        let _ = writeln!(
            out,
            "| {} | {} ms | {} | {:.1} | {:.0} | {} | {:.0} | {:.1} |",
            record.backend,
            record.upstream_latency_ms,
            record.stored,
            record.stats.window_s,
            record.stats.rate,
            ratio(record.stats.rate, single),
            record.stats.p50_ms,
            record.stats.max_ms,
        );
    }
}

/// Section 5: the limits the gateway runs are compared with.
fn limits_section(out: &mut String, results: &Results) {
    let _ = writeln!(out, "\n### 5. Limits measured in the same run\n");
    let _ = writeln!(
        out,
        "| backend | limit | channel | WeChat latency | clients/conns | batch | rate/s | p50 ms | p99 ms |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for record in results.records.iter().filter(|r| {
        matches!(
            r.measure.as_str(),
            "fake_direct" | "bare_claim" | "bare_insert"
        )
    }) {
        let channel = if record.measure == "fake_direct" {
            record.channel()
        } else {
            "–"
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} ms | {} | {} | {:.0} | {:.2} | {:.2} |",
            record.backend,
            record.measure,
            channel,
            record.upstream_latency_ms,
            record.clients,
            record.batch,
            record.stats.rate,
            record.stats.p50_ms,
            record.stats.p99_ms,
        );
    }
}

/// The targets: per backend its send, collection, growth and slow-WeChat
/// targets, then the memory target over every run.
fn targets_section(out: &mut String, results: &Results) {
    let _ = writeln!(out, "\n### Targets\n");
    let _ = writeln!(out, "| target | backend | figure | result |");
    let _ = writeln!(out, "|---|---|---|---|");
    for backend in &backends(results) {
        send_targets(out, results, backend);
        collection_target(out, results, backend);
        growth_targets(out, results, backend);
        slow_wechat_targets(out, results, backend);
    }
    memory_target(out, results);
}

/// Sends: the best gateway rate with an instant WeChat, against the bare
/// claim at the same database concurrency; per channel.
fn send_targets(out: &mut String, results: &Results, backend: &str) {
    for channel in channels(results) {
        let label = channel_label(backend, channel);
        if let Some(best) = results
            .records
            .iter()
            .filter(|r| {
                r.measure == "send"
                    && r.backend == backend
                    && r.upstream_latency_ms == 0
                    && r.channel() == channel
            })
            .max_by(|a, b| a.stats.rate.total_cmp(&b.stats.rate))
        {
            if let Some(claim) = bare_claim(results, backend, best.clients) {
                let r = best.stats.rate / claim.stats.rate;
                let _ = writeln!(
                    out,
                    "| sends/s ≥ 0.5 × bare claim | {label} | {:.0} sends/s ({} clients) / {:.0} claims/s ({} conns) = {r:.2} | {} |",
                    best.stats.rate, best.clients, claim.stats.rate, claim.clients, met(r >= 0.5)
                );
            }
        }
    }
}

/// Batched collection (500 credentials) against the bare insert.
fn collection_target(out: &mut String, results: &Results, backend: &str) {
    let collect = find(results, |r| {
        r.measure == "collect" && r.backend == backend && r.batch == 500
    });
    let bare = find(results, |r| {
        r.measure == "bare_insert" && r.backend == backend && r.batch == 500
    });
    if let (Some(collect), Some(bare)) = (collect, bare) {
        let r = collect.stats.rate / bare.stats.rate;
        let _ =
            writeln!(
            out,
            "| batched collection ≥ 0.8 × bare insert | {backend} | {:.0} / {:.0} = {r:.2} | {} |",
            collect.stats.rate, bare.stats.rate, met(r >= 0.8)
        );
    }
}

/// Per client count, the median send at the largest ledger against the
/// smallest.
fn growth_targets(out: &mut String, results: &Results, backend: &str) {
    let growth: Vec<&Record> = results
        .records
        .iter()
        .filter(|r| r.measure == "growth_send" && r.backend == backend)
        .collect();
    let mut clients: Vec<usize> = growth.iter().map(|r| r.clients).collect();
    clients.sort_unstable();
    clients.dedup();
    for c in clients {
        let rows: Vec<&&Record> = growth.iter().filter(|r| r.clients == c).collect();
        let small = rows.iter().min_by_key(|r| r.stored);
        let large = rows.iter().max_by_key(|r| r.stored);
        if let (Some(small), Some(large)) = (small, large) {
            if small.stored == large.stored {
                continue;
            }
            let r = large.stats.p50_ms / small.stats.p50_ms;
            let _ = writeln!(
                out,
                "| p50 at {} stored ≤ 1.5 × at {} | {backend}, {c} clients | {:.2} ms / {:.2} ms = {r:.2} (p99 {:.2} / {:.2}) | {} |",
                large.stored, small.stored, large.stats.p50_ms, small.stats.p50_ms,
                large.stats.p99_ms, small.stats.p99_ms, met(r <= 1.5)
            );
        }
    }
}

/// Per channel, the send rate of the most clients with a slow WeChat
/// (100 ms or more).
fn slow_wechat_targets(out: &mut String, results: &Results, backend: &str) {
    for channel in channels(results) {
        let label = channel_label(backend, channel);
        if let Some(slow) = results
            .records
            .iter()
            .filter(|r| {
                r.measure == "send"
                    && r.backend == backend
                    && r.upstream_latency_ms >= 100
                    && r.channel() == channel
            })
            .max_by_key(|r| r.clients)
        {
            let _ = writeln!(
                out,
                "| ≥ 2,000 sends/s at {} ms WeChat, {} clients | {label} | {:.0} sends/s | {} |",
                slow.upstream_latency_ms,
                slow.clients,
                slow.stats.rate,
                met(slow.stats.rate >= 2000.0)
            );
        }
    }
}

/// The peak memory of any run.
fn memory_target(out: &mut String, results: &Results) {
    if let Some(peak) = results
        .records
        .iter()
        .filter(|r| r.measure == "rss")
        .max_by(|a, b| a.stats.rate.total_cmp(&b.stats.rate))
    {
        let _ = writeln!(
            out,
            "| RSS < 64 MB | all | peak {:.1} MB ({}, {} ms, {}) | {} |",
            peak.stats.rate,
            peak.backend,
            peak.upstream_latency_ms,
            peak.note,
            met(peak.stats.rate < 64.0)
        );
    }
}
