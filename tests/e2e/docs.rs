//! The examples in the docs run as written.

use crate::common::*;

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
    let doc = std::fs::read_to_string(crate::common::repo_root().join("docs/nats-api.md"))
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

/// The first ```sh block of a markdown file.
fn sh_block(markdown: &str) -> String {
    let start = markdown.find("```sh\n").expect("a sh block") + "```sh\n".len();
    let len = markdown[start..].find("```").expect("closed block");
    markdown[start..start + len].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_curl_tour_in_the_api_doc_runs() {
    let doc = std::fs::read_to_string(crate::common::repo_root().join("docs/api.md"))
        .expect("docs/api.md");
    let stack = Stack::running(StackOptions::default(), &["node-a"]);
    let script = sh_block(&doc).replace(
        "API=http://127.0.0.1:8080",
        &format!("API={}", stack.broker_url("")),
    );
    let out = tokio::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for shown in [
        r#""status":"succeeded""#,
        "event: assigned",
        "event: succeeded",
        r#""next_cursor""#,
        "chat.completion",
        "data: [DONE]",
        r#""object":"list""#,
        " paths",
    ] {
        assert!(stdout.contains(shown), "{shown:?} not in:\n{stdout}");
    }
}

/// The first ```yaml block of a markdown file.
fn yaml_block(markdown: &str) -> String {
    yaml_blocks(markdown).remove(0)
}

/// Every ```yaml block of a markdown file, in order.
fn yaml_blocks(markdown: &str) -> Vec<String> {
    markdown
        .split("```yaml\n")
        .skip(1)
        .map(|rest| rest[..rest.find("```").expect("closed block")].to_owned())
        .collect()
}

/// Runs `switchyard check-config` on `yaml`.
fn check_config(dir: &std::path::Path, yaml: &str) -> std::process::Output {
    let path = dir.join("switchyard.yaml");
    std::fs::write(&path, yaml).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run switchyard")
}

#[test]
fn the_aliases_in_the_docs_load_and_weights_that_miss_100_or_a_bad_follow_are_refused() {
    let doc = std::fs::read_to_string(crate::common::repo_root().join("docs/models.md"))
        .expect("docs/models.md");
    let dir = tempfile::tempdir().unwrap();
    let blocks = yaml_blocks(&doc);
    let example = blocks[..2].concat();
    let ok = check_config(dir.path(), &example);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let refused = check_config(
        dir.path(),
        &example.replacen("weight: 10}", "weight: 20}", 1),
    );
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("aliases[0].targets = 110: the weights must sum to 100"),
        "{stderr}"
    );
    // The MLflow example is a whole configuration; a follow that names
    // no MLflow alias is refused.
    let following = check_config(dir.path(), &blocks[2]);
    assert!(
        following.status.success(),
        "{}",
        String::from_utf8_lossy(&following.stderr)
    );
    let refused = check_config(
        dir.path(),
        &blocks[2].replace("summarizer@champion", "summarizer/champion"),
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("aliases[0].follow.mlflow"), "{stderr}");
}

#[test]
fn the_workflow_in_the_docs_loads_and_a_cycle_in_it_is_refused_by_its_path() {
    let doc = std::fs::read_to_string(crate::common::repo_root().join("docs/workflows.md"))
        .expect("docs/workflows.md");
    let dir = tempfile::tempdir().unwrap();
    let check = |workflows: &str| {
        let models = "models:\n  - {name: llama-3-8b, kind: chat}\n";
        check_config(dir.path(), &format!("{models}{workflows}"))
    };
    let example = yaml_block(&doc);
    let ok = check(&example);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let cycle = example.replacen("needs: [clean]", "needs: [publish]", 1);
    let refused = check(&cycle);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(
            "workflows[0].steps = [\"summary\", \"publish\"]: these steps need each other in a cycle"
        ),
        "{stderr}"
    );
}

#[test]
fn the_trace_link_in_the_docs_loads_and_one_that_is_no_web_link_is_refused() {
    let doc = std::fs::read_to_string(crate::common::repo_root().join("docs/operations.md"))
        .expect("docs/operations.md");
    let dir = tempfile::tempdir().unwrap();
    let traces = yaml_blocks(&doc)
        .into_iter()
        .find(|b| b.contains("trace_link"))
        .expect("the traces example");
    let example = format!("models:\n  - {{name: llama-3-8b, kind: chat}}\n{traces}");
    let ok = check_config(dir.path(), &example);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // A page's link must not run script, nor miss the trace it is for.
    for bad in [
        "javascript:alert(1)//{trace_id}",
        "http://jaeger:16686/search",
    ] {
        let link = "http://jaeger:16686/trace/{trace_id}";
        let refused = check_config(dir.path(), &example.replace(link, bad));
        assert_eq!(refused.status.code(), Some(2), "{bad}");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains("broker.trace_link"), "{stderr}");
    }
}
