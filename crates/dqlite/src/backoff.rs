//! The one back-off of this crate and of what is built on it: a pause that doubles after each
//! use, from a first pause up to a cap.

use std::time::Duration;

/// Pauses that double from a first pause up to a cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `first`, never above `max`.
    pub const fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { first, max, next: first }
    }

    /// The pause to take now, without moving on (to check that it fits before a deadline).
    pub fn peek(&self) -> Duration {
        self.next.min(self.max)
    }

    /// The pause to take now; the one after is twice as long, up to the cap.
    pub fn next_pause(&mut self) -> Duration {
        let now = self.peek();
        self.next = self.next.saturating_mul(2).min(self.max);
        now
    }

    /// Sleeps for [`Backoff::next_pause`].
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_pause()).await;
    }

    /// Starts again from the first pause (after a success).
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// The pause after attempt `round` (1-based) of a fresh back-off: `first` doubled
    /// `round - 1` times, at most `max`.
    pub fn nth(first: Duration, max: Duration, round: u32) -> Duration {
        let factor = 1u32.checked_shl(round.saturating_sub(1).min(16)).unwrap_or(u32::MAX);
        first.saturating_mul(factor).min(max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn pauses_double_up_to_the_cap_and_start_over_on_reset() {
        let mut backoff = Backoff::new(5 * MS, 30 * MS);
        let pauses: Vec<Duration> = (0..5).map(|_| backoff.next_pause()).collect();
        assert_eq!(pauses, [5 * MS, 10 * MS, 20 * MS, 30 * MS, 30 * MS]);
        assert_eq!(backoff.peek(), 30 * MS);
        backoff.reset();
        assert_eq!(backoff.next_pause(), 5 * MS);
        // A first pause above the cap is capped.
        assert_eq!(Backoff::new(Duration::from_secs(2), Duration::from_secs(1)).peek(), Duration::from_secs(1));
    }

    #[test]
    fn the_nth_pause_matches_the_sequence() {
        for (round, expected) in [(0, 20), (1, 20), (2, 40), (5, 320), (7, 1000), (u32::MAX, 1000)] {
            assert_eq!(Backoff::nth(20 * MS, 1000 * MS, round), expected * MS, "round {round}");
        }
        let mut backoff = Backoff::new(20 * MS, 1000 * MS);
        for round in 1..=10 {
            assert_eq!(backoff.next_pause(), Backoff::nth(20 * MS, 1000 * MS, round));
        }
    }
}
