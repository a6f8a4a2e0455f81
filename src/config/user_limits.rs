//! An app's send rules: per-user send caps and quiet hours (the rules
//! themselves are `formid_core::user_limits`).

use std::time::Duration;

use anyhow::bail;
use serde::Deserialize;

use crate::ledger::user_limits::{QuietHours, SendCap};

/// At most `limit` sends to one user in any `window_secs`, of every
/// template of the app, or of `template_id` alone.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendCapSettings {
    /// The template this cap counts; every template when unset.
    #[serde(default)]
    pub template_id: Option<String>,
    /// Sends allowed in a window.
    #[serde(deserialize_with = "super::whole")]
    pub limit: u32,
    /// The rolling window.
    #[serde(rename = "window_secs", deserialize_with = "super::secs")]
    pub window: Duration,
}

/// What a send inside quiet hours does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuietMode {
    /// It is kept as a scheduled message and sent when the window opens.
    #[default]
    Wait,
    /// It is refused 429 `quiet_hours` with the opening time.
    Refuse,
}

/// A daily window of the app's local time in which nothing is sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHoursSettings {
    /// `HH:MM`, local time: the first minute of the window.
    pub start: String,
    /// `HH:MM`, local time: the first minute sends are allowed again
    /// (before `start`: the window crosses midnight).
    pub end: String,
    /// The app's time zone as a fixed offset from UTC, `+08:00` by default
    /// (Asia/Shanghai, which has no daylight saving time).
    #[serde(default = "china")]
    pub utc_offset: String,
    /// `wait` (the default) or `refuse`.
    #[serde(default)]
    pub mode: QuietMode,
}

fn china() -> String {
    "+08:00".to_owned()
}

/// The longest cap window accepted: 31 days.
const MAX_WINDOW: Duration = Duration::from_secs(31 * 86_400);

impl SendCapSettings {
    /// The cap as the rule takes it, or why it is none.
    pub fn rule(&self) -> anyhow::Result<SendCap> {
        if self.limit == 0 || self.limit > 10_000 {
            bail!("limit: 1 to 10000 sends");
        }
        if self.window.is_zero() || self.window > MAX_WINDOW {
            bail!("window_secs: 1 second to 31 days");
        }
        if let Some(template) = &self.template_id {
            if !crate::ledger::collect::is_plain_identifier(template, 128) {
                bail!("template_id: 1 to 128 printable characters");
            }
        }
        Ok(SendCap {
            template_id: self.template_id.clone(),
            limit: self.limit,
            window_ms: crate::clock::ms(self.window),
        })
    }
}

impl QuietHoursSettings {
    /// The window as the rule takes it, or why it is none.
    pub fn rule(&self) -> anyhow::Result<QuietHours> {
        let start = minute_of_day(&self.start)
            .ok_or_else(|| anyhow::anyhow!("start: a local time like \"22:00\""))?;
        let end = minute_of_day(&self.end)
            .ok_or_else(|| anyhow::anyhow!("end: a local time like \"08:00\""))?;
        let offset = utc_offset_minutes(&self.utc_offset).ok_or_else(|| {
            anyhow::anyhow!("utc_offset: an offset like \"+08:00\" or \"-05:00\"")
        })?;
        QuietHours::new(start, end, offset)
            .ok_or_else(|| anyhow::anyhow!("start and end: two different times"))
    }
}

/// `HH:MM` as minutes after midnight.
fn minute_of_day(text: &str) -> Option<u16> {
    let (hours, minutes) = text.split_once(':')?;
    let two_digits = |part: &str| part.len() == 2 && part.bytes().all(|b| b.is_ascii_digit());
    if !two_digits(hours) || !two_digits(minutes) {
        return None;
    }
    let (hours, minutes): (u16, u16) = (hours.parse().ok()?, minutes.parse().ok()?);
    (hours < 24 && minutes < 60).then_some(hours * 60 + minutes)
}

/// `±HH:MM` as minutes east of UTC (at most 14 hours).
fn utc_offset_minutes(text: &str) -> Option<i32> {
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let minutes = i32::from(minute_of_day(rest)?);
    (minutes <= 14 * 60).then_some(sign * minutes)
}

/// An app's send rules, checked and shaped for the send path.
#[derive(Debug, Clone, Default)]
pub struct UserLimits {
    /// Its caps (empty: no count is made).
    pub caps: Vec<SendCap>,
    /// Its quiet hours, and what a send inside them does.
    pub quiet: Option<(QuietHours, QuietMode)>,
}

/// The send rules of one app's settings, or what is wrong with them (named
/// by their path under `apps.{appid}`).
pub fn user_limits(
    caps: &[SendCapSettings],
    quiet: Option<&QuietHoursSettings>,
) -> anyhow::Result<UserLimits> {
    let caps = caps
        .iter()
        .enumerate()
        .map(|(index, cap)| {
            cap.rule()
                .map_err(|error| anyhow::anyhow!("send_caps[{index}].{error}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let quiet = quiet
        .map(|quiet| {
            quiet
                .rule()
                .map(|rule| (rule, quiet.mode))
                .map_err(|error| anyhow::anyhow!("quiet_hours.{error}"))
        })
        .transpose()?;
    Ok(UserLimits { caps, quiet })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_times_and_offsets_are_read_strictly() {
        assert_eq!(minute_of_day("22:00"), Some(1320));
        assert_eq!(minute_of_day("00:00"), Some(0));
        assert_eq!(minute_of_day("23:59"), Some(1439));
        for bad in ["24:00", "8:00", "08:60", "0800", "", "08:00 "] {
            assert_eq!(minute_of_day(bad), None, "{bad:?}");
        }
        assert_eq!(utc_offset_minutes("+08:00"), Some(480));
        assert_eq!(utc_offset_minutes("-05:30"), Some(-330));
        for bad in ["08:00", "+15:00", "+8", "UTC"] {
            assert_eq!(utc_offset_minutes(bad), None, "{bad:?}");
        }
    }
}
