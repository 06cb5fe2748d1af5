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
