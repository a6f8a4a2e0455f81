//! The rules that keep a user from being pestered: per-user send caps (at
//! most N sends in any rolling window) and quiet hours (no sends in a daily
//! window of the app's local time). Pure: every time is handed in as Unix
//! milliseconds, and what counts against a cap is read by the caller.
//!
//! Why a cap counts a message from its admission to the end of the window
//! after it finished: WeChat delivers a message at some time between the
//! send's admission and its finish. A message that finished at `f` is counted
//! while `f > now - window`; once it is not, its delivery lies at least a
//! window before any delivery admitted from `now` on. A message still in
//! flight (pending, or waiting for a credential) is always counted, since its
//! delivery is still to come. So the deliveries inside any window of length
//! `window` are at most `limit` (RELIABILITY.md, "Per-user send caps").

/// One minute, one hour, one day in milliseconds.
pub const MINUTE_MS: i64 = 60_000;
/// One day in milliseconds.
pub const DAY_MS: i64 = 86_400_000;

/// At most `limit` sends to one user in any `window_ms`, of the app's
/// messages, or of one template's when `template_id` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendCap {
    /// The template the cap counts, or every template of the app.
    pub template_id: Option<String>,
    /// Sends allowed in a window (at least 1).
    pub limit: u32,
    /// The rolling window, in milliseconds (at least 1).
    pub window_ms: i64,
}

impl SendCap {
    /// Whether the cap applies to a send of `template_id`.
    pub fn applies_to(&self, template_id: &str) -> bool {
        self.template_id
            .as_deref()
            .is_none_or(|capped| capped == template_id)
    }
}

/// One of the user's messages that may count against a cap: its template,
/// and when it finished (`None` while it is in flight: pending, or waiting
/// for a credential).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountedSend<'a> {
    pub template_id: &'a str,
    pub finished_at: Option<i64>,
}

/// What the caps say of one more send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapDecision {
    /// Under every cap: the send may go.
    Allow,
    /// A cap is full: no send before `retry_at_ms` can be admitted by it.
    Capped {
        /// When enough counted sends leave the window, if none of those in
        /// flight then still counts (a hint, never earlier than the truth
        /// for the finished ones).
        retry_at_ms: i64,
        /// The cap that refused (the one that frees last).
        limit: u32,
        window_ms: i64,
    },
}

/// Whether one more send of `template_id` to the user fits `caps` at `now`,
/// given the user's messages `counted` (those in flight, and those sent or of
/// unknown outcome; the caller may pass older ones, they are filtered here).
/// A message in flight is assumed to leave its window a full window from
/// now (when it ends sent, at the soonest).
pub fn cap_decision(
    caps: &[SendCap],
    template_id: &str,
    counted: &[CountedSend<'_>],
    now: i64,
) -> CapDecision {
    let mut decision = CapDecision::Allow;
    for cap in caps.iter().filter(|cap| cap.applies_to(template_id)) {
        let mut leaves: Vec<i64> = counted
            .iter()
            .filter(|send| cap.applies_to(send.template_id))
            .filter_map(|send| match send.finished_at {
                None => Some(now + cap.window_ms),
                Some(at) if at > now - cap.window_ms => Some(at + cap.window_ms),
                Some(_) => None,
            })
            .collect();
        let limit = cap.limit as usize;
        if leaves.len() < limit {
            continue;
        }
        leaves.sort_unstable();
        // One more fits once `len - limit + 1` of the counted ones have left.
        let retry_at_ms = leaves[leaves.len() - limit];
        let later = match decision {
            CapDecision::Capped {
                retry_at_ms: known, ..
            } => retry_at_ms > known,
            CapDecision::Allow => true,
        };
        if later {
            decision = CapDecision::Capped {
                retry_at_ms,
                limit: cap.limit,
                window_ms: cap.window_ms,
            };
        }
    }
    decision
}

/// The longest window of the caps that apply to a send of `template_id`:
/// how far back a count must read. `None` when no cap applies.
pub fn longest_window(caps: &[SendCap], template_id: &str) -> Option<i64> {
    caps.iter()
        .filter(|cap| cap.applies_to(template_id))
        .map(|cap| cap.window_ms)
        .max()
}

/// A daily window of local time in which the app sends nothing:
/// `[start, end)` in milliseconds after local midnight, crossing midnight
/// when `start > end`. Local time is UTC plus a fixed offset.
///
/// Why a fixed offset and no time-zone database: the default zone,
/// Asia/Shanghai, has kept UTC+8 without daylight saving since 1991, so a
/// fixed offset is exact for it (and for every zone without daylight saving),
/// and the rule stays a pure function of its inputs with no tz data to keep
/// current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    pub start_ms: i64,
    pub end_ms: i64,
    pub utc_offset_ms: i64,
}

impl QuietHours {
    /// A window from `start` to `end` (minutes after local midnight, below
    /// 1440, different), `utc_offset_minutes` east of UTC.
    pub fn new(start_minute: u16, end_minute: u16, utc_offset_minutes: i32) -> Option<Self> {
        let valid = start_minute < 1440 && end_minute < 1440 && start_minute != end_minute;
        valid.then(|| Self {
            start_ms: i64::from(start_minute) * MINUTE_MS,
            end_ms: i64::from(end_minute) * MINUTE_MS,
            utc_offset_ms: i64::from(utc_offset_minutes) * MINUTE_MS,
        })
    }

    fn length_ms(&self) -> i64 {
        (self.end_ms - self.start_ms).rem_euclid(DAY_MS)
    }

    /// When the window that holds `at` opens again (the first instant
    /// after it at which sending is allowed), or `None` outside the window.
    pub fn opens_at(&self, at: i64) -> Option<i64> {
        let local = at + self.utc_offset_ms;
        let into_day = local.rem_euclid(DAY_MS);
        // How far into the window `at` lies, if it does.
        let into_window = (into_day - self.start_ms).rem_euclid(DAY_MS);
        (into_window < self.length_ms()).then(|| at - into_window + self.length_ms())
    }

    /// When a send admitted at `now`, whose calls may run for up to
    /// `lead_ms`, may start: `None` when it may start now (no part of
    /// `[now, now + lead_ms)` lies in the window), else the opening of the
    /// window it would run into.
    pub fn hold_until(&self, now: i64, lead_ms: i64) -> Option<i64> {
        if let Some(opens) = self.opens_at(now) {
            return Some(opens);
        }
        let local = now + self.utc_offset_ms;
        let until_start = (self.start_ms - local.rem_euclid(DAY_MS)).rem_euclid(DAY_MS);
        (until_start < lead_ms).then(|| now + until_start + self.length_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    fn cap(limit: u32, hours: i64) -> SendCap {
        SendCap {
            template_id: None,
            limit,
            window_ms: hours * H,
        }
    }

    fn of(template: Option<&str>, limit: u32, hours: i64) -> SendCap {
        SendCap {
            template_id: template.map(str::to_owned),
            ..cap(limit, hours)
        }
    }

    fn done(at: i64) -> CountedSend<'static> {
        CountedSend {
            template_id: "t",
            finished_at: Some(at),
        }
    }

    const FLYING: CountedSend<'static> = CountedSend {
        template_id: "t",
        finished_at: None,
    };

    fn capped(retry_at_ms: i64, limit: u32, hours: i64) -> CapDecision {
        CapDecision::Capped {
            retry_at_ms,
            limit,
            window_ms: hours * H,
        }
    }

    #[test]
    fn caps_count_a_rolling_window() {
        let now = 100 * H;
        let other = CountedSend {
            template_id: "u",
            finished_at: Some(now - H),
        };
        #[rustfmt::skip]
        let rows: Vec<(&str, Vec<SendCap>, Vec<CountedSend>, CapDecision)> = vec![
            ("no caps", vec![], vec![done(now); 9], CapDecision::Allow),
            ("nothing counted", vec![cap(3, 24)], vec![], CapDecision::Allow),
            ("two of three", vec![cap(3, 24)], vec![done(now - H), done(now - 2 * H)], CapDecision::Allow),
            ("three of three", vec![cap(3, 24)], vec![done(now - H), done(now - 2 * H), done(now - 3 * H)], capped(now + 21 * H, 3, 24)),
            ("in flight counts", vec![cap(3, 24)], vec![FLYING, FLYING, done(now - 3 * H)], capped(now + 21 * H, 3, 24)),
            ("all in flight", vec![cap(2, 24)], vec![FLYING, FLYING], capped(now + 24 * H, 2, 24)),
            ("left the window exactly", vec![cap(1, 24)], vec![done(now - 24 * H)], CapDecision::Allow),
            ("one ms inside", vec![cap(1, 24)], vec![done(now - 24 * H + 1)], capped(now + 1, 1, 24)),
            ("over the cap: wait for enough to leave", vec![cap(2, 24)], vec![done(now - H), done(now - 5 * H), done(now - 9 * H)], capped(now + 19 * H, 2, 24)),
            ("another template's cap", vec![of(Some("u"), 1, 24)], vec![other], CapDecision::Allow),
            ("this template's cap, other template ignored", vec![of(Some("t"), 1, 24)], vec![other], CapDecision::Allow),
            ("app cap counts every template", vec![cap(1, 24)], vec![other], capped(now + 23 * H, 1, 24)),
            ("the cap that frees last refuses", vec![cap(1, 2), of(Some("t"), 1, 24)], vec![done(now - H)], capped(now + 23 * H, 1, 24)),
            ("a template cap for this send", vec![of(Some("t"), 1, 24)], vec![done(now - H)], capped(now + 23 * H, 1, 24)),
        ];
        let mut wrong = Vec::new();
        for (name, caps, counted, expected) in rows {
            let got = cap_decision(&caps, "t", &counted, now);
            if got != expected {
                wrong.push(format!("{name}: {got:?}, expected {expected:?}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn the_longest_window_of_the_caps_that_apply() {
        let caps = [cap(3, 24), of(Some("t"), 1, 48), of(Some("u"), 1, 96)];
        assert_eq!(longest_window(&caps, "t"), Some(48 * H));
        assert_eq!(longest_window(&caps, "v"), Some(24 * H));
        assert_eq!(longest_window(&[], "t"), None);
    }

    /// Unix ms of a local time on 2026-01-01 in UTC+8 (2026-01-01T00:00+08:00
    /// is 1767196800000).
    fn cst(day: i64, hour: i64, minute: i64) -> i64 {
        1_767_196_800_000 + day * DAY_MS + hour * H + minute * MINUTE_MS
    }

    #[test]
    fn quiet_hours_in_local_time() {
        let night = QuietHours::new(22 * 60, 8 * 60, 480).unwrap();
        let lunch = QuietHours::new(12 * 60, 13 * 60 + 30, 480).unwrap();
        #[rustfmt::skip]
        let rows: Vec<(&str, QuietHours, i64, Option<i64>)> = vec![
            ("before a midnight-crossing window", night, cst(0, 21, 59), None),
            ("its first instant", night, cst(0, 22, 0), Some(cst(1, 8, 0))),
            ("before midnight", night, cst(0, 23, 59), Some(cst(1, 8, 0))),
            ("after midnight", night, cst(1, 0, 0), Some(cst(1, 8, 0))),
            ("one ms before it opens", night, cst(1, 8, 0) - 1, Some(cst(1, 8, 0))),
            ("the opening instant", night, cst(1, 8, 0), None),
            ("midday", night, cst(1, 12, 0), None),
            ("a window inside a day", lunch, cst(0, 12, 30), Some(cst(0, 13, 30))),
            ("its end", lunch, cst(0, 13, 30), None),
            ("before it", lunch, cst(0, 11, 59), None),
            ("before 1970 still works", night, 23 * H - 2 * DAY_MS, Some(24 * H - 2 * DAY_MS)),
        ];
        let mut wrong = Vec::new();
        for (name, quiet, at, expected) in rows {
            let got = quiet.opens_at(at);
            if got != expected {
                wrong.push(format!("{name}: {got:?}, expected {expected:?}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn a_send_that_would_run_into_the_window_is_held() {
        let night = QuietHours::new(22 * 60, 8 * 60, 480).unwrap();
        let minute = MINUTE_MS;
        #[rustfmt::skip]
        let rows: Vec<(&str, i64, i64, Option<i64>)> = vec![
            ("well before", cst(0, 21, 0), minute, None),
            ("its lead reaches the window", cst(0, 21, 59) + 1, minute, Some(cst(1, 8, 0))),
            ("its lead ends as the window starts", cst(0, 21, 59), minute, None),
            ("inside", cst(0, 23, 0), minute, Some(cst(1, 8, 0))),
            ("no lead", cst(0, 21, 59) + 59_999, 0, None),
        ];
        let mut wrong = Vec::new();
        for (name, now, lead, expected) in rows {
            let got = night.hold_until(now, lead);
            if got != expected {
                wrong.push(format!("{name}: {got:?}, expected {expected:?}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn an_empty_or_impossible_window_is_refused() {
        assert!(QuietHours::new(600, 600, 480).is_none());
        assert!(QuietHours::new(1440, 60, 480).is_none());
        assert!(QuietHours::new(0, 1439, -300).is_some());
    }
}
