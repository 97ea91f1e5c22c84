//! Servers the tests start with the project's scripts: engines and
//! integrations.

use std::process::Command;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{free_port, repo_root};

/// A server (an engine, MLflow) started by a script under `scripts/`, its
/// process group killed on drop.
pub struct Server {
    pub port: u16,
    pid: i32,
}

impl Server {
    /// Starts `n` servers side by side with `script` (under `scripts/`;
    /// `args` after its port and log); returns once each serves.
    pub fn start(script: &str, args: &[&str], n: usize, logs: &std::path::Path) -> Vec<Server> {
        let script = repo_root().join("scripts").join(script);
        let install = Command::new(&script).arg("install").status().unwrap();
        assert!(install.success(), "{} install failed", script.display());
        let starting: Vec<_> = (0..n)
            .map(|i| {
                let port = free_port();
                let log = logs.join(format!("engine-{i}.log"));
                let child = Command::new(&script)
                    .args(["start", &port.to_string(), log.to_str().unwrap()])
                    .args(args)
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                (port, child)
            })
            .collect();
        starting
            .into_iter()
            .map(|(port, child)| {
                let out = child.wait_with_output().unwrap();
                assert!(out.status.success(), "the engine on :{port} did not start");
                let pid = String::from_utf8(out.stdout)
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                Server { port, pid }
            })
            .collect()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn kill(&self) {
        self.signal(Signal::SIGKILL);
    }

    /// Sends `sig` to the server's process group.
    pub fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(-self.pid), sig);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
