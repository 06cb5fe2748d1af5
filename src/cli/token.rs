//! `cleanroom token new`: a fresh bearer token for a member, and the line of the collaboration
//! file that admits it.
//!
//! A token is 32 bytes from the operating system's CSPRNG, written as 64 lowercase hex digits.
//! The collaboration file holds only its SHA-256 (`token_sha256`), unsalted: a salt or a slow
//! hash protects guessable secrets such as passwords, and a 256-bit random token is not
//! guessable — finding a token from its hash is a 2^256 preimage search, and one search cannot
//! serve several tokens since each member's is independent. The file can therefore be shared
//! with every member as it is. A token typed by a person (short, reused, memorable) would lose
//! that property; use this command.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Arguments of `cleanroom token`.
#[derive(Args, Debug)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Print a fresh 256-bit bearer token and the `token_sha256` line for the member's entry
    /// in the collaboration file.
    New(NewArgs),
}

#[derive(Args, Debug)]
struct NewArgs {
    /// The member the token is for (named in the printed line only).
    #[arg(long, value_name = "NAME")]
    member: Option<String>,
    /// Write the token to this new file (mode 0600 on Unix; an existing file is never
    /// overwritten) for `query --token-file`, instead of printing it.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// Runs `cleanroom token`.
pub fn run(args: TokenArgs) -> Result<ExitCode> {
    match args.command {
        TokenCommand::New(args) => new(args),
    }
}

/// The bytes of a token.
const TOKEN_BYTES: usize = 32;

fn new(args: NewArgs) -> Result<ExitCode> {
    let mut bytes = Zeroizing::new([0u8; TOKEN_BYTES]);
    getrandom::fill(bytes.as_mut()).context("the operating system's random source failed")?;
    let token = Zeroizing::new(hex::encode(bytes.as_ref()));
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    let for_member = args
        .member
        .as_deref()
        .map(|m| format!(" (member {m:?})"))
        .unwrap_or_default();
    match &args.out {
        Some(path) => {
            write_new_secret_file(path, token.as_bytes())
                .with_context(|| format!("--out {}", path.display()))?;
            println!("token written to {}{for_member}", path.display());
        }
        None => {
            println!("token{for_member}: {}", token.as_str());
            println!("  give it to the member over a private channel; it is not stored anywhere");
        }
    }
    println!("line for the member's [[member]] entry in the collaboration file:");
    println!("token_sha256 = \"{hash}\"");
    Ok(ExitCode::SUCCESS)
}

/// Creates `path` (failing if it exists) readable by its owner only, and writes `secret`.
pub(crate) fn write_new_secret_file(path: &std::path::Path, secret: &[u8]) -> std::io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(secret)?;
    file.write_all(b"\n")?;
    file.sync_all()
}
