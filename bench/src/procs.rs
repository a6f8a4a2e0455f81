//! The gateway and the fake as child processes of the harness.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    pub name: &'static str,
    child: Child,
}

impl Proc {
    pub fn spawn(name: &'static str, mut command: Command, log: &Path) -> anyhow::Result<Self> {
        let log = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = command
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self { name, child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .context("no VmHWM")
    }

    /// SIGTERM, up to 10 s to exit, then SIGKILL.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Fails if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited: {status}", self.name);
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Waits until `url` answers with a success status.
pub async fn wait_until_up(
    http: &reqwest::Client,
    url: &str,
    process: &mut Proc,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        process.check_alive()?;
        if let Ok(reply) = http.get(url).send().await {
            if reply.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{} did not come up at {url}", process.name);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
