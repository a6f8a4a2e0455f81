use super::*;
use crate::states::BroadcastState as B;
use crate::states::MessageStatus as M;
use crate::states::PauseReason as R;

const NOW: i64 = 1_800_000_000_000;

/// Checks every row, `name: actual => expected;`, and fails once, listing
/// every row whose actual value is not the expected one.
macro_rules! table {
    ($($name:literal: $actual:expr => $expected:expr;)*) => {{
        let mut wrong: Vec<String> = Vec::new();
        let mut rows = 0;
        $(
            rows += 1;
            let (actual, expected) = ($actual, $expected);
            if actual != expected {
                wrong.push(format!("{}\n     got {:?}\n    want {:?}", $name, actual, expected));
            }
        )*
        assert!(wrong.is_empty(), "{} of {} rows wrong:\n{}", wrong.len(), rows, wrong.join("\n"));
    }};
}

fn job(state: BroadcastState, pause_reason: Option<PauseReason>) -> JobStanding {
    JobStanding {
        state,
        pause_reason,
    }
}

#[test]
fn commands_by_state() {
    use Command::*;
    let refused = |state, verb| Err(CommandRefused { state, verb });
    table! {
        "pause a scheduled job": apply_command(job(B::Scheduled, None), Pause) => Ok(job(B::Paused, Some(R::Caller)));
        "pause a running job": apply_command(job(B::Running, None), Pause) => Ok(job(B::Paused, Some(R::Caller)));
        "pause a job the quota paused: the caller's hold": apply_command(job(B::Paused, Some(R::Quota)), Pause) => Ok(job(B::Paused, Some(R::Caller)));
        "pause twice changes nothing": apply_command(job(B::Paused, Some(R::Caller)), Pause) => Ok(job(B::Paused, Some(R::Caller)));
        "resume a caller's pause": apply_command(job(B::Paused, Some(R::Caller)), Resume) => Ok(job(B::Running, None));
        "resume a breaker's pause": apply_command(job(B::Paused, Some(R::Breaker)), Resume) => Ok(job(B::Running, None));
        "resume a running job changes nothing": apply_command(job(B::Running, None), Resume) => Ok(job(B::Running, None));
        "resume a scheduled job keeps its time": apply_command(job(B::Scheduled, None), Resume) => Ok(job(B::Scheduled, None));
        "cancel a scheduled job": apply_command(job(B::Scheduled, None), Cancel) => Ok(job(B::Cancelled, None));
        "cancel a running job": apply_command(job(B::Running, None), Cancel) => Ok(job(B::Cancelled, None));
        "cancel a paused job": apply_command(job(B::Paused, Some(R::Quota)), Cancel) => Ok(job(B::Cancelled, None));
        "a finished job takes no pause": apply_command(job(B::Finished, None), Pause) => refused(B::Finished, "paused");
        "a finished job takes no cancel": apply_command(job(B::Finished, None), Cancel) => refused(B::Finished, "cancelled");
        "a cancelled job takes no resume": apply_command(job(B::Cancelled, None), Resume) => refused(B::Cancelled, "resumed");
    }
}

#[test]
fn when_a_job_is_due() {
    table! {
        "running": due(job(B::Running, None), NOW + 1, None, NOW) => Due::Run;
        "scheduled, not yet": due(job(B::Scheduled, None), NOW + 1, None, NOW) => Due::No;
        "scheduled, its time came": due(job(B::Scheduled, None), NOW, None, NOW) => Due::Run;
        "quota pause, not over": due(job(B::Paused, Some(R::Quota)), NOW, Some(NOW + 1), NOW) => Due::No;
        "quota pause, over": due(job(B::Paused, Some(R::Quota)), NOW, Some(NOW), NOW) => Due::Run;
        "breaker pause, over": due(job(B::Paused, Some(R::Breaker)), NOW, Some(NOW - 5), NOW) => Due::Run;
        "caller's pause never runs out": due(job(B::Paused, Some(R::Caller)), NOW, Some(NOW - 5), NOW) => Due::No;
        "finished": due(job(B::Finished, None), NOW, None, NOW) => Due::No;
        "cancelled": due(job(B::Cancelled, None), NOW, None, NOW) => Due::No;
    }
}

#[test]
fn what_a_recipients_message_means() {
    use RecipientResult as Res;
    use RecipientStep::*;
    use SendFailure as F;
    let step =
        |status, failure: Option<F>, tries| recipient_step(status, failure.as_ref(), tries, 5, NOW);
    table! {
        "sent": step(M::Sent, None, 0) => Record(Res::Sent);
        "unknown: never again": step(M::Unknown, Some(F::OutcomeUnknown), 0) => Record(Res::Unknown);
        "pending: in flight, the ledger settles it": step(M::Pending, None, 0) => Recheck;
        "waiting for a token: the waiting worker sends it": step(M::Waiting, None, 0) => Recheck;
        "no credential": step(M::Failed, Some(F::NoCredential), 0) => Record(Res::NoCredential { errcode: None });
        "43101 revoked": step(M::Failed, Some(F::GrantsRevoked { errcode: 43101 }), 0) => Record(Res::NoCredential { errcode: Some(43101) });
        "45009: pause until midnight, not a try": step(M::Failed, Some(F::QuotaExhausted { until_ms: NOW + 9 }), 4) => Retry { hold: Some(Hold::Quota { until_ms: NOW + 9 }), counts: false };
        "45011: slow down, a try": step(M::Failed, Some(F::RateLimited), 0) => Retry { hold: Some(Hold::Slow), counts: true };
        "45011 on the last try: failed": step(M::Failed, Some(F::RateLimited), 4) => Record(Res::Failed { code: "rate_limited", errcode: Some(45011) });
        "breaker open: pause for its cooldown": step(M::Failed, Some(F::CircuitOpen { retry_after_ms: 10_000 }), 4) => Retry { hold: Some(Hold::Breaker { until_ms: NOW + 10_000 }), counts: false };
        "busy: again": step(M::Failed, Some(F::UpstreamBusy), 1) => Retry { hold: None, counts: true };
        "unreachable: again": step(M::Failed, Some(F::UpstreamUnreachable), 1) => Retry { hold: None, counts: true };
        "unreachable on the last try": step(M::Failed, Some(F::UpstreamUnreachable), 4) => Record(Res::Failed { code: "upstream_unreachable", errcode: None });
        "outcome pending: recheck": step(M::Failed, Some(F::OutcomePending), 0) => Recheck;
        "47003: failed with its errcode": step(M::Failed, Some(F::RequestInvalid { errcode: 47003 }), 0) => Record(Res::Failed { code: F::RequestInvalid { errcode: 47003 }.code(), errcode: Some(47003) });
        "an unexpected errcode": step(M::Failed, Some(F::Unexpected { errcode: 99 }), 0) => Record(Res::Failed { code: "upstream_error", errcode: Some(99) });
        "failed without a failure": step(M::Failed, None, 0) => Record(Res::Failed { code: "failed", errcode: None });
    }
}

#[test]
fn what_a_batch_does_to_its_job() {
    let quota = Hold::Quota {
        until_ms: NOW + 100,
    };
    let breaker = Hold::Breaker { until_ms: NOW + 10 };
    table! {
        "nothing held": job_effect(&[], 100, 100) => JobEffect::default();
        "45009 pauses until midnight": job_effect(&[quota], 100, 100) => JobEffect { pause: Some((R::Quota, NOW + 100)), rate: None };
        "the quota wins over the breaker": job_effect(&[breaker, quota], 100, 100) => JobEffect { pause: Some((R::Quota, NOW + 100)), rate: None };
        "the breaker pauses": job_effect(&[breaker], 100, 100) => JobEffect { pause: Some((R::Breaker, NOW + 10)), rate: None };
        "45011 halves the rate": job_effect(&[Hold::Slow, Hold::Slow], 100, 100) => JobEffect { pause: None, rate: Some(50) };
        "never below 1 a second": job_effect(&[Hold::Slow], 1, 100) => JobEffect { pause: None, rate: None };
        "a clean batch raises a slowed rate by a tenth": job_effect(&[], 50, 100) => JobEffect { pause: None, rate: Some(55) };
        "by 1 at least": job_effect(&[], 3, 100) => JobEffect { pause: None, rate: Some(4) };
        "never above the configured rate": job_effect(&[], 98, 100) => JobEffect { pause: None, rate: Some(100) };
    }
}

#[test]
fn pacing() {
    let input = |next_lease_at, rate, max_batch| PaceInput {
        now: NOW,
        next_lease_at,
        rate,
        max_batch,
    };
    table! {
        "not before the next lease time": pace(input(NOW + 5, 100, 64)) => Pace::Wait { until: NOW + 5 };
        "a second's worth, up to the batch": pace(input(NOW, 100, 64)) => Pace::Take { count: 64 };
        "a slow rate takes small batches": pace(input(NOW, 5, 64)) => Pace::Take { count: 5 };
        "1 at least": pace(input(NOW, 0, 64)) => Pace::Take { count: 1 };
        "the next lease after 50 at 100/s": pace_after(input(NOW, 100, 64), 50) => NOW + 500;
        "slightly behind: catches up from the slot": pace_after(input(NOW - 300, 100, 64), 50) => NOW + 200;
        "far behind: no more than a second's catch-up": pace_after(input(NOW - 60_000, 100, 64), 100) => NOW;
        "nothing leased: the time stays": pace_after(input(NOW, 100, 64), 0) => NOW;
    }
}

#[test]
fn message_ids_are_the_same_on_every_instance() {
    table! {
        "first try": message_id("b1", 7, 0) => "b1-7-0".to_owned();
        "a retry gets a new message": message_id("b1", 7, 1) => "b1-7-1".to_owned();
        "a single send's id": is_message_id("01a251b4-8a22-74ed-84d4-d867928b5625") => true;
        "a recipient's": is_message_id("01a251b4-8a22-74ed-84d4-d867928b5625-12-0") => true;
        "not a uuid": is_message_id("01a251b4-8a22-74ed-84d4-d867928b562z") => false;
        "no sends": is_message_id("01a251b4-8a22-74ed-84d4-d867928b5625-12") => false;
        "words": is_message_id("01a251b4-8a22-74ed-84d4-d867928b5625-x-0") => false;
    }
}

#[test]
fn progress_and_estimated_end() {
    table! {
        "not started": progress(0, 10, None, NOW) => Progress { rate: 0.0, estimated_end: None };
        "nothing done yet": progress(0, 10, Some(NOW - 1000), NOW) => Progress { rate: 0.0, estimated_end: None };
        "10 a second, 20 left": progress(10, 20, Some(NOW - 1000), NOW) => Progress { rate: 10.0, estimated_end: Some(NOW + 2000) };
        "all done": progress(10, 0, Some(NOW - 1000), NOW) => Progress { rate: 10.0, estimated_end: Some(NOW) };
    }
}

#[test]
fn a_recipients_request_takes_its_own_data_or_the_broadcasts() {
    let mut shared = Map::new();
    shared.insert("thing1".into(), serde_json::json!({"value": "all"}));
    let mut own = Map::new();
    own.insert("thing1".into(), serde_json::json!({"value": "mine"}));
    let spec = BroadcastSpec {
        template_id: "t".into(),
        page: Some("p".into()),
        data: Some(shared.clone()),
        emphasis_keyword: None,
        color: None,
        delivery: Delivery::AtMostOnce,
        channel: Some(Channel::Subscribe),
        miniprogram_state: None,
        lang: None,
    };
    let request = spec.request_for("u1", None);
    let with_own = spec.request_for("u2", Some(own.clone()));
    table! {
        "the user": request.touser.clone() => "u1".to_owned();
        "never waits": request.wait_seconds => None;
        "the broadcast's data": request.data.clone() => Some(shared);
        "its own data": with_own.data.clone() => Some(own);
        "the page": with_own.page.clone() => Some("p".to_owned());
    }
}
