//! The simulation with a broadcast: 2–3 instances work one job through
//! crashes at any step, lost answers, write failures, 45009 mid-job and
//! skewed clocks; after each seed no recipient was notified twice, no
//! credential spent without a call, every recipient accounted for once
//! (`formid_sim::broadcast`'s invariants, with every ledger invariant).

use formid_sim::run::run_seed_broadcast;

#[test]
fn broadcast_seeds_keep_every_promise() {
    let mut failures = Vec::new();
    let mut deliveries = 0;
    let mut recipients_sent = 0;
    let mut outcomes = formid_sim::Counts::new();
    let mut faults = formid_sim::Counts::new();
    for seed in 0..32 {
        let report = run_seed_broadcast(seed, 30, 20, 4);
        deliveries += report.deliveries;
        recipients_sent += report
            .outcomes
            .get("broadcast recipients: sent")
            .copied()
            .unwrap_or(0);
        formid_sim::add_counts(&mut outcomes, &report.outcomes);
        formid_sim::add_counts(&mut faults, &report.faults);
        failures.extend(report.failure(120));
    }
    eprintln!("outcomes: {outcomes:?}\nfaults: {faults:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(
        deliveries > 0,
        "the seeds delivered nothing: the test would prove nothing"
    );
    assert!(
        recipients_sent > 0,
        "no broadcast recipient was sent to: the test would prove nothing"
    );
    assert!(
        faults.contains_key("send: errcode 45009 daily quota"),
        "no seed met 45009 mid-job: the test would prove less than it says"
    );
}

#[test]
fn a_broadcast_seed_is_a_function_of_its_seed() {
    let first = run_seed_broadcast(5, 20, 20, 3);
    let again = run_seed_broadcast(5, 20, 20, 3);
    assert_eq!(first.trace_hash, again.trace_hash);
}
