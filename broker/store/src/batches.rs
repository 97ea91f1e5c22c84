//! Records of uploaded files and of batches: the catalogue of the object
//! store's files, and each batch's progress through its input.

use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::{JobRecord, StoreError};

#[derive(Debug, Clone, PartialEq)]
pub struct FileRecord {
    pub id: String,
    pub tenant: String,
    pub filename: String,
    pub purpose: String,
    pub bytes: i64,
    pub created_at_ms: i64,
}

/// A batch's lifecycle, as OpenAI names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchStatus {
    Validating,
    InProgress,
    Finalizing,
    Completed,
    Failed,
    Cancelling,
    Cancelled,
    Expired,
}

impl BatchStatus {
    pub const ALL: [BatchStatus; 8] = [
        BatchStatus::Validating,
        BatchStatus::InProgress,
        BatchStatus::Finalizing,
        BatchStatus::Completed,
        BatchStatus::Failed,
        BatchStatus::Cancelling,
        BatchStatus::Cancelled,
        BatchStatus::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Validating => "validating",
            BatchStatus::InProgress => "in_progress",
            BatchStatus::Finalizing => "finalizing",
            BatchStatus::Completed => "completed",
            BatchStatus::Failed => "failed",
            BatchStatus::Cancelling => "cancelling",
            BatchStatus::Cancelled => "cancelled",
            BatchStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<BatchStatus> {
        BatchStatus::ALL.into_iter().find(|b| b.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            BatchStatus::Completed
                | BatchStatus::Failed
                | BatchStatus::Cancelled
                | BatchStatus::Expired
        )
    }
}

/// How many of a batch's requests ended which way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchCounts {
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BatchRecord {
    pub id: String,
    pub tenant: String,
    /// The key that made it, whose own limits its lines take from.
    pub api_key: Option<String>,
    pub endpoint: String,
    pub input_file_id: String,
    pub completion_window: String,
    pub status: BatchStatus,
    pub metadata: BTreeMap<String, String>,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    /// When it entered each status it went through.
    pub stamps: BTreeMap<&'static str, i64>,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    /// Why the batch as a whole failed: (code, message).
    pub error: Option<(String, String)>,
    pub lines_read: u64,
    pub input_done: bool,
    pub counts: BatchCounts,
}

/// One line of a batch's input: the job made for it, or why there is none.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchItem {
    pub line: u64,
    pub custom_id: String,
    pub job_id: Option<String>,
    pub error: Option<(String, String)>,
}

/// A change of a batch's status, applied only from a status that allows it.
#[derive(Debug, Clone, Default)]
pub struct BatchUpdate {
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub error: Option<(String, String)>,
}

#[async_trait]
pub trait BatchStore: Send + Sync {
    async fn insert_file(&self, file: &FileRecord) -> Result<(), StoreError>;
    async fn get_file(&self, id: &str) -> Result<Option<FileRecord>, StoreError>;
    /// Newest first; only `tenant`'s when given.
    async fn list_files(
        &self,
        tenant: Option<&str>,
        limit: u32,
    ) -> Result<Vec<FileRecord>, StoreError>;
    async fn delete_file(&self, id: &str) -> Result<bool, StoreError>;
    /// Whether a batch that is not leased has work to do at `now_ms`.
    async fn batch_waiting(&self, now_ms: i64) -> Result<bool, StoreError>;
    /// The bytes of all of `tenant`'s files.
    async fn file_bytes(&self, tenant: &str) -> Result<u64, StoreError>;

    async fn insert_batch(&self, batch: &BatchRecord) -> Result<(), StoreError>;
    async fn get_batch(&self, id: &str) -> Result<Option<BatchRecord>, StoreError>;
    /// Newest first, after the batch `after` when given; only `tenant`'s
    /// when given.
    async fn list_batches(
        &self,
        tenant: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<BatchRecord>, StoreError>;
    /// Leases the oldest batch that has work left and no live lease.
    async fn claim_batch(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<Option<BatchRecord>, StoreError>;
    async fn renew_batch(&self, id: &str, lease_until_ms: i64) -> Result<(), StoreError>;
    /// Records lines read from the input, and how far reading has got.
    async fn add_batch_items(
        &self,
        id: &str,
        items: &[BatchItem],
        lines_read: u64,
        input_done: bool,
    ) -> Result<(), StoreError>;
    /// Items after `after_line`, in line order, with their jobs' records.
    async fn batch_items(
        &self,
        id: &str,
        after_line: Option<u64>,
        limit: u32,
    ) -> Result<Vec<(BatchItem, Option<JobRecord>)>, StoreError>;
    /// Moves the batch to `to` if it is now in one of `from`; false if not.
    async fn set_batch_status(
        &self,
        id: &str,
        from: &[BatchStatus],
        to: BatchStatus,
        at_ms: i64,
        update: BatchUpdate,
    ) -> Result<bool, StoreError>;
}
