//! Parsed agent policies and connection specs for the release path, valid for one
//! configuration generation.
//!
//! Triggers bump `config_generation` on every change to `agents` or `connections`, from
//! any process (migration 0004). Entries are tagged with the generation they were read
//! at; the release path reads the current generation in the same statement as the
//! credential and throws everything away when it moved. So a change committed by the CLI
//! or another server is seen by the next release, and an unchanged configuration costs
//! no query and no JSON parse. Only agents and connections are held (operator-sized
//! tables), never credentials; the map is bounded all the same.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::model::ConnectionSpec;
use crate::policy::Policy;

/// An enabled agent as the release path needs it.
#[derive(Debug)]
pub(super) struct AgentPolicy {
    pub policy: Policy,
    /// Tokens must carry at least this epoch.
    pub token_epoch: i64,
}

/// Beyond this many entries the cache starts over (a bound, not an eviction policy:
/// deployments have tens of agents and connections).
const MAX_ENTRIES: usize = 4096;

#[derive(Default)]
pub(super) struct ConfigCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    generation: i64,
    /// The highest generation ever observed (never reset).
    highest: i64,
    policies: HashMap<String, Arc<AgentPolicy>>,
    specs: HashMap<String, Arc<ConnectionSpec>>,
}

impl Inner {
    /// Moves to `generation` if it is newer; returns whether entries of `generation` belong here.
    fn advance(&mut self, generation: i64) -> bool {
        if generation > self.generation {
            *self = Inner { generation, highest: self.highest.max(generation), ..Inner::default() };
        }
        generation == self.generation
    }

    fn make_room(&mut self) {
        if self.policies.len() + self.specs.len() >= MAX_ENTRIES {
            self.policies.clear();
            self.specs.clear();
        }
    }
}

impl ConfigCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An enabled agent's policy, with the generation it is valid for.
    pub fn policy(&self, agent: &str) -> Option<(i64, Arc<AgentPolicy>)> {
        let g = self.lock();
        g.policies.get(agent).map(|p| (g.generation, p.clone()))
    }

    pub fn spec(&self, connection: &str) -> Option<(i64, Arc<ConnectionSpec>)> {
        let g = self.lock();
        g.specs.get(connection).map(|s| (g.generation, s.clone()))
    }

    pub fn put_policy(&self, generation: i64, agent: &str, policy: Arc<AgentPolicy>) {
        let mut g = self.lock();
        if g.advance(generation) {
            g.make_room();
            g.policies.insert(agent.to_owned(), policy);
        }
    }

    pub fn put_spec(&self, generation: i64, connection: &str, spec: Arc<ConnectionSpec>) {
        let mut g = self.lock();
        if g.advance(generation) {
            g.make_room();
            g.specs.insert(connection.to_owned(), spec);
        }
    }

    /// The highest generation observed so far.
    pub fn highest(&self) -> i64 {
        self.lock().highest
    }

    /// Records that a read begun when `seen` was the highest generation observed found the
    /// configuration at `generation`. `Err(seen)` when `generation` is lower than `seen`: the
    /// database went back (a backup restored under a running server); its entries go, so that
    /// nothing newer-looking stays. A read merely older than a generation another read observed
    /// while it ran (concurrent reads finish in any order) is no such sign, and changes nothing.
    /// Otherwise any other generation's entries go.
    pub fn observe(&self, generation: i64, seen: i64) -> Result<(), i64> {
        let mut g = self.lock();
        if generation < seen {
            *g = Inner { generation, highest: g.highest, ..Inner::default() };
            return Err(seen);
        }
        if generation < g.highest {
            return Ok(());
        }
        if g.generation != generation {
            *g = Inner { generation, highest: generation, ..Inner::default() };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Arc<AgentPolicy> {
        Arc::new(AgentPolicy { policy: Policy::default(), token_epoch: 1 })
    }

    #[test]
    fn entries_live_for_one_generation() {
        let c = ConfigCache::default();
        c.put_policy(3, "a", policy());
        assert_eq!(c.policy("a").map(|(g, _)| g), Some(3));
        c.observe(3, 3).unwrap();
        assert!(c.policy("a").is_some());
        c.observe(4, 3).unwrap();
        assert!(c.policy("a").is_none(), "a newer generation drops everything");
        c.put_policy(3, "a", policy());
        assert!(c.policy("a").is_none(), "an entry read at an older generation is not kept");
        c.put_policy(4, "b", policy());
        assert_eq!(c.observe(3, 3), Ok(()), "a read begun before generation 4 was seen may still find 3");
        assert!(c.policy("b").is_some(), "and leaves the newer entries alone");
        assert_eq!(c.observe(2, 4), Err(4), "a read begun after 4 was seen that finds 2: it went back");
        assert!(c.policy("b").is_none(), "and nothing newer-looking is kept");
        assert_eq!(c.highest(), 4, "what was seen stays seen");
        assert_eq!(c.observe(3, c.highest()), Err(4), "so the next read that finds less is refused too");
        assert_eq!(c.observe(4, 4), Ok(()));
    }

    #[test]
    fn bounded() {
        let c = ConfigCache::default();
        for i in 0..MAX_ENTRIES + 10 {
            c.put_policy(1, &format!("a{i}"), policy());
        }
        assert!(c.lock().policies.len() <= MAX_ENTRIES);
        assert!(c.policy(&format!("a{}", MAX_ENTRIES + 9)).is_some());
    }
}
