//! Wrong keys counted per client address and per key id, so that guessing
//! is cut off while a valid key is never refused for someone else's
//! guesses. Kept by each broker on its own: with N brokers behind a
//! balancer a source gets at most N times the limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a wrong key is counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Guesser {
    /// The client's address: the TCP peer, or what the trusted proxy in
    /// front says it is.
    Address(IpAddr),
    /// The key id a guess names, so that guesses spread over many
    /// addresses at one key are cut off too.
    Key(String),
}

const WINDOW: Duration = Duration::from_secs(60);
/// Sources remembered at most. Past it, those whose minute is over go,
/// and while it is still full a new source is not counted: the memory
/// stays bounded whatever addresses and ids a flood makes up.
const KEPT: usize = 100_000;

/// Failed authentications per source in the current minute.
#[derive(Debug, Default)]
pub struct Guesses {
    max_per_minute: u32,
    /// Source → (start of its minute, failures in it).
    seen: Mutex<HashMap<Guesser, (Instant, u32)>>,
}

impl Guesses {
    pub fn new(max_per_minute: u32) -> Guesses {
        Guesses {
            max_per_minute,
            seen: Mutex::default(),
        }
    }

    pub fn limited(&self) -> bool {
        self.max_per_minute > 0
    }

    /// Seconds until the most blocked of `from` may try again, if any of
    /// them is over the limit.
    pub fn blocked(&self, from: &[Guesser], now: Instant) -> Option<u64> {
        let seen = self.seen.lock().ok()?;
        from.iter()
            .filter_map(|g| {
                let (since, n) = seen.get(g)?;
                let left = WINDOW
                    .checked_sub(now.saturating_duration_since(*since))
                    .filter(|l| !l.is_zero())?;
                (*n >= self.max_per_minute).then(|| left.as_secs().max(1))
            })
            .max()
    }

    /// Counts one wrong key against each of `from`.
    pub fn failed(&self, from: &[Guesser], now: Instant) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        for g in from {
            if !seen.contains_key(g) && seen.len() >= KEPT {
                seen.retain(|_, (since, _)| now.saturating_duration_since(*since) < WINDOW);
                if seen.len() >= KEPT {
                    continue;
                }
            }
            let entry = seen.entry(g.clone()).or_insert((now, 0));
            if now.saturating_duration_since(entry.0) >= WINDOW {
                *entry = (now, 0);
            }
            entry.1 += 1;
        }
    }

    #[cfg(test)]
    fn sources(&self) -> usize {
        self.seen.lock().map(|s| s.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn addr(n: u32) -> Guesser {
        Guesser::Address(IpAddr::V4(Ipv4Addr::from(n)))
    }

    #[test]
    fn each_source_is_cut_off_on_its_own_until_its_minute_is_over() {
        let guesses = Guesses::new(3);
        let now = Instant::now();
        let from = [addr(1), Guesser::Key("k1".into())];
        for _ in 0..3 {
            assert_eq!(guesses.blocked(&from, now), None);
            guesses.failed(&from, now);
        }
        assert_eq!(guesses.blocked(&from, now), Some(60));
        assert_eq!(guesses.blocked(&[addr(1)], now), Some(60));
        assert_eq!(guesses.blocked(&[Guesser::Key("k1".into())], now), Some(60));
        // Another address at another key is not held up.
        assert_eq!(
            guesses.blocked(&[addr(2), Guesser::Key("k2".into())], now),
            None
        );
        assert_eq!(guesses.blocked(&from, now + WINDOW), None);
    }

    #[test]
    fn a_flood_of_made_up_sources_stays_bounded() {
        let guesses = Guesses::new(1);
        let now = Instant::now();
        for n in 0..(KEPT as u32 + 5_000) {
            guesses.failed(&[addr(n)], now);
        }
        assert_eq!(guesses.sources(), KEPT);
        // Once their minute is over, room is made again.
        guesses.failed(&[addr(u32::MAX)], now + WINDOW);
        assert_eq!(guesses.sources(), 1);
    }
}
