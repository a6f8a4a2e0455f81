//! The per-app budget of token fetches, as a pure rule: a generic cell rate
//! algorithm (GCRA), the token bucket kept as one instant. The instant (the
//! "theoretical arrival time") is stored in the app's row, so every instance
//! on the ledger spends from one budget.

/// `burst` fetches at once, then one more every `refill_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchBudget {
    pub burst: u32,
    pub refill_ms: i64,
}

/// The budget's answer to one fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Fetch, and store this arrival time.
    Granted { next_tat: i64 },
    /// None left: the next fetch is allowed at this instant.
    Dry { retry_at: i64 },
}

impl FetchBudget {
    /// Takes one fetch at `now` from a budget whose stored arrival time is
    /// `tat` (`None` for a full budget).
    pub fn take(&self, tat: Option<i64>, now: i64) -> Take {
        let interval = self.refill_ms.max(1);
        let window = interval.saturating_mul(i64::from(self.burst.max(1)));
        let next_tat = tat.unwrap_or(now).max(now).saturating_add(interval);
        let allowed_at = next_tat - window;
        if allowed_at <= now {
            Take::Granted { next_tat }
        } else {
            Take::Dry {
                retry_at: allowed_at,
            }
        }
    }

    /// Fetches the budget allows in a day at most: the refill's share plus
    /// the burst.
    pub fn per_day_at_most(&self) -> i64 {
        86_400_000 / self.refill_ms.max(1) + i64::from(self.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;
    const BUDGET: FetchBudget = FetchBudget {
        burst: 5,
        refill_ms: 120_000,
    };

    /// Takes at `now` and stores what was granted, like the keeper does.
    fn take(tat: &mut Option<i64>, now: i64) -> bool {
        match BUDGET.take(*tat, now) {
            Take::Granted { next_tat } => {
                *tat = Some(next_tat);
                true
            }
            Take::Dry { .. } => false,
        }
    }

    #[test]
    fn a_full_budget_grants_the_burst_at_once_and_then_none() {
        let mut tat = None;
        for i in 0..5 {
            assert!(take(&mut tat, NOW), "fetch {i} of the burst");
        }
        assert_eq!(
            BUDGET.take(tat, NOW),
            Take::Dry {
                retry_at: NOW + 120_000
            }
        );
    }

    #[test]
    fn a_dry_budget_earns_one_fetch_per_refill() {
        let mut tat = None;
        while take(&mut tat, NOW) {}
        assert!(!take(&mut tat, NOW + 119_999));
        assert!(take(&mut tat, NOW + 120_000));
        assert!(!take(&mut tat, NOW + 120_001));
        assert!(take(&mut tat, NOW + 240_000));
    }

    #[test]
    fn an_idle_budget_refills_to_the_burst_and_no_further() {
        let mut tat = None;
        while take(&mut tat, NOW) {}
        let later = NOW + 24 * 3_600_000;
        let granted = (0..20).filter(|_| take(&mut tat, later)).count();
        assert_eq!(granted, 5);
    }

    #[test]
    fn a_runaway_stays_inside_the_daily_quota_of_wechat() {
        // Asking every second for a whole day: the budget's bound holds,
        // and the default budget stays far inside WeChat's 2,000 a day.
        let mut tat = None;
        let granted = (0..86_400)
            .filter(|second| take(&mut tat, NOW + second * 1000))
            .count() as i64;
        assert!(granted <= BUDGET.per_day_at_most(), "{granted}");
        assert!(granted >= BUDGET.per_day_at_most() - 1, "{granted}");
        assert!(BUDGET.per_day_at_most() < 1_000);
    }

    #[test]
    fn a_clock_that_steps_back_never_grants_more_than_the_burst() {
        let mut tat = None;
        while take(&mut tat, NOW) {}
        assert!(!take(&mut tat, NOW - 3_600_000));
    }
}
