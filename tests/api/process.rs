//! A real gateway process for the tests that kill, stop or restart one:
//! started from the built binary with a configuration file, on a free port,
//! ready once `/readyz` answers 200; killed when dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::free_port;

const BINARY: &str = env!("CARGO_BIN_EXE_formid-gateway");

/// A running `formid-gateway serve`.
pub struct GatewayProcess {
    pub child: Child,
    /// `http://127.0.0.1:<port>`.
    pub address: String,
}

impl GatewayProcess {
    /// A gateway serving `config`, once it is ready.
    pub async fn start(config: &std::path::Path) -> Self {
        Self::start_with(config, &[]).await
    }

    /// A gateway with more settings from the environment.
    pub async fn start_with(config: &std::path::Path, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let child = Command::new(BINARY)
            .args(["serve", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .env("FORMID__LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the gateway");
        let address = format!("http://127.0.0.1:{port}");
        // Why 30 s: a debug build on a loaded two-core machine migrates and
        // starts slowly; a ready gateway answers at once.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = reqwest::get(format!("{address}/readyz")).await {
                if response.status() == 200 {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { child, address }
    }

    /// Sends `signal` (`KILL`, `TERM`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        self.signal("KILL");
        self.child.wait().unwrap();
    }

    /// Waits for the process to exit, at most `within`.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the gateway did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
