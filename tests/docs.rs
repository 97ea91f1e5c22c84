//! The examples in the docs run as written.

// Tests fail by panicking; the no-panic lints are for the product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

/// The first ```python block of a markdown file.
fn python_block(markdown: &str) -> String {
    let start = markdown.find("```python\n").expect("a python block") + "```python\n".len();
    let len = markdown[start..].find("```").expect("closed block");
    markdown[start..start + len].to_owned()
}

/// The first ``` block after `marker`.
fn block_after(markdown: &str, marker: &str) -> String {
    let from = markdown.find(marker).expect("marker");
    let start = markdown[from..].find("```\n").expect("block") + from + 4;
    let len = markdown[start..].find("```").expect("closed block");
    markdown[start..start + len].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_api_python_example_runs_and_prints_what_the_doc_says() {
    let doc = std::fs::read_to_string(common::repo_root().join("docs/nats-api.md"))
        .expect("docs/nats-api.md");
    let stack = Stack::running(StackOptions::default(), &["node-a"]);

    let script = stack.dir.path().join("example.py");
    std::fs::write(&script, python_block(&doc)).unwrap();
    let out = tokio::process::Command::new(python_bin())
        .arg(&script)
        .env("NATS_URL", stack.nats.url())
        .output()
        .await
        .expect("run python (scripts/test installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "example failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, block_after(&doc, "It prints:"));
}
