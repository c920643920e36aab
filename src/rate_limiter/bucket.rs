//! One token bucket, as Firecracker defines it: `size` tokens that refill
//! continuously at `size` per `refill_time`, plus a one-time burst that is
//! spent first and never refilled.
//!
//! Time is passed in (nanoseconds on any monotonic scale), so the maths is
//! testable without sleeping. Refill keeps the remainder of each division,
//! so no token is lost to rounding however often it is called.

/// Why [`TokenBucket::reduce`] refused, and how long until it would not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    /// The tokens were taken.
    Taken,
    /// Not enough tokens: try again in (at least) this many nanoseconds.
    Wait(u64),
}

/// A bucket of `size` tokens refilled at `size` per `refill_ns`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    size: u64,
    one_time_burst: u64,
    refill_ns: u64,
    budget: u64,
    /// Tokens spent beyond an empty bucket (a request larger than the
    /// bucket, or one charged after the fact): repaid before the budget
    /// grows again.
    debt: u64,
    /// `elapsed * size` not yet turned into a whole token, in units of
    /// 1/`refill_ns` token.
    remainder: u128,
    last_refill_ns: u64,
}

impl TokenBucket {
    /// A full bucket at time `now_ns`. `size` and `refill_ns` must not be
    /// 0 (the config's validation guarantees it).
    pub fn new(size: u64, one_time_burst: u64, refill_ns: u64, now_ns: u64) -> Self {
        Self {
            size: size.max(1),
            one_time_burst,
            refill_ns: refill_ns.max(1),
            budget: size.max(1),
            debt: 0,
            remainder: 0,
            last_refill_ns: now_ns,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn one_time_burst(&self) -> u64 {
        self.one_time_burst
    }

    /// Tokens available now (not counting the one-time burst).
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Adds what the time since the last refill earned: debt first, then
    /// the budget, up to `size`.
    pub fn refill(&mut self, now_ns: u64) {
        let elapsed = now_ns.saturating_sub(self.last_refill_ns);
        self.last_refill_ns = self.last_refill_ns.max(now_ns);
        let earned = u128::from(elapsed) * u128::from(self.size) + self.remainder;
        let refill_ns = u128::from(self.refill_ns);
        let mut tokens = u64::try_from(earned / refill_ns).unwrap_or(u64::MAX);
        self.remainder = earned % refill_ns;
        let repaid = tokens.min(self.debt);
        self.debt -= repaid;
        tokens -= repaid;
        self.budget = self.budget.saturating_add(tokens).min(self.size);
        if self.budget == self.size {
            // A full bucket earns nothing more: no credit carried over.
            self.remainder = 0;
        }
    }

    /// Takes `tokens` at `now_ns`: from the one-time burst first, then the
    /// budget. A request larger than the bucket can never fit, so it is
    /// taken once the bucket is full and the excess becomes debt (the
    /// bucket then stays empty as long as the excess takes to refill).
    pub fn reduce(&mut self, tokens: u64, now_ns: u64) -> Reduction {
        let from_burst = tokens.min(self.one_time_burst);
        let rest = tokens - from_burst;
        if rest == 0 {
            self.one_time_burst -= from_burst;
            return Reduction::Taken;
        }
        self.refill(now_ns);
        let fits = self.debt == 0 && rest <= self.budget;
        let oversize_on_full = rest > self.size && self.debt == 0 && self.budget == self.size;
        if fits || oversize_on_full {
            self.one_time_burst -= from_burst;
            self.charge(rest);
            return Reduction::Taken;
        }
        // Wait until the budget covers the request, or is full for one
        // larger than the bucket.
        let target = rest.min(self.size);
        Reduction::Wait(self.time_until(target))
    }

    /// Takes `tokens` whether or not they are there (for work already done,
    /// like a frame received): what the budget lacks becomes debt.
    pub fn charge(&mut self, tokens: u64) {
        let from_budget = tokens.min(self.budget);
        self.budget -= from_budget;
        self.debt = self.debt.saturating_add(tokens - from_budget);
    }

    /// Gives back `tokens` taken by a request that did not go ahead.
    pub fn undo(&mut self, tokens: u64) {
        let repaid = tokens.min(self.debt);
        self.debt -= repaid;
        self.budget = self.budget.saturating_add(tokens - repaid).min(self.size);
    }

    /// Whether anything is left to spend now (refilled to `now_ns`).
    pub fn has_tokens(&mut self, now_ns: u64) -> bool {
        if self.one_time_burst > 0 {
            return true;
        }
        self.refill(now_ns);
        self.debt == 0 && self.budget > 0
    }

    /// Nanoseconds until the budget reaches `target` with no debt; at
    /// least 1.
    pub fn time_until(&self, target: u64) -> u64 {
        let missing = u128::from(self.debt) + u128::from(target.saturating_sub(self.budget));
        let needed = missing * u128::from(self.refill_ns);
        let still = needed.saturating_sub(self.remainder);
        let ns = still.div_ceil(u128::from(self.size));
        u64::try_from(ns).unwrap_or(u64::MAX).max(1)
    }
}
