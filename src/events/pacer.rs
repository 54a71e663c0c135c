//! How many requests the rate limit allows right now, learnt from Intercom's headers rather than assumed:
//! `X-RateLimit-Limit` per window, `X-RateLimit-Remaining` in it, `X-RateLimit-Reset` when it ends.
//!
//! Each answer tells how many requests were left in the window when the server counted that request.
//! The answer with the lowest `Remaining` in the window is the latest point of the server's count we
//! know. Requests counted after it can only be those sent after its answer arrived, or those in flight
//! then that have not answered since (one that answered since, with a higher `Remaining`, was counted
//! before it; one with a lower `Remaining` becomes the new latest point). So the requests left are at
//! most that `Remaining`, less those two groups: a bound that never exceeds what the server will accept
//! (whoever else spends the same budget), and that loosens again as answers come back.
//!
//! When the window ends, the whole limit is available again, less every request in flight (any may land
//! in the new window). A 429 empties the budget until its reset. Pure: time is passed in, in Unix
//! milliseconds.

use std::collections::BTreeSet;
use std::time::Duration;

use super::retry::RateLimit;

/// The most the pacer waits past a window's end for a server whose clock runs behind ours.
const MAX_GRACE_MS: u64 = 2_000;

/// Whether a request may be sent now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Gate {
    Open,
    /// The budget is spent: wait until this Unix time in milliseconds.
    WaitUntil(u64),
    /// Wait for an answer in flight to say more.
    WaitForAnswers,
}

#[derive(Debug)]
pub(crate) struct Pacer {
    /// The longest any one wait may last.
    max_wait_ms: u64,
    /// Whether the server sends rate-limit headers: unknown until the first answer.
    headers_seen: Option<bool>,
    limit: u32,
    /// Requests sent so far; each request's sequence number is the count before it.
    sent: u64,
    /// Sequence numbers of the requests awaiting an answer.
    in_flight: BTreeSet<u64>,
    /// The end of the current window; `None` after the window ended here, until an answer tells when
    /// the next one ends.
    window_end_ms: Option<u64>,
    /// The end of the window before; answers from it or earlier are stale.
    previous_end_ms: u64,
    /// The lowest `Remaining` seen in the current window (the limit right after a window ends).
    remaining: u32,
    /// `sent` when `remaining` was observed: requests from then on may be counted after it.
    mark: u64,
    /// The first request answered after the current window's end by our clock: it may have been counted
    /// in the next window.
    late_min: u64,
    /// Set by a 429 that came without a usable reset time.
    blocked_until_ms: u64,
    /// Learnt when a 429 shows the server's window outlasting ours: added to every window's end.
    grace_ms: u64,
}

impl Pacer {
    pub(crate) fn new(max_wait: Duration) -> Self {
        Self {
            max_wait_ms: max_wait.as_millis().try_into().unwrap_or(u64::MAX),
            headers_seen: None,
            limit: 0,
            sent: 0,
            in_flight: BTreeSet::new(),
            window_end_ms: None,
            previous_end_ms: 0,
            remaining: u32::MAX,
            mark: 0,
            late_min: u64::MAX,
            blocked_until_ms: 0,
            grace_ms: 0,
        }
    }

    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Requests that can still be sent in the current window without going over.
    fn budget(&self) -> u64 {
        let unanswered_then = self.in_flight.range(..self.mark).count() as u64;
        let sent_since = self.sent - self.mark;
        u64::from(self.remaining).saturating_sub(unanswered_then + sent_since)
    }

    /// Whether one more request may go now.
    pub(crate) fn gate(&mut self, now_ms: u64) -> Gate {
        if now_ms < self.blocked_until_ms {
            return Gate::WaitUntil(self.blocked_until_ms);
        }
        let idle = self.in_flight.is_empty();
        match self.headers_seen {
            // The first answer says what the limit is: one request until then.
            None if idle => return Gate::Open,
            None => return Gate::WaitForAnswers,
            Some(false) => return Gate::Open,
            Some(true) => {}
        }
        if let Some(end) = self.window_end_ms {
            if now_ms >= end.saturating_add(self.grace_ms) {
                self.previous_end_ms = end;
                self.window_end_ms = None;
                self.remaining = self.limit;
                // Everything in flight, and anything answered since the end, may land in the new window.
                let first_in_flight = self.in_flight.first().copied().unwrap_or(self.sent);
                self.mark = first_in_flight.min(self.late_min).min(self.sent);
                self.late_min = u64::MAX;
            }
        }
        if self.budget() > 0 {
            return Gate::Open;
        }
        match self.window_end_ms {
            Some(end) => Gate::WaitUntil(end.saturating_add(self.grace_ms)),
            // Nothing in flight will tell us about the new window: ask with one request.
            None if idle => Gate::Open,
            None => Gate::WaitForAnswers,
        }
    }

    /// A request is being sent: its sequence number, to give back with its answer.
    pub(crate) fn on_send(&mut self) -> u64 {
        let seq = self.sent;
        self.sent += 1;
        self.in_flight.insert(seq);
        seq
    }

    /// The answer to request `seq` (`rate_limited` for a 429; no headers for a network failure).
    /// `fallback_wait` is how long to pause after a 429 that gave no reset time.
    pub(crate) fn observe(
        &mut self,
        seq: u64,
        rate: RateLimit,
        rate_limited: bool,
        now_ms: u64,
        fallback_wait: Duration,
    ) {
        self.in_flight.remove(&seq);
        if self.window_end_ms.is_some_and(|end| now_ms >= end) {
            self.late_min = self.late_min.min(seq);
        }
        let (Some(limit), Some(remaining), Some(reset)) = (rate.limit, rate.remaining, rate.reset) else {
            self.headers_seen.get_or_insert(false);
            if rate_limited {
                let fallback: u64 = fallback_wait.as_millis().try_into().unwrap_or(u64::MAX);
                self.blocked_until_ms = self.blocked_until_ms.max(now_ms.saturating_add(fallback));
            }
            return;
        };
        self.headers_seen = Some(true);
        self.limit = limit;
        let end = reset
            .saturating_mul(1000)
            .min(now_ms.saturating_add(self.max_wait_ms));
        if rate_limited && end <= now_ms {
            // Refused in a window our clock says is over: the server's clock is behind ours.
            self.grace_ms = self.grace_ms.saturating_mul(2).clamp(100, MAX_GRACE_MS);
            self.blocked_until_ms = now_ms + self.grace_ms;
            return;
        }
        // A 429 is not counted; it says the window has nothing left.
        let remaining = if rate_limited { 0 } else { remaining };
        match self.window_end_ms {
            // From a window that has already ended.
            Some(current) if end < current => return,
            _ if end <= self.previous_end_ms => return,
            Some(current) if end == current => {
                if remaining >= self.remaining {
                    // Counted before the latest point we know: nothing new.
                    return;
                }
            }
            // The first answer from the window we moved into when the last one ended: at most the
            // limit we assumed.
            None => {
                self.window_end_ms = Some(end);
                if remaining >= self.remaining {
                    return;
                }
            }
            // The server moved to a new window before our clock did.
            Some(current) => {
                self.previous_end_ms = current;
                self.window_end_ms = Some(end);
            }
        }
        self.remaining = remaining;
        self.mark = self.sent;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(60);
    const FALLBACK: Duration = Duration::from_secs(1);

    fn rate(limit: u32, remaining: u32, reset: u64) -> RateLimit {
        RateLimit {
            limit: Some(limit),
            remaining: Some(remaining),
            reset: Some(reset),
        }
    }

    /// Sends while the gate is open, up to `max`; returns the sequence numbers sent.
    fn send_all(p: &mut Pacer, now_ms: u64, max: usize) -> Vec<u64> {
        let mut sent = Vec::new();
        while sent.len() < max && p.gate(now_ms) == Gate::Open {
            sent.push(p.on_send());
        }
        sent
    }

    /// A pacer that has learnt a window ending at `reset` seconds with `remaining` left.
    fn learnt(limit: u32, remaining: u32, reset: u64) -> Pacer {
        let mut p = Pacer::new(WAIT);
        let seq = p.on_send();
        p.observe(seq, rate(limit, remaining, reset), false, 0, FALLBACK);
        p
    }

    #[test]
    fn one_request_until_the_first_answer() {
        let mut p = Pacer::new(WAIT);
        assert_eq!(send_all(&mut p, 1_000, 100), [0]);
        assert_eq!(p.gate(1_000), Gate::WaitForAnswers);
        p.observe(0, rate(10, 9, 10), false, 1_050, FALLBACK);
        // Nine left in the window, then wait for its end.
        assert_eq!(send_all(&mut p, 1_050, 100).len(), 9);
        assert_eq!(p.gate(1_060), Gate::WaitUntil(10_000));
    }

    #[test]
    fn answers_counted_in_order_leave_the_budget_exact() {
        let mut p = learnt(100, 100, 10);
        let burst = send_all(&mut p, 10, 32);
        assert_eq!(burst.len(), 32);
        // The server counted the burst in order; the answers come back in order too.
        for (i, seq) in burst.iter().enumerate() {
            p.observe(*seq, rate(100, 99 - i as u32, 10), false, 20, FALLBACK);
            // Never more than the true remainder; exact once the earlier requests have answered.
            assert_eq!(p.budget(), 99 - 31);
        }
        assert_eq!(send_all(&mut p, 30, 1000).len(), 68);
        assert_eq!(p.gate(30), Gate::WaitUntil(10_000));
    }

    #[test]
    fn answers_out_of_order_never_overestimate() {
        let mut p = learnt(100, 100, 10);
        let burst = send_all(&mut p, 10, 4);
        // The server counted 3, 0, 2, 1 (remaining 99, 98, 97, 96); answers arrive 0, 3, 1, 2.
        let counted_remaining = |seq: u64| match seq - burst[0] {
            3 => 99,
            0 => 98,
            2 => 97,
            _ => 96,
        };
        // All four are counted by the time the last answer arrives: 96 left at most, at any point.
        for offset in [0, 3, 1, 2] {
            let seq = burst[0] + offset;
            p.observe(seq, rate(100, counted_remaining(seq), 10), false, 20, FALLBACK);
            assert!(p.budget() <= 96, "after {offset}: {}", p.budget());
        }
        assert_eq!(p.budget(), 96);
    }

    #[test]
    fn other_users_of_the_budget_are_seen_in_the_answers() {
        let mut p = learnt(100, 100, 10);
        let sent = send_all(&mut p, 10, 5);
        // Another client spent 50: the first answer reports 49 left, four of ours still out.
        p.observe(sent[0], rate(100, 49, 10), false, 20, FALLBACK);
        assert_eq!(send_all(&mut p, 30, 1000).len(), 45);
    }

    #[test]
    fn the_full_limit_returns_when_the_window_ends_less_what_is_in_flight() {
        let mut p = learnt(10, 10, 10);
        let old = send_all(&mut p, 9_000, 3);
        p.observe(old[0], rate(10, 0, 10), false, 9_000, FALLBACK);
        assert_eq!(p.gate(9_500), Gate::WaitUntil(10_000));
        // Two requests of the old window are still out: they may land in the new one.
        let new = send_all(&mut p, 10_000, 100);
        assert_eq!(new.len(), 8);
        // A late answer from the old window changes nothing; the first from the new one fixes its end.
        p.observe(old[1], rate(10, 0, 10), false, 10_010, FALLBACK);
        assert_eq!(p.gate(10_010), Gate::WaitForAnswers);
        p.observe(new[0], rate(10, 1, 20), false, 10_020, FALLBACK);
        assert_eq!(p.gate(10_030), Gate::WaitUntil(20_000));
    }

    #[test]
    fn a_429_waits_for_its_reset() {
        let mut p = learnt(10, 10, 10);
        let sent = send_all(&mut p, 100, 3);
        p.observe(sent[0], rate(10, 0, 10), true, 500, FALLBACK);
        assert_eq!(p.gate(600), Gate::WaitUntil(10_000));
        p.observe(sent[1], rate(10, 0, 10), true, 600, FALLBACK);
        p.observe(sent[2], rate(10, 0, 10), true, 600, FALLBACK);
        assert_eq!(p.gate(10_000), Gate::Open);
        assert_eq!(send_all(&mut p, 10_000, 100).len(), 10);
    }

    #[test]
    fn a_far_reset_is_waited_for_at_most_the_bound() {
        let mut p = Pacer::new(Duration::from_secs(5));
        let seq = p.on_send();
        p.observe(seq, rate(10, 0, 3_600), true, 1_000, FALLBACK);
        assert_eq!(p.gate(1_000), Gate::WaitUntil(6_000));
    }

    #[test]
    fn a_server_clock_behind_ours_teaches_a_grace_period() {
        let mut p = learnt(10, 0, 10);
        assert_eq!(p.gate(10_000), Gate::Open);
        let seq = p.on_send();
        // Still the old window on the server.
        p.observe(seq, rate(10, 0, 10), true, 10_005, FALLBACK);
        assert_eq!(p.gate(10_050), Gate::WaitUntil(10_105));
        let seq = p.on_send();
        p.observe(seq, rate(10, 9, 20), false, 10_120, FALLBACK);
        assert_eq!(send_all(&mut p, 10_130, 100).len(), 9);
        // From now on, windows are taken to end 100 ms after the reset time.
        assert_eq!(p.gate(19_000), Gate::WaitUntil(20_100));
    }

    #[test]
    fn without_headers_only_429s_pause() {
        let mut p = Pacer::new(WAIT);
        let first = send_all(&mut p, 0, 50);
        assert_eq!(first.len(), 1);
        p.observe(first[0], RateLimit::default(), false, 10, FALLBACK);
        let sent = send_all(&mut p, 20, 50);
        assert_eq!(sent.len(), 50);
        p.observe(sent[0], RateLimit::default(), true, 30, FALLBACK);
        assert_eq!(p.gate(40), Gate::WaitUntil(1_030));
        assert_eq!(p.gate(1_030), Gate::Open);
        assert_eq!(p.in_flight(), 49);
    }
}
