//! Per-tenant message-rate quotas: a token bucket shared by the tenant's
//! pullers. A puller takes tokens for a pull request *before* asking for
//! messages, so a tenant over its rate waits instead of pulling — no
//! message fails, waits unsettled or spends a delivery because of it.

use std::time::{Duration, Instant};

/// Tokens and when they were last counted (pure logic; callers pass time).
#[derive(Debug, Clone)]
pub struct Bucket {
    per_second: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// `per_second` tokens a second, holding at most one second's worth
    /// (full at first).
    pub fn new(per_second: u32, now: Instant) -> Self {
        let rate = f64::from(per_second.max(1));
        Bucket {
            per_second: rate,
            capacity: rate,
            tokens: rate,
            last: now,
        }
    }

    /// The most one take may ask for.
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// Takes `n` tokens (at most the capacity) if they are there; else how
    /// long until they will be.
    pub fn try_take(&mut self, n: usize, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.last = now;
        let n = (n as f64).min(self.capacity);
        if self.tokens >= n {
            self.tokens -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((n - self.tokens) / self.per_second))
        }
    }
}

/// A tenant's `limits.max_messages_per_second`. Takers are served in
/// the order they came (a fair lock held while waiting), so a puller that
/// asks for many tokens is not starved by one that takes a few as they
/// refill.
#[derive(Debug)]
pub struct RateLimit {
    bucket: tokio::sync::Mutex<Bucket>,
    capacity: usize,
}

impl RateLimit {
    pub fn new(per_second: u32) -> Self {
        let bucket = Bucket::new(per_second, Instant::now());
        RateLimit {
            capacity: bucket.capacity(),
            bucket: tokio::sync::Mutex::new(bucket),
        }
    }

    /// The most one pull may ask for.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Waits its turn, then until `n` tokens (at most the capacity) are
    /// taken. Cancel-safe: tokens are taken only when it returns (keep the
    /// future to keep the turn).
    pub async fn take(&self, n: usize) {
        let mut bucket = self.bucket.lock().await;
        while let Err(wait) = bucket.try_take(n, Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_gives_its_rate_and_says_how_long_to_wait() {
        let t0 = Instant::now();
        let mut b = Bucket::new(100, t0);
        assert_eq!(b.capacity(), 100);
        assert_eq!(b.try_take(60, t0), Ok(()));
        assert_eq!(
            b.try_take(60, t0),
            Err(Duration::from_millis(200)),
            "40 left, 20 more in 200 ms"
        );
        assert_eq!(b.try_take(60, t0 + Duration::from_millis(200)), Ok(()));
        // Over time: never more than the rate plus one second's burst.
        let mut taken = 100; // the first two takes
        let mut now = t0 + Duration::from_millis(200);
        let end = t0 + Duration::from_secs(10);
        while now < end {
            match b.try_take(25, now) {
                Ok(()) => taken += 25,
                Err(wait) => now += wait,
            }
        }
        assert!(taken <= 100 + 100 * 10, "{taken} in 10 s at 100/s");
        assert!(
            taken >= 100 * 10 - 25,
            "{taken}: the rate is given, not withheld"
        );
        assert_eq!(
            Bucket::new(10, t0).try_take(500, t0),
            Ok(()),
            "a take is capped at the capacity"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_take_is_not_starved_by_small_ones() {
        let rate = std::sync::Arc::new(RateLimit::new(200));
        rate.take(200).await; // empty
        let small = {
            let rate = rate.clone();
            tokio::spawn(async move {
                loop {
                    rate.take(1).await;
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Taking tokens one by one as they refill kept a take of 100 waiting
        // forever; in turn it is served within about half a second.
        let served = tokio::time::timeout(Duration::from_secs(10), rate.take(100)).await;
        small.abort();
        assert!(served.is_ok(), "a take of 100 starved behind takes of 1");
    }
}
