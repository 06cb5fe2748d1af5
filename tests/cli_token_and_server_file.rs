//! `cleanroom token new` and `serve --config-file`, through the binary: a member admitted by a
//! freshly made token (and no longer by its old one) queries a server whose settings come from
//! a file, with one of them overridden on the command line.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_cleanroom");

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/rules/tests/data")
        .join(name)
}

/// Runs the binary; exit code, stdout, stderr.
fn cleanroom(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("CLEANROOM_TOKEN")
        .envs(env.iter().copied())
        .output()
        .expect("run cleanroom");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The token and the hash line of `token new`'s output.
fn token_and_hash(stdout: &str) -> (String, String) {
    let token = stdout
        .lines()
        .find_map(|l| l.strip_prefix("token (member \"advertiser\"): "))
        .expect("a token line")
        .to_owned();
    let hash = stdout
        .lines()
        .find_map(|l| l.strip_prefix("token_sha256 = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("a hash line")
        .to_owned();
    (token, hash)
}

#[test]
fn token_new_makes_a_random_256_bit_token_and_the_line_that_admits_it() {
    let (code, stdout, stderr) = cleanroom(&["token", "new", "--member", "advertiser"], &[]);
    assert_eq!(code, 0, "{stderr}");
    let (token, hash) = token_and_hash(&stdout);
    assert_eq!(token.len(), 64);
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert_eq!(hash, hex::encode(Sha256::digest(token.as_bytes())));
    let (_, again, _) = cleanroom(&["token", "new", "--member", "advertiser"], &[]);
    assert_ne!(token_and_hash(&again).0, token, "every token is fresh");

    // --out: a new owner-only file holds the token; nothing overwrites it; stdout has no token.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("advertiser.token");
    let out = file.to_str().unwrap();
    let (code, stdout, stderr) = cleanroom(&["token", "new", "--out", out], &[]);
    assert_eq!(code, 0, "{stderr}");
    let written = std::fs::read_to_string(&file).unwrap();
    let written = written.trim_end();
    assert_eq!(written.len(), 64);
    assert!(
        !stdout.contains(written),
        "the token is not printed with --out"
    );
    assert!(stdout.contains(&hex::encode(Sha256::digest(written.as_bytes()))));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let (code, _, stderr) = cleanroom(&["token", "new", "--out", out], &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--out"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim_end(), written);
}

/// A running `serve`, killed on drop; its stderr lines arrive on a channel.
struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// The first stderr line containing `needle`, within a minute.
    fn line_with(&self, needle: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("serve never printed {needle:?}"));
            if line.contains(needle) {
                return line;
            }
        }
    }
}

#[test]
fn a_server_file_configures_serve_and_a_fresh_token_admits_its_member() {
    let dir = tempfile::tempdir().unwrap();
    let (_, stdout, _) = cleanroom(&["token", "new", "--member", "advertiser"], &[]);
    let (token, hash) = token_and_hash(&stdout);
    // The collaboration with the advertiser's old hash replaced by the line token new printed.
    let collab = std::fs::read_to_string(data("collab.toml")).unwrap();
    let old = "414eb4cbdada9c62b0fd994eacd4ae564ea18cfe142c15df6ff5331210e26955";
    assert!(collab.contains(old));
    let collab_path = dir.path().join("collab.toml");
    std::fs::write(&collab_path, collab.replace(old, &hash)).unwrap();
    let server_file = dir.path().join("server.toml");
    std::fs::write(
        &server_file,
        format!(
            "config = {:?}\nmember = \"publisher\"\ndata = [{:?}]\nlisten = \"127.0.0.1:0\"\n\
             state = {:?}\nmax-connections = 100\nmax_connections_per_address = 7\n",
            collab_path.to_str().unwrap(),
            format!("impressions={}", data("impressions.csv").display()),
            dir.path().join("state.db").to_str().unwrap(),
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config-file", server_file.to_str().unwrap()])
        .args(["--max-connections", "50"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (send, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                break;
            }
        }
    });
    let server = Server { child, lines };
    let start = server.line_with("cleanroom serve: member \"publisher\"");
    let url = start
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("the listening address")
        .to_owned();
    // From the file: 7 per address; from the command line, over the file's 100: 50.
    let caps = server.line_with("connections (");
    assert!(
        caps.ends_with("at most 50 connections (7 per address)"),
        "{caps}"
    );

    let conversions = format!("conversions={}", data("conversions.csv").display());
    let query = |token: &str| {
        cleanroom(
            &[
                "query",
                "--config",
                collab_path.to_str().unwrap(),
                "--member",
                "advertiser",
                "--data",
                &conversions,
                "--server",
                &url,
                "--format",
                "json",
                "SELECT i.campaign, COUNT(DISTINCT c.email) AS buyers FROM impressions i \
                 JOIN conversions c ON i.email = c.email GROUP BY i.campaign",
            ],
            &[("CLEANROOM_TOKEN", token)],
        )
    };
    let (code, stdout, stderr) = query(&token);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("\"columns\""), "{stdout}");
    let (code, _, stderr) = query("advertiser-token");
    assert_ne!(code, 0);
    assert!(
        stderr.to_lowercase().contains("unauthenticated") || stderr.contains("token"),
        "{stderr}"
    );
}
