//! Injected faults: what can go wrong with a list request, and the draw that
//! decides, for one request, which faults it gets.
//!
//! Random faults draw from their own seeded RNG, so the same seed and the same
//! request sequence fail the same way, and the data's RNG is left alone.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Faults applied to list requests. Rates are probabilities in 0..=1 drawn
/// per request; the `*_next` counters are deterministic one-shots for tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Answer 500, 502 or 503 with a JSON error body.
    pub error_rate: f64,
    /// Answer 429 with `Retry-After: 1`.
    pub rate_limit_rate: f64,
    /// Wait `slow_ms` before answering.
    pub slow_rate: f64,
    pub slow_ms: u64,
    /// Answer 200 with the JSON body cut off halfway.
    pub truncate_rate: f64,
    /// Random writes to the table before answering any page after the first.
    pub writes_per_page: usize,
    /// Updates in place before answering every page: random records of the
    /// table take a new stamp (and `modified_at`) but keep their place in
    /// the listing, as a record edited while a client walks past it.
    pub edits_per_page: usize,
    /// Random writes to the table between reading a page's `count` and its
    /// results, as an upstream that runs the COUNT and the page query in
    /// two snapshots (docs/upstream.md assumes one).
    pub count_apart_writes: usize,
    /// Share of writes that take their stamp now but become visible only
    /// after `late_after` further writes to the table (or a flush).
    pub late_rate: f64,
    pub late_after: u32,
    /// The next `fail_next` list requests answer `fail_status`.
    pub fail_next: u32,
    pub fail_status: u16,
    /// The next `truncate_next` list requests get a cut-off body.
    pub truncate_next: u32,
    /// The next `hang_next` list requests wait 60 s before answering.
    pub hang_next: u32,
    /// The next `hard_delete_next` list requests first remove the table's
    /// record with the lowest stamp for good (a hard delete, against the
    /// contract).
    pub hard_delete_next: u32,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            error_rate: 0.0,
            rate_limit_rate: 0.0,
            slow_rate: 0.0,
            slow_ms: 1000,
            truncate_rate: 0.0,
            writes_per_page: 0,
            edits_per_page: 0,
            count_apart_writes: 0,
            late_rate: 0.0,
            late_after: 5,
            fail_next: 0,
            fail_status: 503,
            truncate_next: 0,
            hang_next: 0,
            hard_delete_next: 0,
        }
    }
}

impl Faults {
    /// Rejects settings the simulator could not act on, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        let rates = [
            ("error_rate", self.error_rate),
            ("rate_limit_rate", self.rate_limit_rate),
            ("slow_rate", self.slow_rate),
            ("truncate_rate", self.truncate_rate),
            ("late_rate", self.late_rate),
        ];
        for (name, rate) in rates {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!(
                    "{name} must be a probability between 0 and 1, got {rate}"
                ));
            }
        }
        if !(100..=599).contains(&self.fail_status) {
            return Err(format!(
                "fail_status must be an HTTP status (100-599), got {}",
                self.fail_status
            ));
        }
        Ok(())
    }
}

/// How long a hanging request waits: longer than any sane client timeout.
pub const HANG: Duration = Duration::from_secs(60);

/// The faults one list request gets.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Draw {
    pub hang: bool,
    pub delay: Option<Duration>,
    /// Answer this status instead of the page.
    pub fail: Option<Failure>,
    pub truncate: bool,
    /// Random writes to make first, if the request asks for a page after the first.
    pub writes_per_page: usize,
    /// Updates in place to make first, whatever the page.
    pub edits_per_page: usize,
    /// Remove the record with the lowest stamp first.
    pub hard_delete: bool,
    /// Random writes between the page's count and its results.
    pub count_apart_writes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Failure {
    /// A one-shot failure with the configured status.
    Next(u16),
    ServerError(u16),
    RateLimited,
}

impl Failure {
    pub fn status(self) -> u16 {
        match self {
            Failure::Next(status) | Failure::ServerError(status) => status,
            Failure::RateLimited => 429,
        }
    }
}

/// The current faults and the RNG that draws them.
pub(super) struct FaultState {
    pub faults: Faults,
    rng: StdRng,
}

impl FaultState {
    pub fn new(faults: Faults, seed: u64) -> FaultState {
        FaultState {
            faults,
            rng: StdRng::seed_from_u64(seed ^ 0x5eed_fa17),
        }
    }

    /// Decides the faults of the next list request, using up one-shots.
    /// A failing request leaves the truncation one-shot for a later request.
    pub fn draw(&mut self) -> Draw {
        let f = &mut self.faults;
        let rng = &mut self.rng;
        let mut draw = Draw {
            writes_per_page: f.writes_per_page,
            edits_per_page: f.edits_per_page,
            count_apart_writes: f.count_apart_writes,
            ..Draw::default()
        };
        if f.hang_next > 0 {
            f.hang_next -= 1;
            draw.hang = true;
        }
        if f.hard_delete_next > 0 {
            f.hard_delete_next -= 1;
            draw.hard_delete = true;
        }
        if f.slow_rate > 0.0 && rng.random_bool(f.slow_rate) {
            draw.delay = Some(Duration::from_millis(f.slow_ms));
        }
        draw.fail = if f.fail_next > 0 {
            f.fail_next -= 1;
            Some(Failure::Next(f.fail_status))
        } else if f.error_rate > 0.0 && rng.random_bool(f.error_rate) {
            Some(Failure::ServerError(
                [500, 502, 503][rng.random_range(0..3)],
            ))
        } else if f.rate_limit_rate > 0.0 && rng.random_bool(f.rate_limit_rate) {
            Some(Failure::RateLimited)
        } else {
            None
        };
        if draw.fail.is_none() {
            if f.truncate_next > 0 {
                f.truncate_next -= 1;
                draw.truncate = true;
            } else if f.truncate_rate > 0.0 {
                draw.truncate = rng.random_bool(f.truncate_rate);
            }
        }
        draw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shots_are_used_up_in_order_and_truncation_waits_for_a_success() {
        let faults = Faults {
            fail_next: 1,
            fail_status: 429,
            truncate_next: 1,
            hang_next: 1,
            ..Faults::default()
        };
        let mut state = FaultState::new(faults, 7);
        let first = state.draw();
        assert!(first.hang);
        assert_eq!(first.fail, Some(Failure::Next(429)));
        assert!(!first.truncate);
        let second = state.draw();
        assert_eq!(
            (second.hang, second.fail, second.truncate),
            (false, None, true)
        );
        assert_eq!(state.draw(), Draw::default());
    }

    #[test]
    fn rates_outside_zero_to_one_are_refused() {
        let bad = Faults {
            late_rate: 1.5,
            ..Faults::default()
        };
        assert!(bad.validate().unwrap_err().contains("late_rate"));
        assert!(
            Faults {
                fail_status: 42,
                ..Faults::default()
            }
            .validate()
            .is_err()
        );
        assert!(Faults::default().validate().is_ok());
    }
}
