//! Running the `cleanroom` binary. A library cannot name the binary (Cargo gives its path only
//! to the root package's tests): the test passes `env!("CARGO_BIN_EXE_cleanroom")`.

/// Runs the `cleanroom` binary at `binary` with `args` and, when given, `token` as
/// `CLEANROOM_TOKEN`; returns (exit code, stdout, stderr).
pub fn run_cleanroom(binary: &str, args: &[&str], token: Option<&str>) -> (i32, String, String) {
    let mut command = std::process::Command::new(binary);
    command.args(args).env_remove("CLEANROOM_TOKEN");
    if let Some(token) = token {
        command.env("CLEANROOM_TOKEN", token);
    }
    let output = command.output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// A `cleanroom serve` child process listening on a loopback port, and its `http://` URL. Its
/// log is drained on a thread so that it never blocks on a full pipe; it is killed and waited
/// for when dropped (or by [`ServeProcess::stop`]).
pub struct ServeProcess {
    child: std::process::Child,
    /// The URL the start line names.
    pub url: String,
}

impl ServeProcess {
    /// Runs `cleanroom serve <args>` (which must listen on `127.0.0.1:0`, in plaintext) with
    /// the binary at `binary`, and waits for its start line.
    pub fn start(binary: &str, args: &[&str]) -> ServeProcess {
        use std::io::BufRead;
        let mut child = std::process::Command::new(binary)
            .arg("serve")
            .args(args)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let banner = lines.next().expect("a start line").unwrap();
        let url = banner
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no address in {banner:?}"))
            .to_owned();
        std::thread::spawn(move || for _ in lines.by_ref() {});
        ServeProcess { child, url }
    }

    /// The publisher's `serve` over `fx`'s collaboration and impressions, recording in
    /// `state`, on a loopback port.
    pub fn publisher(binary: &str, fx: &crate::Fixture, state: &std::path::Path) -> ServeProcess {
        let impressions = format!("impressions={}", fx.path("impressions.csv").display());
        let config = fx.path("collab.toml");
        ServeProcess::start(
            binary,
            &[
                "--config",
                config.to_str().unwrap(),
                "--member",
                "publisher",
                "--data",
                &impressions,
                "--listen",
                "127.0.0.1:0",
                "--state",
                state.to_str().unwrap(),
            ],
        )
    }

    /// Kills the server and waits for it.
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
