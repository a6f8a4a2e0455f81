//! The simulation with scheduled sends and quiet hours: some sends ask for
//! a later `send_at`, some are urgent, and the app keeps quiet hours inside
//! the run (held to their opening, or refused), through crashes, lost
//! answers, write failures and skewed clocks; after each seed no message
//! was delivered before its `send_at` or (unless urgent) inside quiet
//! hours, none is left scheduled, and every ledger invariant holds
//! (`formid_sim::timing`).

use formid_sim::run::run_seed_timing;

#[test]
fn timing_seeds_keep_every_promise() {
    let mut failures = Vec::new();
    let mut deliveries = 0;
    let mut outcomes = formid_sim::Counts::new();
    for seed in std::env::var("TIMING_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(0..160, |s: u64| s..s + 1)
    {
        let report = run_seed_timing(seed, 40, 30);
        deliveries += report.deliveries;
        formid_sim::add_counts(&mut outcomes, &report.outcomes);
        failures.extend(report.failure(150));
    }
    eprintln!("outcomes: {outcomes:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(
        deliveries > 0,
        "the seeds delivered nothing: the test would prove nothing"
    );
    for path in [
        "timing: answered scheduled (send_at)",
        "timing: scheduled sends delivered",
        "timing: held by quiet hours",
        "timing: refused inside quiet hours",
        "timing: urgent sends delivered inside quiet hours",
    ] {
        assert!(
            outcomes.get(path).copied().unwrap_or(0) > 0,
            "no seed took the path \"{path}\": the test would prove less than it says"
        );
    }
}

#[test]
fn a_timing_seed_is_a_function_of_its_seed() {
    let first = run_seed_timing(7, 30, 30);
    let again = run_seed_timing(7, 30, 30);
    assert_eq!(first.trace_hash, again.trace_hash);
    assert_eq!(first.outcomes, again.outcomes);
}
