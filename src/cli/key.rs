//! `cleanroom key new`: a receiver's result key pair, or (`--relay`) a provider's relay key
//! pair.
//!
//! A member that receives the results of queries it does not run (`cleanroom query --receiver
//! NAME`) publishes the public half as `result_key` in its collaboration entry; the querier
//! seals the keys of each result to it, and only the secret half, kept in the member's key
//! file, opens them (`cleanroom results --key-file`). The secret is a ristretto255 scalar from
//! the operating system's CSPRNG, written as 64 hex digits to a new file readable by its owner
//! only; it is never printed.
//!
//! A relay key is the same kind of pair: a provider of joins across three or more members
//! publishes its public half as `relay_key`, the other providers seal what they send it to it
//! (relayed by the querier), and its server opens them with the secret half (`serve
//! --relay-key`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use cleanroom_psi::sealed::OpeningKey;
use zeroize::Zeroizing;

use super::token::write_new_secret_file;

/// Arguments of `cleanroom key`.
#[derive(Args, Debug)]
pub struct KeyArgs {
    #[command(subcommand)]
    command: KeyCommand,
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Make a result key pair: the secret into a new file, and the `result_key` line for the
    /// member's entry in the collaboration file.
    New(NewArgs),
}

#[derive(Args, Debug)]
struct NewArgs {
    /// The member the key is for (named in the printed line only).
    #[arg(long, value_name = "NAME")]
    member: Option<String>,
    /// The new file for the secret key (mode 0600 on Unix; an existing file is never
    /// overwritten).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// A relay key (for `serve --relay-key`, published as `relay_key`) instead of a result key.
    #[arg(long)]
    relay: bool,
}

/// Runs `cleanroom key`.
pub fn run(args: KeyArgs) -> Result<ExitCode> {
    match args.command {
        KeyCommand::New(args) => new(args),
    }
}

fn new(args: NewArgs) -> Result<ExitCode> {
    let key = OpeningKey::generate();
    let secret = Zeroizing::new(hex::encode(key.to_bytes().as_ref()));
    write_new_secret_file(&args.out, secret.as_bytes())
        .with_context(|| format!("--out {}", args.out.display()))?;
    let for_member = args
        .member
        .as_deref()
        .map(|m| format!(" (member {m:?})"))
        .unwrap_or_default();
    let kind = if args.relay { "relay" } else { "result" };
    println!(
        "secret {kind} key written to {}{for_member}",
        args.out.display()
    );
    println!("line for the member's [[member]] entry in the collaboration file:");
    println!(
        "{kind}_key = \"{}\"",
        hex::encode(key.sealing_key().to_bytes())
    );
    Ok(ExitCode::SUCCESS)
}

/// Reads a secret key written by `cleanroom key new`, given with `flag` (`--key-file`,
/// `--relay-key`), which its errors name.
pub fn read_opening_key(path: &Path, flag: &str) -> Result<OpeningKey> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("{flag} {}", path.display()))?,
    );
    let mut bytes = Zeroizing::new([0u8; 32]);
    let hex_text = text.trim();
    if hex_text.len() != 64 || hex::decode_to_slice(hex_text, bytes.as_mut()).is_err() {
        bail!(
            "{flag} {}: not a secret key (64 hex digits, as `cleanroom key new` writes)",
            path.display()
        );
    }
    OpeningKey::from_bytes(*bytes).with_context(|| format!("{flag} {}", path.display()))
}
