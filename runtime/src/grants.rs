//! Proof that a result, a usage record, a running event or a streamed token
//! comes from the node its attempt was assigned to, and that a job is one a
//! broker admitted (its seal). The dispatcher hands each assignment a
//! grant, an HMAC of (job, attempt, node) under a key only brokers and
//! dispatchers can read; the agent attaches proofs derived from its grant,
//! one per kind of claim, and never publishes the grant itself. Whoever
//! holds the key checks a claim without looking anything up, so a node's
//! NATS user can publish on any subject it is allowed and still never make
//! another node's job's result or ledger row.

use std::sync::Arc;

use async_nats::jetstream::{self, Context};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use switchyard_schemas::{EventKind, Job, JobEvent, JobResult, StreamChunk, UsageEvent, subjects};

use crate::NatsConfig;
use crate::nats::NatsError;

type HmacSha256 = Hmac<Sha256>;

/// The bucket's key holding the grants' key.
const KEY_NAME: &str = "grants";

/// What a proof vouches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim<'a> {
    /// A result, with the digest of its output when that is stored apart.
    Result(Option<&'a str>),
    Usage,
    Running,
    Chunk,
}

impl Claim<'_> {
    fn feed(self, mac: &mut HmacSha256) {
        match self {
            Claim::Result(digest) => {
                mac.update(b"result");
                mac.update(digest.unwrap_or_default().as_bytes());
            }
            Claim::Usage => mac.update(b"usage"),
            Claim::Running => mac.update(b"running"),
            Claim::Chunk => mac.update(b"chunk"),
        }
    }
}

/// The platform's key for grants.
#[derive(Clone)]
pub struct Grants {
    key: Arc<[u8; 32]>,
}

impl std::fmt::Debug for Grants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Grants(..)")
    }
}

impl Grants {
    /// The key every broker and dispatcher shares, made by the first of
    /// them to start and kept in a bucket agents' users cannot read.
    pub async fn load(js: &Context, cfg: &NatsConfig) -> Result<Grants, NatsError> {
        let bucket = js
            .create_or_update_key_value(jetstream::kv::Config {
                bucket: subjects::SECRETS_BUCKET.to_owned(),
                history: 1,
                storage: jetstream::stream::StorageType::File,
                num_replicas: cfg.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| NatsError::Bucket(e.to_string()))?;
        let mut fresh = [0u8; 32];
        getrandom::fill(&mut fresh).map_err(|e| NatsError::Bucket(e.to_string()))?;
        // Whoever creates it first wins; everyone then reads the same key.
        let _ = bucket.create(KEY_NAME, fresh.to_vec().into()).await;
        let stored = bucket
            .get(KEY_NAME)
            .await
            .map_err(|e| NatsError::Bucket(e.to_string()))?
            .ok_or_else(|| NatsError::Bucket("the grants' key is missing".into()))?;
        let key: [u8; 32] = stored
            .as_ref()
            .try_into()
            .map_err(|_| NatsError::Bucket("the grants' key is not 32 bytes".into()))?;
        Ok(Grants::from_key(key))
    }

    pub fn from_key(key: [u8; 32]) -> Grants {
        Grants { key: Arc::new(key) }
    }

    /// The grant for running `attempt` of `job_id` on `node` (empty for
    /// work no node did, as a refusal).
    pub fn grant(&self, job_id: &str, attempt: u32, node: &str) -> String {
        let mut mac = mac(self.key.as_slice());
        for part in [job_id.as_bytes(), &attempt.to_be_bytes(), node.as_bytes()] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        hex::encode(mac.finalize().into_bytes())
    }

    /// The proof the platform itself attaches to a claim it makes.
    pub fn prove(&self, claim: Claim<'_>, job_id: &str, attempt: u32, node: &str) -> String {
        prove(&self.grant(job_id, attempt, node), claim)
    }

    /// Whether `proof` is the one made from the grant of (`job_id`,
    /// `attempt`, `node`) for `claim`.
    pub fn verifies(
        &self,
        claim: Claim<'_>,
        job_id: &str,
        attempt: u32,
        node: &str,
        proof: Option<&str>,
    ) -> bool {
        let Some(given) = proof.and_then(|p| hex::decode(p).ok()) else {
            return false;
        };
        let mut mac = mac(self.grant(job_id, attempt, node).as_bytes());
        claim.feed(&mut mac);
        mac.verify_slice(&given).is_ok()
    }
}

impl Grants {
    /// The seal on a job's content: everything but the attempt and its
    /// failures, which retries change.
    pub fn seal(&self, job: &Job) -> String {
        hex::encode(self.job_mac(job).finalize().into_bytes())
    }

    /// Whether a job carries the seal a broker gave it at admission.
    pub fn sealed(&self, job: &Job) -> bool {
        hex::decode(&job.seal).is_ok_and(|seal| self.job_mac(job).verify_slice(&seal).is_ok())
    }

    fn job_mac(&self, job: &Job) -> HmacSha256 {
        let content = Job {
            attempt: 0,
            failures: Vec::new(),
            seal: String::new(),
            ..job.clone()
        };
        let mut mac = mac(self.key.as_slice());
        mac.update(b"job");
        // JSON of one struct is the same bytes however often it is made.
        mac.update(&serde_json::to_vec(&content).unwrap_or_default());
        mac
    }

    /// Whether a running event comes from the node its attempt was
    /// assigned to; the other events are the platform's and pass.
    pub fn vouches_event(&self, e: &JobEvent) -> bool {
        match &e.kind {
            EventKind::Running { node } => self.verifies(
                Claim::Running,
                &e.job_id,
                e.attempt,
                node,
                e.proof.as_deref(),
            ),
            _ => true,
        }
    }

    /// Whether a piece of streamed output comes from the node its attempt
    /// was assigned to.
    pub fn vouches_chunk(&self, c: &StreamChunk) -> bool {
        self.verifies(
            Claim::Chunk,
            &c.job_id,
            c.attempt,
            &c.node,
            c.proof.as_deref(),
        )
    }

    /// Whether a usage record comes from the node its attempt was
    /// assigned to.
    pub fn vouches_usage(&self, u: &UsageEvent) -> bool {
        self.verifies(
            Claim::Usage,
            &u.job_id,
            u.attempt,
            &u.node,
            u.proof.as_deref(),
        )
    }

    /// Whether a result comes from the node its attempt was assigned to,
    /// or from the platform, with the output it was made with, and the
    /// usage it carries, if any, from that node for that attempt.
    pub fn vouches_result(&self, r: &JobResult) -> bool {
        self.verifies(
            Claim::Result(r.output_sha256.as_deref()),
            &r.job_id,
            r.attempt,
            r.node.as_deref().unwrap_or_default(),
            r.proof.as_deref(),
        ) && r.usage_record.as_ref().is_none_or(|u| {
            u.job_id == r.job_id
                && u.attempt == r.attempt
                && r.node.as_ref() == Some(&u.node)
                && self.vouches_usage(u)
        })
    }
}

/// The proof a grant's holder attaches to `claim`.
pub fn prove(grant: &str, claim: Claim<'_>) -> String {
    let mut mac = mac(grant.as_bytes());
    claim.feed(&mut mac);
    hex::encode(mac.finalize().into_bytes())
}

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length.
    match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_holds_only_for_its_job_attempt_node_and_claim() {
        let grants = Grants::from_key([7; 32]);
        let grant = grants.grant("j", 2, "node-a");
        let result = Claim::Result(None);
        let proof = prove(&grant, result);
        assert!(grants.verifies(result, "j", 2, "node-a", Some(&proof)));
        for (claim, job, attempt, node) in [
            (Claim::Usage, "j", 2, "node-a"),
            (Claim::Result(Some("digest")), "j", 2, "node-a"),
            (result, "k", 2, "node-a"),
            (result, "j", 3, "node-a"),
            (result, "j", 2, "node-b"),
        ] {
            assert!(!grants.verifies(claim, job, attempt, node, Some(&proof)));
        }
        assert!(!grants.verifies(result, "j", 2, "node-a", None));
        assert!(!grants.verifies(result, "j", 2, "node-a", Some("zz")));
        let other = Grants::from_key([8; 32]);
        assert!(!other.verifies(result, "j", 2, "node-a", Some(&proof)));
        // Parts are length-framed: ("j1", "-a") is not ("j", "1-a").
        assert_ne!(grants.grant("ab", 1, "c"), grants.grant("a", 1, "bc"));
    }

    #[test]
    fn a_result_counts_only_with_usage_its_own_attempt_vouches_for() {
        let grants = Grants::from_key([7; 32]);
        let grant = grants.grant("j", 1, "node-a");
        let usage = |job: &str, proof: &str| UsageEvent {
            proof: Some(prove(proof, Claim::Usage)),
            ..UsageEvent::fixture(job, "node-a")
        };
        let result = |usage_record| JobResult {
            node: Some("node-a".into()),
            proof: Some(prove(&grant, Claim::Result(None))),
            usage_record,
            ..JobResult::fixture(
                "j",
                switchyard_schemas::Outcome::Failed {
                    error: switchyard_schemas::JobError::new(
                        switchyard_schemas::ErrorClass::Internal,
                        "x",
                    ),
                },
            )
        };
        assert!(grants.vouches_result(&result(None)));
        assert!(grants.vouches_result(&result(Some(usage("j", &grant)))));
        // A usage record made up, or one of another job's attempt that
        // the node holds a grant for, makes the whole result a forgery.
        assert!(!grants.vouches_result(&result(Some(usage("j", "made up")))));
        let other = grants.grant("k", 1, "node-a");
        assert!(!grants.vouches_result(&result(Some(usage("k", &other)))));
    }

    #[test]
    fn a_seal_holds_across_retries_and_breaks_on_any_other_change() {
        let grants = Grants::from_key([7; 32]);
        let mut job = Job::fixture("j");
        job.seal = grants.seal(&job);
        assert!(grants.sealed(&job));
        let failure = switchyard_schemas::Failure {
            attempt: 1,
            node: "node-a".into(),
            at_ms: 1,
            error: switchyard_schemas::JobError::new(
                switchyard_schemas::ErrorClass::Overloaded,
                "busy",
            ),
        };
        assert!(grants.sealed(&job.retry(failure)));
        assert!(grants.sealed(&job.requeue()));
        let round_trip: Job =
            switchyard_schemas::decode(&switchyard_schemas::encode(&job).unwrap()).unwrap();
        assert!(grants.sealed(&round_trip));
        for changed in [
            Job {
                tenant: "other".into(),
                ..job.clone()
            },
            Job {
                model: "other".into(),
                ..job.clone()
            },
            Job {
                alias: Some("other".into()),
                ..job.clone()
            },
            Job {
                id: "k".into(),
                ..job.clone()
            },
            Job {
                max_attempts: 9,
                ..job.clone()
            },
            Job {
                seal: String::new(),
                ..job.clone()
            },
        ] {
            assert!(!grants.sealed(&changed), "{changed:?}");
        }
        assert!(!Grants::from_key([8; 32]).sealed(&job));
    }
}
