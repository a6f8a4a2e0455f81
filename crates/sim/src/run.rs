//! The seeded scheduler: a plan drawn from the seed (instances, clock skews,
//! users and their credentials with true and claimed issue times, sends,
//! crashes, fault rates, the app's token mode and the moments another server
//! of the app retires its token), then its run against real gateway
//! instances, then quiescence and the invariants.
//!
//! Each instance is what `startup.rs` wires, minus HTTP: a [`TokenKeeper`],
//! a [`Sender`], a [`Recovery`], a [`WaitingSender`], a [`TokenRefresher`]
//! and a [`Sweeper`], with its own clock and breakers. A crash aborts every
//! task of the instance (its sends in flight and its workers) at a seeded
//! instant; a new instance then starts on the same ledger, and its recovery
//! resolves what the dead one left.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use formid_gateway::broadcasts::BroadcastWorker;
use formid_gateway::clock::SharedClock;
use formid_gateway::config::{AppSettings, TokenMode, TokenSettings};
use formid_gateway::ledger::collect::{parse_item, CollectContext};
use formid_gateway::ledger::kinds::CredentialKind;
use formid_gateway::ledger::states::{Channel, Decision, Delivery, MessageStatus};
use formid_gateway::ledger::subscriptions::prompt_plan;
use formid_gateway::sending::{SendRequest, SendSettings, Sender, SenderParts};
use formid_gateway::storage::{NewPrompt, PromptDecision, Storage};
use formid_gateway::templates::Catalogue;
use formid_gateway::tokens::TokenKeeper;
use formid_gateway::wechat::breaker::Breakers;
use formid_gateway::workers::{Recovery, ScheduledSender, Sweeper, TokenRefresher, WaitingSender};
use futures_util::future::BoxFuture;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::invariants::{check, AcceptTruth, LedgerView, Snapshot, Violation, WeChatSide};
use crate::invariants::{CapFacts, TokenFacts};
use crate::ledger_model::LedgerModel;
use crate::wechat_model::{
    Around, Fault, FaultRates, Invalidation, TrueCredential, WeChatModel, WeChatSetup,
    CREDENTIAL_LIFETIME_MS,
};
use crate::{add_counts, Counts, SimClock, TimeBase, Trace, EPOCH_MS};

/// The one app of every run.
pub const APPID: &str = "wxsimapp";
const TEMPLATE: &str = "tmpl-sim";
/// Calls again after a -1, per call (`SendSettings::busy_retries`).
const BUSY_RETRIES: u32 = 2;
/// Probes after a lost call, per credential (`SendSettings::probe_limit`).
const PROBE_LIMIT: u32 = 2;
const HOUR_MS: i64 = 3_600_000;

/// How time runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Paused tokio time, production-like durations: a run is a function of
    /// its seed.
    Simulated,
    /// Real time with compressed durations (leases of a second or two), for
    /// real databases, whose own timeouts cannot run under paused time.
    RealTime,
}

/// The durations and bounds of one run.
#[derive(Debug, Clone)]
pub struct Knobs {
    pub request_timeout_ms: u64,
    pub latency_ms: (u64, u64),
    pub call_budget_ms: i64,
    pub lease_ms: i64,
    pub max_concurrent_calls: usize,
    pub recovery_interval_ms: u64,
    pub waiting_poll_ms: u64,
    pub token_check_ms: u64,
    pub sweep_ms: u64,
    pub busy_backoff_ms: u64,
    pub breaker_cooldown_ms: u64,
    pub not_ready_retry_ms: i64,
    pub token: TokenSettings,
    pub token_expires_in: i64,
    /// How often quiescence looks at the ledger, and for how long at most.
    pub poll_ms: u64,
    pub horizon_ms: i64,
}

/// A credential WeChat issues, and how the frontend reports it.
#[derive(Debug, Clone)]
pub struct CredentialPlan {
    pub value: String,
    pub openid: String,
    pub kind: CredentialKind,
    /// True issue time (WeChat's clock), absolute ms.
    pub issued_at: i64,
    /// A payment syncs late: WeChat answers 41028 before this.
    pub usable_from: i64,
    /// What the frontend posts as `collected_at`; `None` leaves it out (the
    /// gateway then takes its own now).
    pub collected_at: Option<i64>,
    /// How `collected_at` relates to the truth.
    pub label: &'static str,
}

/// A frontend posting credentials through one instance.
#[derive(Debug, Clone)]
pub struct PostPlan {
    /// ms after the run starts.
    pub at_ms: i64,
    pub instance: usize,
    pub credentials: Vec<CredentialPlan>,
}

/// A business service's send.
#[derive(Debug, Clone)]
pub struct SendPlan {
    pub at_ms: i64,
    pub instance: usize,
    pub id: String,
    pub touser: String,
    pub wait_seconds: Option<u64>,
    pub at_least_once: bool,
    /// A subscribe template (the subscribe workload); `None` sends the
    /// legacy template message.
    pub subscribe: Option<String>,
    /// The time the send asks to be sent at (absolute ms), if later.
    pub send_at: Option<i64>,
    /// Sent even inside quiet hours.
    pub urgent: bool,
}

/// A subscribe template of the run: its id and whether it is long-term
/// (type 3) rather than one-time (type 2).
#[derive(Debug, Clone)]
pub struct TemplatePlan {
    pub id: String,
    pub long_term: bool,
}

/// One post of a prompt result by the frontend.
#[derive(Debug, Clone)]
pub struct PromptPost {
    /// ms after the previous post (or after the prompt).
    pub delay_ms: i64,
    /// The instance it reaches (its clock).
    pub instance: usize,
}

/// A user answering `wx.requestSubscribeMessage`: WeChat counts the accepts
/// at once; the frontend posts the result to the ledger later, maybe more
/// than once (the same request_id), maybe never.
#[derive(Debug, Clone)]
pub struct PromptPlan {
    pub at_ms: i64,
    pub openid: String,
    pub request_id: String,
    /// (template, accepted) — one-time templates only, or one long-term one
    /// (WeChat refuses to mix them in one prompt).
    pub decisions: Vec<(String, bool)>,
    /// Tried in order until one is answered; `repost` posts once more after
    /// an answer (a retry whose first answer the frontend lost). Empty: the
    /// result never reaches the gateway.
    pub posts: Vec<PromptPost>,
    pub repost: bool,
}

/// The user turning a template off in WeChat's settings.
#[derive(Debug, Clone)]
pub struct RevocationPlan {
    pub at_ms: i64,
    pub openid: String,
    pub template_id: String,
}

/// The subscribe workload of a run.
#[derive(Debug, Clone, Default)]
pub struct SubscribePlan {
    pub templates: Vec<TemplatePlan>,
    pub prompts: Vec<PromptPlan>,
    pub revocations: Vec<RevocationPlan>,
}

/// An instance's crash, and its restart.
#[derive(Debug, Clone)]
pub struct CrashPlan {
    pub at_ms: i64,
    pub slot: usize,
    pub restart_after_ms: i64,
}

/// Another server of the app retiring its token: at `at_ms`, or, with
/// `around`, armed then to strike around the gateway's next fetch.
#[derive(Debug, Clone)]
pub struct InvalidationPlan {
    pub at_ms: i64,
    pub how: Invalidation,
    pub around: Option<Around>,
}

/// Everything a seed decides.
#[derive(Debug, Clone)]
pub struct Plan {
    pub seed: u64,
    pub profile: Profile,
    pub knobs: Knobs,
    pub instances: usize,
    pub skews_ms: Vec<i64>,
    pub posts: Vec<PostPlan>,
    pub sends: Vec<SendPlan>,
    pub crashes: Vec<CrashPlan>,
    pub rates: FaultRates,
    /// Per-mille of ledger writes that fail (in-memory ledger only).
    pub write_failures: u32,
    /// Subscribe templates, prompts and revocations (empty: the legacy workload).
    pub subscribe: SubscribePlan,
    /// The endpoint that issues the app's tokens.
    pub token_mode: TokenMode,
    /// Another server of the app retiring its token.
    pub invalidations: Vec<InvalidationPlan>,
    /// The app's per-user send cap (`limit`, `window_ms`), if any.
    pub send_cap: Option<(u32, i64)>,
    /// A broadcast worked by every instance (`broadcast`), if any.
    pub broadcast: Option<crate::broadcast::BroadcastPlan>,
    /// Scheduled sends and quiet hours (`timing`), if any.
    pub timing: Option<crate::timing::TimingPlan>,
}

/// The per-user send cap of `seed`'s plan: on half the seeds, 1 to 3 sends
/// in a window of 2 to 10 s. Drawn from a stream of its own, so the rest
/// of every plan is the same whether or not it draws a cap.
fn send_cap_plan(seed: u64) -> Option<(u32, i64)> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5e4d_ca95_0000_0011);
    rng.gen_bool(0.5)
        .then(|| (rng.gen_range(1..=3), rng.gen_range(2_000..=10_000)))
}

fn pick<T: Copy>(rng: &mut StdRng, choices: &[T]) -> T {
    choices[rng.gen_range(0..choices.len())]
}

impl Plan {
    /// The plan of `seed` with `sends` sends.
    pub fn new(seed: u64, sends: usize, profile: Profile) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let real = profile == Profile::RealTime;
        let knobs = Knobs::draw(&mut rng, real);
        let instances = rng.gen_range(2..=3);
        let skews_ms = draw_skews(&mut rng, real, instances);
        let spacing_ms: i64 = if real {
            rng.gen_range(20..=80)
        } else {
            rng.gen_range(100..=600)
        };
        let window_ms = spacing_ms * sends as i64;
        let users: Vec<String> = (0..rng.gen_range(3..=8)).map(|n| format!("u{n}")).collect();
        let mut next_credential = 0;
        let mut initial = initial_credentials(&mut rng, &mut next_credential, &users, window_ms);
        twilight(seed, &mut initial, window_ms);
        let mut posts = vec![PostPlan {
            at_ms: 0,
            instance: 0,
            credentials: initial,
        }];
        let draws = Draws {
            real,
            instances,
            users: &users,
            window_ms,
        };
        posts.extend(mid_run_posts(&mut rng, &mut next_credential, &draws, sends));
        posts.sort_by_key(|post| post.at_ms);
        let sends = draw_sends(&mut rng, &draws, sends);
        let crashes = draw_crashes(&mut rng, &draws);
        let rates = draw_fault_rates(&mut rng);
        let write_failures = pick(&mut rng, &[0, 0, 2, 5, 10]);
        let (token_mode, invalidations) = token_plan(seed, real, window_ms);
        Self {
            seed,
            profile,
            knobs,
            instances,
            skews_ms,
            posts,
            sends,
            crashes,
            rates,
            write_failures,
            subscribe: SubscribePlan::default(),
            token_mode,
            invalidations,
            send_cap: send_cap_plan(seed),
            broadcast: None,
            timing: None,
        }
    }

    /// The same plan with some sends scheduled for later and some urgent,
    /// and (on most seeds) quiet hours inside the run, held or refused
    /// (`timing::draw`). Drawn from a stream of its own.
    pub fn with_timing(mut self) -> Self {
        let window_ms = self.sends.last().map_or(1_000, |s| s.at_ms).max(1_000);
        let real = self.profile == Profile::RealTime;
        self.timing = Some(crate::timing::draw(
            self.seed,
            &mut self.sends,
            window_ms,
            real,
        ));
        self
    }

    /// The same plan with a broadcast to its users and `extra` users who
    /// hold nothing, created mid-run; a quarter of the seeds also meet
    /// WeChat's daily quota (45009), which pauses the job until midnight
    /// China time. Drawn from a stream of its own.
    pub fn with_broadcast(mut self, extra: usize) -> Self {
        let mut users: Vec<String> = self
            .posts
            .iter()
            .flat_map(|p| p.credentials.iter().map(|c| c.openid.clone()))
            .collect();
        users.extend(self.sends.iter().map(|s| s.touser.clone()));
        users.sort();
        users.dedup();
        let window_ms = self.sends.last().map_or(1_000, |s| s.at_ms).max(1_000);
        let plan = crate::broadcast::draw(
            self.seed,
            &users,
            extra,
            window_ms,
            self.instances,
            TEMPLATE,
        );
        // A quarter of the seeds meet WeChat's daily quota mid-job (per
        // mille of sends), which pauses the job until midnight China time.
        if self.seed.is_multiple_of(4) {
            self.rates.send.insert(Fault::DailyQuota, 40);
        }
        self.broadcast = Some(plan);
        self
    }

    /// The same plan with `percent` % of its sends made subscribe messages,
    /// and the prompts, revocations and templates that go with them. Drawn
    /// from a stream of its own: the legacy part of the plan (users,
    /// credentials, send times, crashes, fault rates) stays as it was.
    pub fn with_subscribe(mut self, percent: u32) -> Self {
        if percent == 0 {
            return self;
        }
        let mut rng = StdRng::seed_from_u64(self.seed ^ 0x5355_4253_4352_4942);
        let real = self.profile == Profile::RealTime;
        let templates = subscribe_templates();
        let window_ms = self.sends.last().map_or(1_000, |s| s.at_ms).max(1_000);
        let mut users: Vec<String> = self.sends.iter().map(|s| s.touser.clone()).collect();
        users.sort();
        users.dedup();
        let share = f64::from(percent.min(100)) / 100.0;
        let subscribe_sends =
            mark_subscribe_sends(&mut rng, &mut self.sends, &templates, share, real);
        let draws = Draws {
            real,
            instances: self.instances,
            users: &users,
            window_ms,
        };
        // Some accepts before the run (posted at its start), then more
        // during it: about one prompt per subscribe send.
        let count = subscribe_sends + users.len();
        let mut prompts: Vec<PromptPlan> = (0..count)
            .map(|n| draw_prompt(&mut rng, &draws, n))
            .collect();
        prompts.sort_by_key(|p| p.at_ms);
        let revocations = (0..pick(&mut rng, &[0, 0, 1, 2, 4]))
            .map(|_| RevocationPlan {
                at_ms: rng.gen_range(0..=window_ms),
                openid: users[rng.gen_range(0..users.len())].clone(),
                template_id: templates[rng.gen_range(0..templates.len())].id.clone(),
            })
            .collect();
        // A fifth of the seeds meet WeChat's daily quota now and then.
        let quota = pick(&mut rng, &[0, 0, 0, 0, 1]);
        self.rates.send.insert(Fault::DailyQuota, quota);
        self.subscribe = SubscribePlan {
            templates,
            prompts,
            revocations,
        };
        self
    }
}

/// The subscribe templates of every subscribe run.
fn subscribe_templates() -> Vec<TemplatePlan> {
    [
        ("sub-once-a", false),
        ("sub-once-b", false),
        ("sub-long", true),
    ]
    .into_iter()
    .map(|(id, long_term)| TemplatePlan {
        id: id.into(),
        long_term,
    })
    .collect()
}

/// Makes a `share` of `sends` subscribe messages of a drawn template, some
/// of them waiting for the user's next accept; how many it made.
fn mark_subscribe_sends(
    rng: &mut StdRng,
    sends: &mut [SendPlan],
    templates: &[TemplatePlan],
    share: f64,
    real: bool,
) -> usize {
    let mut subscribe_sends = 0;
    for send in sends {
        if rng.gen_bool(share) {
            subscribe_sends += 1;
            let template = &templates[rng.gen_range(0..templates.len())];
            send.subscribe = Some(template.id.clone());
            // Waiting for the user's next accept is the subscribe idiom.
            send.wait_seconds = rng.gen_bool(0.3).then(|| {
                if real {
                    rng.gen_range(1..=2)
                } else {
                    rng.gen_range(5..=90)
                }
            });
        }
    }
    subscribe_sends
}

/// Prompt `n`: the first one per user at the run's start, the rest at a
/// drawn moment for a drawn user.
fn draw_prompt(rng: &mut StdRng, draws: &Draws, n: usize) -> PromptPlan {
    let users = draws.users;
    let at_ms = if n < users.len() {
        0
    } else {
        rng.gen_range(0..=draws.window_ms)
    };
    let openid = if n < users.len() {
        users[n].clone()
    } else {
        users[rng.gen_range(0..users.len())].clone()
    };
    let decisions = draw_decisions(rng);
    let posts = draw_prompt_posts(rng, draws);
    PromptPlan {
        at_ms,
        openid,
        request_id: format!("req{n:04}"),
        decisions,
        posts,
        repost: rng.gen_bool(0.1),
    }
}

/// The user's answers to a prompt: the long-term template alone, or one or
/// two one-time templates.
fn draw_decisions(rng: &mut StdRng) -> Vec<(String, bool)> {
    if rng.gen_bool(0.25) {
        return vec![("sub-long".to_owned(), rng.gen_bool(0.8))];
    }
    let mut once = vec![("sub-once-a".to_owned(), rng.gen_bool(0.85))];
    if rng.gen_bool(0.5) {
        once.push(("sub-once-b".to_owned(), rng.gen_bool(0.85)));
    }
    if rng.gen_bool(0.3) {
        once.reverse();
        once.truncate(1);
    }
    once
}

/// The frontend's posts of a prompt's result (none for a few prompts): up
/// to three, the first of them sometimes late.
fn draw_prompt_posts(rng: &mut StdRng, draws: &Draws) -> Vec<PromptPost> {
    let mut posts = Vec::new();
    if rng.gen_bool(0.05) {
        return posts;
    }
    for attempt in 0..rng.gen_range(1..=3) {
        let delay_ms = if attempt == 0 && rng.gen_bool(0.15) {
            // The phone posts late (backgrounded, offline).
            if draws.real {
                rng.gen_range(500..=3_000)
            } else {
                rng.gen_range(5_000..=60_000)
            }
        } else if draws.real {
            rng.gen_range(0..=100)
        } else {
            rng.gen_range(0..=2_000)
        };
        posts.push(PromptPost {
            delay_ms,
            instance: rng.gen_range(0..draws.instances),
        });
    }
    posts
}

/// The settings of a run that depend only on its profile, not on its seed.
struct Timings {
    waiting_poll_ms: u64,
    token_check_ms: u64,
    sweep_ms: u64,
    busy_backoff_ms: u64,
    breaker_cooldown_ms: u64,
    not_ready_retry_ms: i64,
    token_lease_ms: u64,
    token_wait_ms: u64,
    token_cache_ms: u64,
    token_fetch_refill_ms: u64,
    token_check_reuse_ms: u64,
    token_send_retry_ms: u64,
    poll_ms: u64,
    horizon_ms: i64,
}

/// [`Timings`] of [`Profile::RealTime`].
const REAL_TIMINGS: Timings = Timings {
    waiting_poll_ms: 100,
    token_check_ms: 1_000,
    sweep_ms: 1_000,
    busy_backoff_ms: 20,
    breaker_cooldown_ms: 500,
    not_ready_retry_ms: 300,
    token_lease_ms: 1_000,
    token_wait_ms: 2_000,
    token_cache_ms: 100,
    token_fetch_refill_ms: 2_000,
    token_check_reuse_ms: 1_000,
    token_send_retry_ms: 500,
    poll_ms: 200,
    horizon_ms: 30_000,
};

/// [`Timings`] of [`Profile::Simulated`].
const SIMULATED_TIMINGS: Timings = Timings {
    waiting_poll_ms: 500,
    token_check_ms: 30_000,
    sweep_ms: 60_000,
    busy_backoff_ms: 200,
    breaker_cooldown_ms: 10_000,
    not_ready_retry_ms: 5_000,
    token_lease_ms: 30_000,
    token_wait_ms: 15_000,
    token_cache_ms: 1_000,
    token_fetch_refill_ms: 120_000,
    token_check_reuse_ms: 10_000,
    token_send_retry_ms: 5_000,
    poll_ms: 1_000,
    horizon_ms: 2 * HOUR_MS,
};

impl Knobs {
    /// The knobs of a run: the profile's [`Timings`], and timeouts,
    /// latencies, leases, concurrency and token lifetime drawn from `rng`.
    fn draw(rng: &mut StdRng, real: bool) -> Self {
        let fixed = if real {
            &REAL_TIMINGS
        } else {
            &SIMULATED_TIMINGS
        };
        let request_timeout_ms = if real {
            rng.gen_range(200..=400)
        } else {
            rng.gen_range(1_000..=5_000)
        };
        let latency_ms = if real {
            (1, rng.gen_range(2..=20))
        } else {
            (5, rng.gen_range(10..=200))
        };
        let call_budget_ms = request_timeout_ms as i64 + if real { 100 } else { 1_000 };
        // Short leases: a hang and a backoff or two eat most of one.
        let lease_ms = call_budget_ms + rng.gen_range(call_budget_ms / 4..=2 * call_budget_ms);
        let max_concurrent_calls = rng.gen_range(1..=4);
        let recovery_interval_ms = if real {
            rng.gen_range(200..=500)
        } else {
            rng.gen_range(1_000..=5_000)
        };
        let token_expires_in = if real {
            7_200
        } else {
            pick(rng, &[7_200, 1_200, 400])
        };
        Knobs {
            request_timeout_ms,
            latency_ms,
            call_budget_ms,
            lease_ms,
            max_concurrent_calls,
            recovery_interval_ms,
            waiting_poll_ms: fixed.waiting_poll_ms,
            token_check_ms: fixed.token_check_ms,
            sweep_ms: fixed.sweep_ms,
            busy_backoff_ms: fixed.busy_backoff_ms,
            breaker_cooldown_ms: fixed.breaker_cooldown_ms,
            not_ready_retry_ms: fixed.not_ready_retry_ms,
            token: TokenSettings {
                refresh_ahead: Duration::from_secs(900),
                check_interval: Duration::from_millis(fixed.token_check_ms),
                lease: Duration::from_millis(fixed.token_lease_ms),
                wait: Duration::from_millis(fixed.token_wait_ms),
                cache: Duration::from_millis(fixed.token_cache_ms),
                fetch_burst: 5,
                fetch_refill: Duration::from_millis(fixed.token_fetch_refill_ms),
                check_reuse: Duration::from_millis(fixed.token_check_reuse_ms),
                send_retry: Duration::from_millis(fixed.token_send_retry_ms),
                force_refreshes_per_day: 0,
            },
            token_expires_in,
            poll_ms: fixed.poll_ms,
            horizon_ms: fixed.horizon_ms,
        }
    }
}

/// What the legacy plan's draws after the users depend on.
struct Draws<'a> {
    real: bool,
    instances: usize,
    users: &'a [String],
    /// The span of the sends, ms.
    window_ms: i64,
}

/// Each instance's clock skew, up to a drawn bound.
fn draw_skews(rng: &mut StdRng, real: bool, instances: usize) -> Vec<i64> {
    let max_skew: i64 = if real {
        pick(rng, &[0, 20, 100])
    } else {
        pick(rng, &[0, 200, 2_000, 15_000])
    };
    (0..instances)
        .map(|_| {
            if max_skew == 0 {
                0
            } else {
                rng.gen_range(-max_skew..=max_skew)
            }
        })
        .collect()
}

/// What the users already hold when the run starts.
fn initial_credentials(
    rng: &mut StdRng,
    next_credential: &mut usize,
    users: &[String],
    window_ms: i64,
) -> Vec<CredentialPlan> {
    let mut initial = Vec::new();
    for user in users {
        for _ in 0..rng.gen_range(1..=4) {
            initial.push(credential_plan(
                rng,
                next_credential,
                user,
                EPOCH_MS,
                true,
                window_ms,
            ));
        }
    }
    initial
}

/// A quarter of the seeds are "twilight" runs: what the users hold dies at
/// WeChat while the sends go on, and the frontend posted it late without
/// `collected_at` (or from a fast phone), so the ledger believes it has
/// days left. Drawn from a stream of its own, so that the rest of the plan
/// is the same as without it.
fn twilight(seed: u64, initial: &mut [CredentialPlan], window_ms: i64) {
    let mut twilight = StdRng::seed_from_u64(seed ^ 0x5457_494c_4947_4854);
    if !twilight.gen_bool(0.25) {
        return;
    }
    for credential in initial {
        let dies_at = EPOCH_MS + twilight.gen_range(0..=window_ms + 5_000);
        credential.issued_at = dies_at - CREDENTIAL_LIFETIME_MS;
        credential.usable_from = credential.issued_at;
        if twilight.gen_bool(0.8) {
            credential.collected_at = None;
            credential.label = "missing";
        } else {
            credential.collected_at =
                Some(credential.issued_at + twilight.gen_range(1_000..=50_000));
            credential.label = "fast phone";
        }
    }
}

/// Users posting credentials mid-run, some of them buffered for hours.
fn mid_run_posts(
    rng: &mut StdRng,
    next_credential: &mut usize,
    draws: &Draws,
    sends: usize,
) -> Vec<PostPlan> {
    let users = draws.users;
    (0..(sends / 2).max(1))
        .map(|_| {
            let at_ms = rng.gen_range(0..=draws.window_ms);
            let user = users[rng.gen_range(0..users.len())].clone();
            let credentials = (0..rng.gen_range(1..=2))
                .map(|_| {
                    credential_plan(
                        rng,
                        next_credential,
                        &user,
                        EPOCH_MS + at_ms,
                        false,
                        draws.window_ms,
                    )
                })
                .collect();
            PostPlan {
                at_ms,
                instance: rng.gen_range(0..draws.instances),
                credentials,
            }
        })
        .collect()
}

/// The business services' sends, in time order, named `m0000` on.
fn draw_sends(rng: &mut StdRng, draws: &Draws, count: usize) -> Vec<SendPlan> {
    let users = draws.users;
    let mut sends: Vec<SendPlan> = (0..count)
        .map(|_| {
            let wait_seconds = rng.gen_bool(0.15).then(|| {
                if draws.real {
                    rng.gen_range(1..=2)
                } else {
                    rng.gen_range(5..=90)
                }
            });
            SendPlan {
                at_ms: rng.gen_range(0..=draws.window_ms),
                instance: rng.gen_range(0..draws.instances),
                id: String::new(),
                touser: users[rng.gen_range(0..users.len())].clone(),
                wait_seconds,
                at_least_once: rng.gen_bool(0.05),
                subscribe: None,
                send_at: None,
                urgent: false,
            }
        })
        .collect();
    sends.sort_by_key(|send| send.at_ms);
    for (n, send) in sends.iter_mut().enumerate() {
        send.id = format!("m{n:04}");
    }
    sends
}

/// Up to three crashes during the send window.
fn draw_crashes(rng: &mut StdRng, draws: &Draws) -> Vec<CrashPlan> {
    (0..rng.gen_range(0..=3))
        .map(|_| CrashPlan {
            at_ms: rng.gen_range(0..=draws.window_ms),
            slot: rng.gen_range(0..draws.instances),
            restart_after_ms: if draws.real {
                rng.gen_range(50..=300)
            } else {
                rng.gen_range(100..=5_000)
            },
        })
        .collect()
}

/// WeChat's fault rates, per mille: per send fault, and of token fetches.
fn draw_fault_rates(rng: &mut StdRng) -> FaultRates {
    let mut rates = FaultRates::default();
    for fault in Fault::ALL {
        rates.send.insert(fault, pick(rng, &[0, 5, 10, 20, 40]));
    }
    rates.token_lost_before = pick(rng, &[0, 20, 50]);
    rates.token_lost_after = pick(rng, &[0, 20, 50]);
    rates.token_busy = pick(rng, &[0, 20, 50]);
    rates
}

/// The app's token mode (half the seeds each) and a few moments at which
/// another server of the app retires its token: at a moment of the send
/// window, or armed then to strike during the gateway's next fetch, right
/// after it, or inside the overlap a fetch leaves. Drawn from a stream of
/// its own, so that the rest of the plan is the same as without it.
fn token_plan(seed: u64, real: bool, window_ms: i64) -> (TokenMode, Vec<InvalidationPlan>) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x544f_4b45_4e53);
    let token_mode = if rng.gen_bool(0.5) {
        TokenMode::StableToken
    } else {
        TokenMode::Token
    };
    let scale = if real { 10 } else { 1 };
    let invalidations = (0..rng.gen_range(1..=4))
        .map(|_| {
            let how = match token_mode {
                TokenMode::StableToken => Invalidation::ForceRefresh,
                TokenMode::Token if rng.gen_bool(0.75) => Invalidation::TwoFetches,
                TokenMode::Token => Invalidation::SecretReset,
            };
            let around = match rng.gen_range(0..4) {
                0 => None,
                1 => Some(Around::During),
                2 => Some(Around::After {
                    delay_ms: rng.gen_range(0..=2_000) / scale,
                }),
                _ => Some(Around::InOverlap {
                    delay_ms: rng.gen_range(1_000..=30_000) / scale,
                }),
            };
            // Half of the armed ones from the start: they meet the first fetch.
            let at_ms = if around.is_some() && rng.gen_bool(0.5) {
                0
            } else {
                rng.gen_range(0..=window_ms)
            };
            InvalidationPlan { at_ms, how, around }
        })
        .collect();
    (token_mode, invalidations)
}

/// A credential for `user`, posted at `post_at` (absolute ms).
fn credential_plan(
    rng: &mut StdRng,
    next: &mut usize,
    user: &str,
    post_at: i64,
    initial: bool,
    window_ms: i64,
) -> CredentialPlan {
    let kind = if rng.gen_bool(0.6) {
        CredentialKind::FormId
    } else {
        CredentialKind::PrepayId
    };
    let value = match kind {
        CredentialKind::PrepayId => format!("p{:04}", *next),
        // Only the two legacy kinds are drawn here.
        _ => format!("f{:04}", *next),
    };
    *next += 1;
    // How long before its post WeChat issued it.
    let age = if initial {
        if rng.gen_bool(0.15) {
            // Dies at WeChat during the run, or a little after.
            CREDENTIAL_LIFETIME_MS - rng.gen_range(0..=window_ms + 10 * 60_000)
        } else {
            rng.gen_range(0..=CREDENTIAL_LIFETIME_MS - HOUR_MS)
        }
    } else if rng.gen_bool(0.2) {
        // A post buffered on the phone for hours.
        rng.gen_range(HOUR_MS..=30 * HOUR_MS)
    } else {
        rng.gen_range(0..=5_000)
    };
    let issued_at = post_at - age;
    let usable_from = match kind {
        CredentialKind::PrepayId => issued_at + rng.gen_range(0..=8_000),
        _ => issued_at,
    };
    let roll = rng.gen_range(0..100);
    let (collected_at, label) = if roll < 55 {
        (Some(issued_at), "accurate")
    } else if roll < 75 {
        (None, "missing")
    } else if roll < 88 {
        (
            Some(issued_at + rng.gen_range(1_000..=50_000)),
            "fast phone",
        )
    } else {
        (
            Some(issued_at - rng.gen_range(60_000..=3 * HOUR_MS)),
            "slow phone",
        )
    };
    CredentialPlan {
        value,
        openid: user.to_owned(),
        kind,
        issued_at,
        usable_from,
        collected_at,
        label,
    }
}

/// Connects one instance to the ledger (the in-memory model hands out
/// itself; a real database a new pool, as a new process would open).
pub type Connect =
    Arc<dyn Fn() -> BoxFuture<'static, anyhow::Result<Arc<dyn Storage>>> + Send + Sync>;

/// The ledger a run uses.
#[derive(Clone)]
pub struct Backend {
    pub connect: Connect,
    pub view: Arc<dyn LedgerView>,
    /// The in-memory model, whose write failures stop at quiescence.
    pub model: Option<Arc<LedgerModel>>,
}

impl Backend {
    /// The in-memory ledger of `seed`.
    pub fn in_memory(seed: u64, write_failures: u32) -> Self {
        Self::in_memory_with(seed, write_failures, &[])
    }

    /// The in-memory ledger of `seed`, its catalogue holding `templates`.
    pub fn in_memory_with(seed: u64, write_failures: u32, templates: &[TemplatePlan]) -> Self {
        let model = Arc::new(LedgerModel::new(seed, write_failures));
        for template in templates {
            model.add_template(APPID, &template.id, Channel::Subscribe, template.long_term);
        }
        let shared = model.clone();
        Self {
            connect: Arc::new(move || {
                let storage: Arc<dyn Storage> = shared.clone();
                Box::pin(async move { Ok(storage) })
            }),
            view: model.clone(),
            model: Some(model),
        }
    }
}

/// What one run did and found.
#[derive(Debug, Clone, Default)]
pub struct SeedReport {
    pub seed: u64,
    pub sends: u64,
    pub deliveries: u64,
    /// Faults injected, by kind (WeChat, ledger, crashes, credentials).
    pub faults: Counts,
    /// Messages by final status.
    pub outcomes: Counts,
    /// Attempts by outcome.
    pub attempts: Counts,
    pub violations: Vec<String>,
    pub trace_hash: u64,
    /// The trace, rendered when a violation was found.
    pub story: Option<String>,
    /// Simulated time the run took, ms.
    pub simulated_ms: i64,
}

impl SeedReport {
    /// The seed's violations and the first `lines` lines of its story, or
    /// `None` when it kept every promise.
    pub fn failure(&self, lines: usize) -> Option<String> {
        if self.violations.is_empty() {
            return None;
        }
        let story: Vec<&str> = self
            .story
            .as_deref()
            .unwrap_or_default()
            .lines()
            .take(lines)
            .collect();
        Some(format!(
            "seed {}: {:?}\n{}",
            self.seed,
            self.violations,
            story.join("\n")
        ))
    }
}

/// One gateway process.
struct Instance {
    name: String,
    storage: Arc<dyn Storage>,
    clock: SimClock,
    sender: Sender,
    tasks: Vec<JoinHandle<()>>,
    sends: Vec<JoinHandle<()>>,
}

/// What every instance shares.
struct World {
    plan: Plan,
    base: TimeBase,
    backend: Backend,
    wechat: Arc<WeChatModel>,
    trace: Arc<Trace>,
    apps: Arc<BTreeMap<String, AppSettings>>,
}

impl World {
    async fn start(&self, slot: usize, generation: u32) -> anyhow::Result<Instance> {
        let knobs = &self.plan.knobs;
        let name = format!("gw{slot}.{generation}");
        let storage = self.connect_storage().await?;
        let clock = SimClock {
            base: self.base,
            skew_ms: self.plan.skews_ms[slot],
        };
        let shared_clock: SharedClock = Arc::new(clock);
        let (sender, tokens) = self.sender(&name, &storage, &shared_clock);
        let lease = Duration::from_millis(knobs.lease_ms as u64);
        let safety_margin = Duration::from_secs(60);
        let recovery = Recovery::new(
            storage.clone(),
            sender.clone(),
            shared_clock.clone(),
            lease,
            safety_margin,
        );
        let waiting =
            WaitingSender::new(storage.clone(), sender.clone(), shared_clock.clone(), lease);
        let refresher = TokenRefresher::new(tokens);
        let sweeper = Sweeper::new(
            storage.clone(),
            shared_clock,
            Duration::from_secs(7 * 86_400),
            Duration::from_secs(30 * 86_400),
        );
        self.trace
            .record(&name, format!("started (clock skew {} ms)", clock.skew_ms));
        let mut tasks = spawn_workers(knobs, recovery, waiting, refresher, sweeper);
        if self.plan.timing.is_some() {
            let scheduled =
                ScheduledSender::new(storage.clone(), sender.clone(), Arc::new(clock), lease);
            tasks.push(tokio::spawn(worker(
                Duration::from_millis(knobs.waiting_poll_ms),
                move || {
                    let scheduled = scheduled.clone();
                    async move { scheduled.run_once().await.map(drop) }
                },
            )));
        }
        if let Some(plan) = &self.plan.broadcast {
            let worker = BroadcastWorker::new(
                storage.clone(),
                sender.clone(),
                Arc::new(clock),
                crate::broadcast::settings(plan, knobs.lease_ms),
            );
            tasks.push(crate::broadcast::spawn_worker(
                worker,
                self.trace.clone(),
                name.clone(),
            ));
        }
        Ok(Instance {
            name,
            storage,
            clock,
            sender,
            tasks,
            sends: Vec::new(),
        })
    }

    /// The instance's connection to the ledger, with the app ensured in it;
    /// a process whose start fails is started again by its supervisor.
    async fn connect_storage(&self) -> anyhow::Result<Arc<dyn Storage>> {
        let storage = (self.backend.connect)().await?;
        let mut tries = 0;
        while let Err(error) = storage.ensure_app(APPID).await {
            tries += 1;
            if tries == 10 {
                return Err(error);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(storage)
    }

    /// The instance's send path and the token keeper it calls WeChat with.
    fn sender(
        &self,
        name: &str,
        storage: &Arc<dyn Storage>,
        shared_clock: &SharedClock,
    ) -> (Sender, TokenKeeper) {
        let knobs = &self.plan.knobs;
        let wechat = self.wechat.handle(name);
        let tokens = TokenKeeper::new(
            storage.clone(),
            wechat.clone(),
            self.apps.clone(),
            shared_clock.clone(),
            name.to_owned(),
            knobs.token.clone(),
        );
        let catalogue = Catalogue::new(
            storage.clone(),
            tokens.clone(),
            wechat.clone(),
            shared_clock.clone(),
        );
        let parts = SenderParts {
            storage: storage.clone(),
            tokens: tokens.clone(),
            wechat,
            clock: shared_clock.clone(),
            catalogue,
            apps: self.apps.clone(),
            breakers: Arc::new(Breakers::new(
                shared_clock.clone(),
                5,
                Duration::from_millis(knobs.breaker_cooldown_ms),
            )),
        };
        (Sender::new(parts, send_settings(knobs)), tokens)
    }
}

/// The workers, as `Application::run_until_stopped` runs them (without its
/// `select!`, whose branch order is random).
fn spawn_workers(
    knobs: &Knobs,
    recovery: Recovery,
    waiting: WaitingSender,
    refresher: TokenRefresher,
    sweeper: Sweeper,
) -> Vec<JoinHandle<()>> {
    let every = |interval_ms: u64| Duration::from_millis(interval_ms);
    vec![
        tokio::spawn(worker(every(knobs.recovery_interval_ms), move || {
            let recovery = recovery.clone();
            async move { recovery.run_once().await.map(drop) }
        })),
        tokio::spawn(worker(every(knobs.waiting_poll_ms), move || {
            let waiting = waiting.clone();
            async move { waiting.run_once().await.map(drop) }
        })),
        tokio::spawn(worker(every(knobs.token_check_ms), move || {
            let refresher = refresher.clone();
            async move { refresher.run_once().await.map(drop) }
        })),
        tokio::spawn(worker(every(knobs.sweep_ms), move || {
            let sweeper = sweeper.clone();
            async move { sweeper.run_once().await.map(drop) }
        })),
    ]
}

/// Runs `step` every `interval`, forever (until aborted); a failed step is
/// tried again next time, as `workers::run_every` does.
async fn worker<F, Fut>(interval: Duration, mut step: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    loop {
        let _ = step().await;
        tokio::time::sleep(interval).await;
    }
}

/// Runs a seed on the in-memory ledger under paused time: a pure function
/// of `(seed, sends)`.
pub fn run_seed(seed: u64, sends: usize) -> SeedReport {
    run_simulated(|| Plan::new(seed, sends, Profile::Simulated))
}

/// [`run_seed`] with `subscribe_percent` % of the sends subscribe messages
/// (0: exactly [`run_seed`]).
pub fn run_seed_with(seed: u64, sends: usize, subscribe_percent: u32) -> SeedReport {
    run_simulated(|| Plan::new(seed, sends, Profile::Simulated).with_subscribe(subscribe_percent))
}

/// [`run_seed_with`] with scheduled sends, urgent sends and quiet hours
/// (`Plan::with_timing`).
pub fn run_seed_timing(seed: u64, sends: usize, subscribe_percent: u32) -> SeedReport {
    run_simulated(|| {
        Plan::new(seed, sends, Profile::Simulated)
            .with_subscribe(subscribe_percent)
            .with_timing()
    })
}

/// [`run_seed_with`] with a broadcast to the plan's users and `extra`
/// users who hold nothing (`Plan::with_broadcast`).
pub fn run_seed_broadcast(
    seed: u64,
    sends: usize,
    subscribe_percent: u32,
    extra: usize,
) -> SeedReport {
    run_simulated(|| {
        Plan::new(seed, sends, Profile::Simulated)
            .with_subscribe(subscribe_percent)
            .with_broadcast(extra)
    })
}

/// Runs the plan `draw` makes on the in-memory ledger (its catalogue
/// holding the plan's subscribe templates), on a current-thread runtime
/// whose time is paused: a pure function of the plan.
fn run_simulated(draw: impl FnOnce() -> Plan) -> SeedReport {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(async {
        let plan = draw();
        let backend =
            Backend::in_memory_with(plan.seed, plan.write_failures, &plan.subscribe.templates);
        run_plan(plan, backend).await
    })
}

/// What happens, when, in the driver's order.
enum Action {
    Post(usize),
    Send(usize),
    Crash(usize),
    Restart(usize),
    Prompt(usize),
    Revoke(usize),
    Invalidate(usize),
    Broadcast,
}

/// Runs a plan against a ledger, quiesces, and checks the invariants.
pub async fn run_plan(plan: Plan, backend: Backend) -> SeedReport {
    let world = World::new(plan, backend);
    let mut report = SeedReport {
        seed: world.plan.seed,
        ..SeedReport::default()
    };
    let mut driver = match Driver::start(&world).await {
        Ok(driver) => driver,
        Err(violation) => {
            report.violations.push(violation);
            return report;
        }
    };
    let mut queue = planned_actions(&world.plan);
    while let Some((at_ms, action)) = driver.next_action(&mut queue) {
        tokio::time::sleep_until(world.base.instant_at(EPOCH_MS + at_ms)).await;
        if let Err(violation) = driver.apply(at_ms, action, &mut report).await {
            report.violations.push(violation);
            return report;
        }
    }
    let snapshot = driver.quiesce(&mut report).await;
    driver.stop();
    let side = wechat_side(&world, &driver.told);
    let mut violations = check(&snapshot, &side);
    if let Some(timing) = &world.plan.timing {
        violations.extend(crate::timing::check(
            timing,
            &snapshot,
            &delivered_at(&side),
            world
                .plan
                .skews_ms
                .iter()
                .map(|s| s.abs())
                .max()
                .unwrap_or(0),
        ));
    }
    if let Some(model) = &world.backend.model {
        // The webhook receiver is up from here: every event reaches it.
        model.deliver_outbox();
        violations.extend(crate::invariants::check_outbox(model, &snapshot));
    }
    fill_report(&mut report, &world, &snapshot, &side, &driver.driver_faults);
    if !violations.is_empty() || !report.violations.is_empty() {
        report.story = Some(story(
            &world.plan,
            &world.trace,
            &snapshot,
            &side,
            &violations,
        ));
        report
            .violations
            .extend(violations.into_iter().map(|v| v.text));
    }
    report
}

/// WeChat's delivery times of each message, by its id.
fn delivered_at(side: &WeChatSide) -> BTreeMap<String, Vec<i64>> {
    let mut times: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for delivery in &side.deliveries {
        times
            .entry(delivery.message_id.clone())
            .or_default()
            .push(delivery.at);
    }
    times
}

impl World {
    /// The run's time base, trace, WeChat model and app settings.
    fn new(plan: Plan, backend: Backend) -> Self {
        let base = TimeBase::now();
        let trace = Arc::new(Trace::new(base));
        let knobs = &plan.knobs;
        let wechat = Arc::new(WeChatModel::new(
            base,
            WeChatSetup {
                seed: plan.seed,
                rates: plan.rates.clone(),
                request_timeout: Duration::from_millis(knobs.request_timeout_ms),
                latency_ms: knobs.latency_ms,
                token_expires_in: knobs.token_expires_in,
            },
            trace.clone(),
        ));
        let apps = Arc::new(BTreeMap::from([(
            APPID.to_owned(),
            AppSettings {
                secret: "sim-secret".to_owned().into(),
                token_mode: plan.token_mode,
                miniprogram_state: Default::default(),
                lang: Default::default(),
                push_token: None,
                encoding_aes_key: None,
                previous_encoding_aes_key: None,
                subscribe_grants_from: Default::default(),
                cors_origins: Vec::new(),
                send_caps: plan
                    .send_cap
                    .map(|(limit, window_ms)| {
                        vec![formid_gateway::config::SendCapSettings {
                            template_id: None,
                            limit,
                            window: Duration::from_millis(window_ms as u64),
                        }]
                    })
                    .unwrap_or_default(),
                quiet_hours: plan
                    .timing
                    .as_ref()
                    .and_then(|timing| timing.quiet.as_ref())
                    .map(|quiet| quiet.settings.clone()),
            },
        )]));
        World {
            plan,
            base,
            backend,
            wechat,
            trace,
            apps,
        }
    }
}

/// The plan's actions in the driver's order: by time, then by kind (posts,
/// sends, crashes, prompts, revocations, invalidations), then by index.
fn planned_actions(plan: &Plan) -> VecDeque<(i64, Action)> {
    let mut actions: Vec<(i64, u8, usize, Action)> = Vec::new();
    for (n, post) in plan.posts.iter().enumerate() {
        actions.push((post.at_ms, 0, n, Action::Post(n)));
    }
    for (n, send) in plan.sends.iter().enumerate() {
        actions.push((send.at_ms, 1, n, Action::Send(n)));
    }
    for (n, crash) in plan.crashes.iter().enumerate() {
        actions.push((crash.at_ms, 2, n, Action::Crash(n)));
    }
    for (n, prompt) in plan.subscribe.prompts.iter().enumerate() {
        actions.push((prompt.at_ms, 3, n, Action::Prompt(n)));
    }
    for (n, revocation) in plan.subscribe.revocations.iter().enumerate() {
        actions.push((revocation.at_ms, 4, n, Action::Revoke(n)));
    }
    for (n, invalidation) in plan.invalidations.iter().enumerate() {
        actions.push((invalidation.at_ms, 5, n, Action::Invalidate(n)));
    }
    if let Some(broadcast) = &plan.broadcast {
        actions.push((broadcast.at_ms, 6, 0, Action::Broadcast));
    }
    actions.sort_by_key(|(at, order, n, _)| (*at, *order, *n));
    actions
        .into_iter()
        .map(|(at, _, _, action)| (at, action))
        .collect()
}

/// The instances, the frontend and what the driver counts while the plan's
/// actions play out.
struct Driver<'w> {
    world: &'w World,
    instances: Vec<Option<Instance>>,
    generations: Vec<u32>,
    /// Restarts queued as crashes happen: (due at, slot).
    restarts: Vec<(i64, usize)>,
    /// The frontend's posts of prompt results go to the shared ledger (a
    /// post through an instance that crashes is retried by the frontend).
    frontend: Arc<dyn Storage>,
    frontend_tasks: Vec<JoinHandle<()>>,
    told: Told,
    driver_faults: Counts,
}

impl<'w> Driver<'w> {
    /// Starts every instance and connects the frontend; `Err` is the
    /// violation that ends the run.
    async fn start(world: &'w World) -> Result<Driver<'w>, String> {
        let plan = &world.plan;
        let mut instances: Vec<Option<Instance>> = Vec::new();
        for slot in 0..plan.instances {
            match world.start(slot, 0).await {
                Ok(instance) => instances.push(Some(instance)),
                Err(error) => return Err(format!("instance {slot} could not start: {error:#}")),
            }
        }
        let mut driver_faults = Counts::new();
        *driver_faults
            .entry(match plan.token_mode {
                TokenMode::Token => "tokens: seeds in cgi-bin/token mode",
                TokenMode::StableToken => "tokens: seeds in stable_token mode",
            })
            .or_default() += 1;
        let frontend = (world.backend.connect)()
            .await
            .map_err(|error| format!("the frontend could not connect: {error:#}"))?;
        Ok(Driver {
            world,
            instances,
            generations: vec![0u32; plan.instances],
            restarts: Vec::new(),
            frontend,
            frontend_tasks: Vec::new(),
            told: Arc::new(Mutex::new(BTreeMap::new())),
            driver_faults,
        })
    }

    /// The next restart due before the next planned action, or else that
    /// action; `None` when both are done.
    fn next_action(&mut self, queue: &mut VecDeque<(i64, Action)>) -> Option<(i64, Action)> {
        self.restarts.sort();
        let next_restart = self.restarts.first().copied();
        match (queue.front(), next_restart) {
            (Some((at, _)), Some((restart_at, slot))) if restart_at <= *at => {
                self.restarts.remove(0);
                Some((restart_at, Action::Restart(slot)))
            }
            (Some(_), _) => queue.pop_front(),
            (None, Some((restart_at, slot))) => {
                self.restarts.remove(0);
                Some((restart_at, Action::Restart(slot)))
            }
            (None, None) => None,
        }
    }

    /// Carries out one action; `Err` is the violation that ends the run.
    async fn apply(
        &mut self,
        at_ms: i64,
        action: Action,
        report: &mut SeedReport,
    ) -> Result<(), String> {
        let world = self.world;
        let plan = &world.plan;
        match action {
            Action::Post(n) => {
                let post = &plan.posts[n];
                let slot = live_slot(&self.instances, post.instance);
                let instance = self.instances[slot].as_ref().expect("a live instance");
                post_credentials(world, instance, post, &mut self.driver_faults).await;
            }
            Action::Send(n) => {
                let send = &plan.sends[n];
                let slot = live_slot(&self.instances, send.instance);
                let instance = self.instances[slot].as_mut().expect("a live instance");
                let task = spawn_send(instance, send, world.trace.clone(), self.told.clone());
                instance.sends.push(task);
                report.sends += 1;
            }
            Action::Crash(n) => self.crash(at_ms, &plan.crashes[n]),
            Action::Prompt(n) => {
                let prompt = &plan.subscribe.prompts[n];
                let task = spawn_prompt(
                    world,
                    prompt,
                    self.frontend.clone(),
                    &mut self.driver_faults,
                );
                self.frontend_tasks.push(task);
            }
            Action::Revoke(n) => self.revoke(&plan.subscribe.revocations[n]),
            Action::Invalidate(n) => {
                let invalidation = &plan.invalidations[n];
                match invalidation.around {
                    None => {
                        world.wechat.invalidate(APPID, invalidation.how);
                    }
                    Some(around) => world.wechat.arm(APPID, invalidation.how, around),
                }
            }
            Action::Restart(slot) => self.restart(slot).await?,
            Action::Broadcast => self.broadcast().await,
        }
        Ok(())
    }

    /// Creates the plan's broadcast through a live instance, as its API
    /// would; a failed write is tried again (one that committed is found).
    async fn broadcast(&mut self) {
        let world = self.world;
        let Some(plan) = &world.plan.broadcast else {
            return;
        };
        let slot = live_slot(&self.instances, plan.instance);
        let instance = self.instances[slot].as_ref().expect("a live instance");
        for _ in 0..20 {
            let created = crate::broadcast::create(
                plan,
                &instance.sender,
                &instance.storage,
                instance.clock,
                APPID,
            )
            .await;
            let exists = matches!(
                instance
                    .storage
                    .broadcast(APPID, crate::broadcast::JOB)
                    .await,
                Ok(Some(_))
            );
            world.trace.record(
                &instance.name,
                format!(
                    "broadcast {} to {} recipient(s): {}",
                    crate::broadcast::JOB,
                    plan.recipients.len(),
                    match &created {
                        Ok(()) => "created".to_owned(),
                        Err(error) => format!("{error:#}"),
                    }
                ),
            );
            if created.is_ok() || exists {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Aborts every task of the crashed instance and queues its restart;
    /// nothing when it is already down or the last one alive.
    fn crash(&mut self, at_ms: i64, crash: &CrashPlan) {
        let alive = self.instances.iter().filter(|i| i.is_some()).count();
        if alive < 2 || self.instances[crash.slot].is_none() {
            return;
        }
        if let Some(instance) = self.instances[crash.slot].take() {
            for task in instance.tasks.iter().chain(&instance.sends) {
                task.abort();
            }
            let in_flight = instance.sends.iter().filter(|t| !t.is_finished()).count();
            self.world.trace.record(
                &instance.name,
                format!("CRASH with {in_flight} send(s) in flight"),
            );
            *self.driver_faults.entry("instance crashes").or_default() += 1;
            self.restarts
                .push((at_ms + crash.restart_after_ms, crash.slot));
        }
    }

    /// A new generation of the instance in `slot`, unless it is alive.
    async fn restart(&mut self, slot: usize) -> Result<(), String> {
        if self.instances[slot].is_some() {
            return Ok(());
        }
        self.generations[slot] += 1;
        match self.world.start(slot, self.generations[slot]).await {
            Ok(instance) => {
                self.instances[slot] = Some(instance);
                Ok(())
            }
            Err(error) => Err(format!("instance {slot} could not restart: {error:#}")),
        }
    }

    /// A user turning a template off at WeChat.
    fn revoke(&mut self, revocation: &RevocationPlan) {
        self.world
            .wechat
            .revoke(APPID, &revocation.openid, &revocation.template_id);
        self.world.trace.record(
            "user",
            format!(
                "{} turns {} off at WeChat",
                revocation.openid, revocation.template_id
            ),
        );
        *self
            .driver_faults
            .entry("subscribe: user revoked a template")
            .or_default() += 1;
    }

    /// Quiescence: no more faults; every lease runs out, recovery and the
    /// waiting worker finish what is left. The ledger as last read.
    async fn quiesce(&self, report: &mut SeedReport) -> Snapshot {
        let world = self.world;
        let knobs = &world.plan.knobs;
        world.wechat.set_faults(false);
        if let Some(model) = &world.backend.model {
            model.set_write_failures(0);
        }
        world
            .trace
            .record("driver", "faults stop: quiescing".to_owned());
        let mut deadline = world.base.now_ms() + knobs.horizon_ms;
        // Scheduled sends wait for their time and quiet hours for their
        // end; the horizon counts from the last of them.
        if let Some(last) = world
            .plan
            .timing
            .as_ref()
            .map(crate::timing::TimingPlan::last_due)
        {
            deadline = deadline.max(last + knobs.horizon_ms);
        }
        let mut snapshot = Snapshot::default();
        loop {
            tokio::time::sleep(Duration::from_millis(knobs.poll_ms)).await;
            let sends_done = self
                .instances
                .iter()
                .flatten()
                .all(|i| i.sends.iter().all(JoinHandle::is_finished))
                && self.frontend_tasks.iter().all(JoinHandle::is_finished);
            match world.backend.view.snapshot().await {
                Ok(read) => snapshot = read,
                Err(error) => {
                    report
                        .violations
                        .push(format!("reading the ledger failed: {error:#}"));
                    return snapshot;
                }
            }
            if sends_done && snapshot.busy() == 0 {
                return snapshot;
            }
            // A broadcast paused by 45009 waits for midnight China time
            // (and then gets the horizon to finish).
            let paused_until = snapshot.broadcast.as_ref().and_then(|job| job.paused_until);
            if let Some(until) = paused_until {
                deadline = deadline.max(until + knobs.horizon_ms);
            }
            if world.base.now_ms() > deadline {
                report.violations.push(format!(
                    "the run did not quiesce within {} s: {} pending/waiting/leased row(s)",
                    knobs.horizon_ms / 1000,
                    snapshot.busy()
                ));
                return snapshot;
            }
        }
    }

    /// Aborts every task still running, the instances' and the frontend's.
    fn stop(&self) {
        for instance in self.instances.iter().flatten() {
            for task in instance.tasks.iter().chain(&instance.sends) {
                task.abort();
            }
        }
        self.world.trace.record("driver", "quiesced".to_owned());
        for task in &self.frontend_tasks {
            task.abort();
        }
    }
}

/// What WeChat saw and the truths the invariants compare the ledger with.
fn wechat_side(world: &World, told: &Told) -> WeChatSide {
    let plan = &world.plan;
    let knobs = &plan.knobs;
    let wechat = &world.wechat;
    let templates: BTreeMap<String, bool> = plan
        .subscribe
        .templates
        .iter()
        .map(|t| (t.id.clone(), t.long_term))
        .collect();
    WeChatSide {
        credentials: wechat.credentials(),
        deliveries: wechat.deliveries(),
        answers: wechat.answers(),
        subscriptions: wechat.subscriptions(),
        long_term_templates: templates,
        accepts: accept_truths(plan),
        told: told.lock().expect("told").clone(),
        send_cap: plan.send_cap.map(|(limit, window_ms)| CapFacts {
            limit,
            window_ms,
            skew_spread_ms: plan.skews_ms.iter().max().unwrap_or(&0)
                - plan.skews_ms.iter().min().unwrap_or(&0),
        }),
        tokens: TokenFacts {
            mode: plan.token_mode,
            run_ms: world.base.now_ms() - world.base.epoch_ms,
            expires_in_secs: knobs.token_expires_in,
            refresh_ahead_ms: knobs.token.refresh_ahead.as_millis() as i64,
            calls_after_rejection_bound: knobs.max_concurrent_calls as u64
                * u64::from(1 + BUSY_RETRIES + PROBE_LIMIT),
            truth: wechat.token_truth(),
        },
    }
}

/// Every template a prompt of the plan has the user accept.
fn accept_truths(plan: &Plan) -> Vec<AcceptTruth> {
    plan.subscribe
        .prompts
        .iter()
        .flat_map(|p| {
            p.decisions
                .iter()
                .filter(|(_, accepted)| *accepted)
                .map(|(template_id, _)| AcceptTruth {
                    openid: p.openid.clone(),
                    template_id: template_id.clone(),
                    request_id: p.request_id.clone(),
                    at_ms: EPOCH_MS + p.at_ms,
                })
        })
        .collect()
}

/// The run's figures: deliveries, outcomes, attempts, faults, time, trace.
fn fill_report(
    report: &mut SeedReport,
    world: &World,
    snapshot: &Snapshot,
    side: &WeChatSide,
    driver_faults: &Counts,
) {
    report.deliveries = side.deliveries.len() as u64;
    for message in &snapshot.messages {
        *report.outcomes.entry(message.status.as_str()).or_default() += 1;
        for attempt in &message.attempts {
            *report.attempts.entry(attempt.outcome.as_str()).or_default() += 1;
        }
    }
    if let Some(job) = &snapshot.broadcast {
        for recipient in &job.recipients {
            let name = match recipient.state.as_str() {
                "sent" => "broadcast recipients: sent",
                "no_credential" => "broadcast recipients: no_credential",
                "unknown" => "broadcast recipients: unknown",
                "failed" => "broadcast recipients: failed",
                _ => "broadcast recipients: other",
            };
            *report.outcomes.entry(name).or_default() += 1;
        }
    }
    if let Some(timing) = &world.plan.timing {
        add_counts(
            &mut report.outcomes,
            &crate::timing::figures(timing, snapshot, &side.told, &delivered_at(side)),
        );
    }
    add_counts(&mut report.faults, &world.wechat.counts());
    if let Some(model) = &world.backend.model {
        add_counts(&mut report.faults, &model.counts());
    }
    add_counts(&mut report.faults, driver_faults);
    report.simulated_ms = world.base.now_ms() - world.base.epoch_ms;
    report.trace_hash = world.trace.hash();
}

/// The slot that takes work meant for `wanted`: it, or the next one alive.
fn live_slot(instances: &[Option<Instance>], wanted: usize) -> usize {
    (0..instances.len())
        .map(|offset| (wanted + offset) % instances.len())
        .find(|slot| instances[*slot].is_some())
        .expect("at least one instance is alive: a crash never takes the last one")
}

/// WeChat issues the credentials of a post, and the frontend posts them
/// through an instance (its collection rules, its clock).
async fn post_credentials(
    world: &World,
    instance: &Instance,
    post: &PostPlan,
    faults: &mut Counts,
) {
    let now = formid_gateway::clock::Clock::now_ms(&instance.clock);
    let mut items = Vec::new();
    let through_session = post.at_ms % 2 == 0;
    for (index, credential) in post.credentials.iter().enumerate() {
        issue_at_wechat(world, credential);
        let item = if through_session {
            match session_item(credential, index) {
                Some(item) => item,
                None => {
                    world.trace.record(
                        &instance.name,
                        format!(
                            "collect {} through a session refused: the body named another openid",
                            credential.value
                        ),
                    );
                    continue;
                }
            }
        } else {
            credential_item(credential)
        };
        let posted_late = (now - credential.issued_at) / 1000;
        match parse_item(
            &item,
            CollectContext {
                now_ms: now,
                skew_ms: 60_000,
            },
        ) {
            Ok(parsed) => {
                count_collect_faults(post, credential, posted_late, faults);
                world.trace.record(
                    &instance.name,
                    format!(
                        "collect {} for {} ({}; issued {} s before the post; ledger expiry {:+} s vs WeChat's)",
                        credential.value,
                        credential.openid,
                        credential.label,
                        posted_late,
                        (parsed.expires_at - (credential.issued_at + CREDENTIAL_LIFETIME_MS)) / 1000
                    ),
                );
                items.push(parsed);
            }
            Err(rejection) => world.trace.record(
                &instance.name,
                format!("collect {} refused: {rejection:?}", credential.value),
            ),
        }
    }
    if items.is_empty() {
        return;
    }
    if let Err(error) = instance
        .storage
        .insert_credentials(APPID, &items, now)
        .await
    {
        world
            .trace
            .record(&instance.name, format!("collect failed: {error:#}"));
    }
}

/// WeChat issues the credential, with every use its kind allows.
fn issue_at_wechat(world: &World, credential: &CredentialPlan) {
    let max_uses = credential.kind.rules().sends;
    world.wechat.issue(
        &credential.value,
        TrueCredential {
            appid: APPID.to_owned(),
            openid: credential.openid.clone(),
            kind: credential.kind,
            issued_at: credential.issued_at,
            usable_from: credential.usable_from,
            uses_left: max_uses,
            max_uses,
        },
    );
}

/// The credential as the frontend posts it to the collect endpoint.
fn credential_item(credential: &CredentialPlan) -> serde_json::Value {
    let mut item = json!({
        "openid": credential.openid,
        "kind": credential.kind.as_str(),
        "value": credential.value,
    });
    if let Some(collected_at) = credential.collected_at {
        item["collected_at"] = json!(collected_at);
    }
    item
}

/// The item a mini-program posts through its user's session
/// (`POST …/me/credentials`): no openid, credited to the session's user (the
/// credential's owner, as WeChat's login named them) by the same rule as
/// the route. Every third item is a forged body naming another user: the
/// rule refuses it (`None`), and the invariants would catch a credential
/// credited to anyone but its owner.
fn session_item(credential: &CredentialPlan, index: usize) -> Option<serde_json::Value> {
    let mut item = credential_item(credential);
    let object = item.as_object_mut()?;
    object.remove("openid");
    if index % 3 == 2 {
        object.insert("openid".into(), json!(format!("{}-not", credential.openid)));
    }
    formid_gateway::ledger::sessions::credit_credentials(&mut item, &credential.openid).ok()?;
    Some(item)
}

/// Counts a collected credential whose `collected_at` is not accurate, and
/// one posted hours after its issue.
fn count_collect_faults(
    post: &PostPlan,
    credential: &CredentialPlan,
    posted_late: i64,
    faults: &mut Counts,
) {
    if credential.label != "accurate" {
        *faults
            .entry(match credential.label {
                "missing" => "credentials: collected_at missing",
                "fast phone" => "credentials: collected_at from a fast phone",
                _ => "credentials: collected_at from a slow phone",
            })
            .or_default() += 1;
    }
    if post.at_ms > 0 && posted_late > 3_600 {
        *faults
            .entry("credentials: posted hours after issue (buffered)")
            .or_default() += 1;
    }
}

/// The send path's policy of a simulated instance.
fn send_settings(knobs: &Knobs) -> SendSettings {
    SendSettings {
        safety_margin_ms: 60_000,
        fresh_prepay_grace_ms: 30_000,
        lease_ms: knobs.lease_ms,
        max_attempts: 10,
        busy_retries: BUSY_RETRIES,
        busy_backoff: Duration::from_millis(knobs.busy_backoff_ms),
        not_ready_retry_ms: knobs.not_ready_retry_ms,
        probe_limit: PROBE_LIMIT,
        max_concurrent_calls: knobs.max_concurrent_calls,
        call_budget_ms: knobs.call_budget_ms,
        token_refreshes: 2,
        token_retry_ms: knobs.token.send_retry.as_millis() as i64,
        quota_cache_ms: knobs.token.cache.as_millis() as i64,
    }
}

/// What each send's caller was answered, by message id.
pub type Told = Arc<Mutex<BTreeMap<String, MessageStatus>>>;

/// The business service's request of a send.
fn send_request(send: &SendPlan) -> SendRequest {
    SendRequest {
        touser: send.touser.clone(),
        template_id: send
            .subscribe
            .clone()
            .unwrap_or_else(|| TEMPLATE.to_owned()),
        page: None,
        data: Some(
            json!({"message": {"value": send.id}})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        ),
        emphasis_keyword: None,
        color: None,
        wait_seconds: send.wait_seconds,
        delivery: if send.at_least_once {
            Delivery::AtLeastOnce
        } else {
            Delivery::AtMostOnce
        },
        channel: None,
        miniprogram_state: None,
        lang: None,
        urgent: send.urgent,
        send_at: send
            .send_at
            .and_then(|at| chrono::DateTime::from_timestamp_millis(at).map(|at| at.fixed_offset())),
        reference: Some(format!("ref-{}", send.id)),
        idempotency_key: None,
    }
}

/// A send's `send_at` and urgency, as the trace says them.
fn timing_note(send: &SendPlan) -> String {
    let at = send.send_at.map_or(String::new(), |at| {
        format!(", send_at {} ms", at - EPOCH_MS)
    });
    let urgent = if send.urgent { ", urgent" } else { "" };
    format!("{at}{urgent}")
}

/// Starts a send on an instance, as its HTTP handler would: the request
/// checked by the instance's `Sender` (channel, template, defaults), then sent.
fn spawn_send(
    instance: &Instance,
    send: &SendPlan,
    trace: Arc<Trace>,
    told: Told,
) -> JoinHandle<()> {
    let sender = instance.sender.clone();
    let name = instance.name.clone();
    let id = send.id.clone();
    let request = send_request(send);
    trace.record(
        &name,
        format!(
            "send {id} to {}{}{}{}{}",
            send.touser,
            send.subscribe
                .as_ref()
                .map_or(String::new(), |t| format!(" (subscribe {t})")),
            send.wait_seconds
                .map_or(String::new(), |s| format!(", waiting up to {s} s")),
            if send.at_least_once {
                ", at_least_once"
            } else {
                ""
            },
            timing_note(send)
        ),
    );
    tokio::spawn(async move {
        let checked = match sender.check(APPID, request).await {
            Ok(checked) => checked,
            Err(error) => {
                trace.record(&name, format!("send {id} refused: {error}"));
                return;
            }
        };
        let line = match sender.send(APPID, checked, &id).await {
            Ok(outcome) => {
                let result = outcome.result;
                told.lock().expect("told").insert(id.clone(), result.status);
                format!(
                    "send {id} answered {}{} [{}]",
                    result.status,
                    result
                        .failure
                        .as_ref()
                        .map_or(String::new(), |f| format!(" ({})", f.code())),
                    result
                        .attempts
                        .iter()
                        .map(|a| a.outcome.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
            Err(error) => format!("send {id} failed: {error:#}"),
        };
        trace.record(&name, line);
    })
}

/// A user answers a prompt: WeChat counts the accepts now; the frontend
/// posts the result to the ledger later (`record_prompt`, as the
/// subscriptions endpoint does), retrying a failed post with the same
/// request_id, or never when the post is lost.
fn spawn_prompt(
    world: &World,
    prompt: &PromptPlan,
    storage: Arc<dyn Storage>,
    faults: &mut Counts,
) -> JoinHandle<()> {
    answer_at_wechat(world, prompt);
    count_prompt_faults(prompt, faults);
    let new = new_prompt(prompt);
    let clocks = instance_clocks(world);
    let posts = prompt.posts.clone();
    let repost = prompt.repost;
    let trace = world.trace.clone();
    tokio::spawn(async move {
        let mut answered = false;
        for (n, post) in posts.iter().enumerate() {
            tokio::time::sleep(Duration::from_millis(post.delay_ms as u64)).await;
            let now = formid_gateway::clock::Clock::now_ms(&clocks[post.instance]);
            let line = match storage.record_prompt(&new, now).await {
                Ok(record) => {
                    answered = true;
                    format!("prompt {} posted: {record:?}", new.request_id)
                }
                Err(error) => format!("prompt {} post failed: {error:#}", new.request_id),
            };
            trace.record(&format!("front{}", post.instance), line);
            if answered && !(repost && n + 1 < posts.len()) {
                break;
            }
        }
    })
}

/// WeChat counts the prompt's accepts; the trace tells the user's answers.
fn answer_at_wechat(world: &World, prompt: &PromptPlan) {
    let long_terms: BTreeMap<&str, bool> = world
        .plan
        .subscribe
        .templates
        .iter()
        .map(|t| (t.id.as_str(), t.long_term))
        .collect();
    for (template_id, accepted) in &prompt.decisions {
        if *accepted {
            let long_term = long_terms
                .get(template_id.as_str())
                .copied()
                .unwrap_or(false);
            world
                .wechat
                .accept(APPID, &prompt.openid, template_id, long_term);
        }
    }
    world.trace.record(
        "user",
        format!(
            "{} answers prompt {}: {}{}",
            prompt.openid,
            prompt.request_id,
            prompt
                .decisions
                .iter()
                .map(|(t, a)| format!("{t} {}", if *a { "accept" } else { "reject" }))
                .collect::<Vec<_>>()
                .join(", "),
            if prompt.posts.is_empty() {
                " (the frontend never posts it)"
            } else {
                ""
            }
        ),
    );
}

/// Counts the prompt, and how its result reaches the ledger (never, late,
/// twice).
fn count_prompt_faults(prompt: &PromptPlan, faults: &mut Counts) {
    *faults.entry("subscribe: prompts answered").or_default() += 1;
    if prompt.posts.is_empty() {
        *faults
            .entry("subscribe: prompt result never posted")
            .or_default() += 1;
    }
    if prompt.posts.first().is_some_and(|p| p.delay_ms >= 5_000) {
        *faults
            .entry("subscribe: prompt result posted late")
            .or_default() += 1;
    }
    if prompt.repost {
        *faults
            .entry("subscribe: prompt result posted twice")
            .or_default() += 1;
    }
}

/// The prompt's result as the subscriptions endpoint records it.
fn new_prompt(prompt: &PromptPlan) -> NewPrompt {
    let decisions: Vec<PromptDecision> = prompt
        .decisions
        .iter()
        .map(|(template_id, accepted)| PromptDecision {
            template_id: template_id.clone(),
            decision: if *accepted {
                Decision::Accept
            } else {
                Decision::Reject
            },
        })
        .collect();
    NewPrompt {
        appid: APPID.to_owned(),
        openid: prompt.openid.clone(),
        request_id: prompt.request_id.clone(),
        request_hash: format!("{:?}", prompt.decisions),
        plans: decisions
            .iter()
            .map(|decision| prompt_plan(true, decision.decision))
            .collect(),
        decisions,
    }
}

/// Each instance slot's clock, skewed as the plan says.
fn instance_clocks(world: &World) -> Vec<SimClock> {
    (0..world.plan.instances)
        .map(|slot| SimClock {
            base: world.base,
            skew_ms: world.plan.skews_ms[slot],
        })
        .collect()
}

/// The story of a failing run: the plan's settings, the violations with the
/// ledger's attempts and WeChat's deliveries of what they are about, and the
/// whole trace.
fn story(
    plan: &Plan,
    trace: &Trace,
    snapshot: &Snapshot,
    side: &WeChatSide,
    violations: &[Violation],
) -> String {
    let mut text = story_settings(plan, side);
    let credential_values: BTreeMap<i64, &str> = snapshot
        .credentials
        .iter()
        .map(|c| (c.id, c.value.as_str()))
        .collect();
    for violation in violations {
        text.push_str(&format!("VIOLATION: {}\n", violation.text));
        for id in &violation.messages {
            story_message(&mut text, id, snapshot, side, &credential_values);
        }
        for value in &violation.credentials {
            story_credential(&mut text, value, snapshot, side);
        }
    }
    let about: Vec<String> = violations
        .iter()
        .flat_map(|v| v.messages.iter().chain(&v.credentials).cloned())
        .collect();
    if !about.is_empty() {
        text.push_str("events about them:\n");
        text.push_str(&trace.render(|e| about.iter().any(|a| e.what.contains(a.as_str()))));
    }
    text.push_str("the whole run (true time, actor, event):\n");
    text.push_str(&trace.render(|_| true));
    text
}

/// The plan's settings and the run's token figures, the head of a story.
fn story_settings(plan: &Plan, side: &WeChatSide) -> String {
    let mut text = format!(
        "seed {} ({:?}): {} instances, skews {:?} ms, lease {} ms, call budget {} ms, {} call slot(s), send faults {:?} per mille\n",
        plan.seed,
        plan.profile,
        plan.instances,
        plan.skews_ms,
        plan.knobs.lease_ms,
        plan.knobs.call_budget_ms,
        plan.knobs.max_concurrent_calls,
        plan.rates.send.iter().map(|(f, r)| (f.name(), *r)).collect::<Vec<_>>(),
    );
    text.push_str(&format!(
        "tokens: {:?}, live {} s, refresh {} s ahead, fetch budget {} + 1 per {} s; {} (WeChat: {:?}); another server: {:?}\n",
        plan.token_mode,
        plan.knobs.token_expires_in,
        plan.knobs.token.refresh_ahead.as_secs(),
        plan.knobs.token.fetch_burst,
        plan.knobs.token.fetch_refill.as_secs(),
        if side.tokens.truth.received > side.tokens.fetch_bound() {
            format!("fetches over the bound of {}", side.tokens.fetch_bound())
        } else {
            format!("fetch bound {}", side.tokens.fetch_bound())
        },
        side.tokens.truth,
        plan.invalidations
            .iter()
            .map(|i| (i.at_ms, i.how, i.around))
            .collect::<Vec<_>>(),
    ));
    text
}

/// A message a violation is about: its row and attempts in the ledger,
/// and WeChat's deliveries of it.
fn story_message(
    text: &mut String,
    id: &str,
    snapshot: &Snapshot,
    side: &WeChatSide,
    credential_values: &BTreeMap<i64, &str>,
) {
    if let Some(message) = snapshot.messages.iter().find(|m| m.id == id) {
        let attempts: Vec<String> = message
            .attempts
            .iter()
            .map(|a| {
                format!(
                    "{} {}{}",
                    a.outcome,
                    a.credential_id
                        .and_then(|c| credential_values.get(&c).copied())
                        .unwrap_or("-"),
                    a.errcode.map_or(String::new(), |e| format!(" {e}"))
                )
            })
            .collect();
        text.push_str(&format!(
            "  {id} to {} ({}): {} [{}]\n",
            message.touser,
            message.delivery,
            message.status,
            attempts.join(", ")
        ));
    }
    for delivery in side.deliveries.iter().filter(|d| d.message_id == id) {
        text.push_str(&format!(
            "  delivered {id} with {} at +{:.3}s (call from {})\n",
            delivery.credential,
            (delivery.at - EPOCH_MS) as f64 / 1000.0,
            delivery.caller
        ));
    }
}

/// A credential a violation is about: WeChat's truth and the ledger's row.
fn story_credential(text: &mut String, value: &str, snapshot: &Snapshot, side: &WeChatSide) {
    if let Some(truth) = side.credentials.get(value) {
        text.push_str(&format!(
            "  {value}: {} of {}, issued at +{:.3}s, dies at WeChat at +{:.3}s, {} use(s) left at WeChat\n",
            truth.kind.as_str(),
            truth.openid,
            (truth.issued_at - EPOCH_MS) as f64 / 1000.0,
            (truth.expires_at() - EPOCH_MS) as f64 / 1000.0,
            truth.uses_left
        ));
    }
    if let Some(row) = snapshot.credentials.iter().find(|c| c.value == value) {
        text.push_str(&format!(
            "  {value} in the ledger: {} uses_left {} unproven {} retired {:?}\n",
            row.state, row.uses_left, row.unproven_uses, row.retired_errcode
        ));
    }
}

/// A sweep's totals.
#[derive(Debug, Clone, Default)]
pub struct SweepReport {
    pub seeds: u64,
    pub sends: u64,
    pub deliveries: u64,
    pub faults: Counts,
    pub outcomes: Counts,
    pub attempts: Counts,
    pub simulated_ms: i64,
    /// Failing seeds, each with its violations and story.
    pub failures: Vec<SeedReport>,
}

impl SweepReport {
    /// Adds one seed's report.
    pub fn add(&mut self, seed: SeedReport) {
        self.seeds += 1;
        self.sends += seed.sends;
        self.deliveries += seed.deliveries;
        add_counts(&mut self.faults, &seed.faults);
        add_counts(&mut self.outcomes, &seed.outcomes);
        add_counts(&mut self.attempts, &seed.attempts);
        self.simulated_ms += seed.simulated_ms;
        if !seed.violations.is_empty() {
            self.failures.push(seed);
        }
    }

    /// The figures, as printed by the binary and the CI test.
    pub fn figures(&self) -> String {
        let mut text = format!(
            "seeds {}, sends {}, deliveries {}, simulated time {:.1} h, violations {} (in {} seed(s))\n",
            self.seeds,
            self.sends,
            self.deliveries,
            self.simulated_ms as f64 / 3_600_000.0,
            self.failures.iter().map(|f| f.violations.len()).sum::<usize>(),
            self.failures.len()
        );
        // WeChat's own answers are counted beside the faults; printed apart.
        let answer = |name: &&str| name.starts_with("answer:") || *name == "token: issued";
        text.push_str("faults injected:\n");
        for (name, count) in self.faults.iter().filter(|(name, _)| !answer(name)) {
            text.push_str(&format!("  {name:<58} {count:>10}\n"));
        }
        text.push_str("WeChat's answers to processed calls:\n");
        for (name, count) in self.faults.iter().filter(|(name, _)| answer(name)) {
            text.push_str(&format!("  {name:<58} {count:>10}\n"));
        }
        text.push_str("messages by final status:\n");
        for (name, count) in &self.outcomes {
            text.push_str(&format!("  {name:<58} {count:>10}\n"));
        }
        text.push_str("attempts by outcome:\n");
        for (name, count) in &self.attempts {
            text.push_str(&format!("  {name:<58} {count:>10}\n"));
        }
        text
    }
}

/// Runs seeds `start..start + seeds` with `sends` sends each on `threads`
/// threads (each seed on its own current-thread runtime); the totals do not
/// depend on the number of threads.
pub fn sweep(start: u64, seeds: u64, sends: usize, threads: usize) -> SweepReport {
    sweep_with(start, seeds, sends, threads, 0)
}

/// [`sweep`] with `subscribe_percent` % of each seed's sends subscribe
/// messages (see [`Plan::with_subscribe`]).
pub fn sweep_with(
    start: u64,
    seeds: u64,
    sends: usize,
    threads: usize,
    subscribe_percent: u32,
) -> SweepReport {
    let next = Mutex::new(start);
    let reports = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| loop {
                let seed = {
                    let mut next = next.lock().expect("seed counter");
                    if *next >= start + seeds {
                        return;
                    }
                    *next += 1;
                    *next - 1
                };
                let report = run_seed_with(seed, sends, subscribe_percent);
                reports.lock().expect("reports").push(report);
            });
        }
    });
    let mut reports = reports.into_inner().expect("reports");
    reports.sort_by_key(|r| r.seed);
    let mut sweep = SweepReport::default();
    for report in reports {
        sweep.add(report);
    }
    sweep
}
