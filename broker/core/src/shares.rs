//! Per-tenant shares of something all tenants use (webhook delivery
//! slots, open event streams): one tenant holding its whole share leaves
//! the rest to the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What each tenant holds of something shared, each at most `most`.
#[derive(Clone)]
pub struct Shares {
    most: usize,
    held: Arc<Mutex<HashMap<String, usize>>>,
}

/// One place in a tenant's share, given back when dropped.
pub struct Share {
    shares: Shares,
    tenant: String,
}

impl Shares {
    pub fn new(most: usize) -> Shares {
        Shares {
            most,
            held: Arc::default(),
        }
    }

    /// A place of `tenant`'s, unless it holds all of its share.
    pub fn take(&self, tenant: &str) -> Option<Share> {
        let mut held = self.held.lock().ok()?;
        let n = held.entry(tenant.to_owned()).or_insert(0);
        if *n >= self.most {
            return None;
        }
        *n += 1;
        Some(Share {
            shares: self.clone(),
            tenant: tenant.to_owned(),
        })
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        if let Ok(mut held) = self.shares.held.lock()
            && let Some(n) = held.get_mut(&self.tenant)
        {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_holds_at_most_its_share_until_it_gives_some_back() {
        let shares = Shares::new(2);
        let a1 = shares.take("a");
        let a2 = shares.take("a");
        assert!(a1.is_some() && a2.is_some());
        assert!(shares.take("a").is_none());
        assert!(shares.take("b").is_some());
        drop(a1);
        assert!(shares.take("a").is_some());
    }
}
