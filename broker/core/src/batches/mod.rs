//! OpenAI's Batch API, worked forward: a JSONL file of requests, each run
//! as a job at `batch` priority, with an output file and an error file at
//! the end. The input is read line by line from the object store, and the
//! output written the same way, so a batch of any size takes little memory.

mod files;
mod runner;

pub use files::Files;
pub use runner::{BatchRunner, RunnerParts, run};
