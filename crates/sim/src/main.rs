//! `formid-sim`: the long run of the deterministic simulation.
//!
//! ```text
//! cargo run --release -p formid-sim -- --seeds 10000 --sends-per-seed 100
//! ```
//!
//! `--subscribe-percent` (default 40) makes that share of the sends
//! subscribe messages; 0 is the legacy workload alone.
//!
//! Prints the figures (seeds, sends, faults injected by kind, messages by
//! final status, violations) and, for every failing seed, its violations and
//! the trace of its run; exits 1 when any seed failed.

use std::time::Instant;

use clap::Parser;
use formid_sim::run::sweep_with;

/// Runs the simulation over a range of seeds.
#[derive(Debug, Parser)]
#[command(
    name = "formid-sim",
    about = "Deterministic simulation of formid-gateway's send path"
)]
struct Args {
    /// How many seeds to run.
    #[arg(long, default_value_t = 1_000)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Sends per seed.
    #[arg(long, default_value_t = 100)]
    sends_per_seed: usize,
    /// Threads (each runs whole seeds); defaults to the machine's cores.
    #[arg(long)]
    threads: Option<usize>,
    /// Percent of each seed's sends that are subscribe messages (with the
    /// prompts, revocations and long-term templates that go with them); 0
    /// runs the legacy workload alone.
    #[arg(long, default_value_t = 40)]
    subscribe_percent: u32,
    /// Print the whole trace of each failing seed (otherwise its first 200 lines).
    #[arg(long)]
    full_trace: bool,
}

fn main() {
    let args = Args::parse();
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let started = Instant::now();
    let report = sweep_with(
        args.start,
        args.seeds,
        args.sends_per_seed,
        threads,
        args.subscribe_percent,
    );
    let elapsed = started.elapsed();
    for failure in &report.failures {
        println!("=== seed {} FAILED ===", failure.seed);
        for violation in &failure.violations {
            println!("  {violation}");
        }
        if let Some(story) = &failure.story {
            if args.full_trace {
                println!("{story}");
            } else {
                for line in story.lines().take(200) {
                    println!("{line}");
                }
            }
        }
        println!("replay: cargo run --release -p formid-sim -- --start {} --seeds 1 --sends-per-seed {} --subscribe-percent {} --full-trace", failure.seed, args.sends_per_seed, args.subscribe_percent);
    }
    print!("{}", report.figures());
    println!(
        "wall time {:.1} s on {threads} thread(s): {:.0} sends/s",
        elapsed.as_secs_f64(),
        report.sends as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    if !report.failures.is_empty() {
        let seeds: Vec<String> = report.failures.iter().map(|f| f.seed.to_string()).collect();
        println!("FAILING SEEDS: {}", seeds.join(", "));
        std::process::exit(1);
    }
}
