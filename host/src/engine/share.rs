//! Per-tenant CPU shares (`limits.cpu_share`): when several tenants' calls
//! compute at once, each tenant gets epoch ticks in proportion to its share.
//!
//! Fair queuing by virtual time: every tick a tenant's call spends in wasm
//! adds `tick / share` to the tenant's virtual time; a call whose tenant is
//! ahead of the least-served *active* tenant (one that computed within the
//! last few ticks) by more than a little slack sits out until that tenant
//! catches up. A tenant computing alone is never paused, and one coming
//! back from idle starts level with the others instead of claiming the
//! time it missed.
//! Pure logic: callers pass the time.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A tenant counts as competing for this long after its last tick.
const ACTIVE_FOR_TICKS: u32 = 5;
/// How far ahead (in the ticks of a share-1 tenant) a tenant may run
/// before it sits out a tick.
const SLACK_TICKS: f64 = 2.0;
/// The longest a tenant sits out at once, in ticks.
const MAX_PAUSE_TICKS: u32 = 16;

#[derive(Debug, Clone)]
struct Account {
    share: f64,
    /// Weighted time, in ticks of a share-1 tenant.
    vtime: f64,
    last: Option<Instant>,
}

/// The shares of every tenant, and their virtual times.
#[derive(Debug)]
pub struct Shares {
    tick: Duration,
    accounts: Mutex<BTreeMap<String, Account>>,
}

impl Shares {
    /// Shares by tenant (tenants not named have share 1). None when no
    /// tenant has a share: nothing to arbitrate.
    pub fn new(shares: &BTreeMap<String, u32>, tick: Duration) -> Option<Self> {
        if shares.is_empty() {
            return None;
        }
        let accounts = shares
            .iter()
            .map(|(t, s)| {
                (
                    t.clone(),
                    Account {
                        share: f64::from((*s).max(1)),
                        vtime: 0.0,
                        last: None,
                    },
                )
            })
            .collect();
        Some(Shares {
            tick,
            accounts: Mutex::new(accounts),
        })
    }

    /// A call of `tenant` spent a tick in wasm at `now`: how many ticks it
    /// should sit out for tenants that got less than their share (0: none).
    pub fn at_tick(&self, tenant: &str, now: Instant) -> u32 {
        let mut accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        let window = self.tick * ACTIVE_FOR_TICKS;
        let active = |a: &Account| {
            a.last
                .is_some_and(|l| now.saturating_duration_since(l) <= window)
        };
        // The least-served competing tenant: its virtual time and share.
        let others = accounts
            .iter()
            .filter(|(t, a)| t.as_str() != tenant && active(a))
            .map(|(_, a)| (a.vtime, a.share))
            .fold(None, |m: Option<(f64, f64)>, v| {
                Some(m.map_or(v, |m| if v.0 < m.0 { v } else { m }))
            });
        let account = accounts
            .entry(tenant.to_owned())
            .or_insert_with(|| Account {
                share: 1.0,
                vtime: 0.0,
                last: None,
            });
        if !active(account)
            && let Some((least, _)) = others
        {
            // Back from idle: level with the others, no credit for the gap.
            account.vtime = account.vtime.max(least);
        }
        account.vtime += 1.0 / account.share;
        account.last = Some(now);
        match others {
            // Ahead: sit out until the least-served tenant has caught up.
            Some((least, share)) if account.vtime > least + SLACK_TICKS => {
                let ahead = account.vtime - least - SLACK_TICKS;
                ((ahead * share).ceil() as u32).clamp(1, MAX_PAUSE_TICKS)
            }
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two tenants compute side by side, tick after tick; a tenant told to
    /// sit out skips its next tick. Returns the ticks each ran.
    fn race(a_share: u32, b_share: u32, rounds: u32) -> (u32, u32) {
        let tick = Duration::from_millis(10);
        let shares = BTreeMap::from([("a".to_owned(), a_share), ("b".to_owned(), b_share)]);
        let s = Shares::new(&shares, tick).expect("shares");
        let t0 = Instant::now();
        let (mut ran, mut skip) = ([0u32; 2], [0u32; 2]);
        for round in 0..rounds {
            let now = t0 + tick * round;
            for (i, t) in ["a", "b"].iter().enumerate() {
                if skip[i] > 0 {
                    skip[i] -= 1;
                    continue;
                }
                ran[i] += 1;
                skip[i] = s.at_tick(t, now);
            }
        }
        (ran[0], ran[1])
    }

    #[test]
    fn competing_tenants_get_ticks_in_proportion_to_their_shares() {
        let (a, b) = race(1, 3, 3000);
        let ratio = f64::from(b) / f64::from(a);
        assert!((2.7..=3.3).contains(&ratio), "b/a = {ratio} ({b}/{a})");
        let (a, b) = race(1, 1, 3000);
        let ratio = f64::from(b) / f64::from(a);
        assert!((0.9..=1.1).contains(&ratio), "equal shares: {ratio}");
    }

    #[test]
    fn a_tenant_alone_is_never_paused_and_idle_time_is_no_credit() {
        let tick = Duration::from_millis(10);
        let shares = BTreeMap::from([("a".to_owned(), 1), ("b".to_owned(), 1)]);
        let s = Shares::new(&shares, tick).expect("shares");
        let t0 = Instant::now();
        for i in 0..1000 {
            assert_eq!(s.at_tick("a", t0 + tick * i), 0, "alone at tick {i}");
        }
        // b arrives after a ran 1000 ticks: it starts level, so a is not
        // starved while b "catches up".
        let later = t0 + tick * 1000;
        s.at_tick("b", later);
        assert_eq!(s.at_tick("a", later + tick), 0, "a keeps running beside b");
        assert!(
            Shares::new(&BTreeMap::new(), tick).is_none(),
            "no shares: off"
        );
    }
}
