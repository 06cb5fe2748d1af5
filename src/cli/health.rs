//! `cleanroom health`: asks a server's `grpc.health.v1` whether it serves, for a container's
//! health check or a monitoring probe (no token needed, no grpcurl to ship).
//!
//! Exit codes as a container health check reads them: 0 when the server answers `SERVING`, 1
//! otherwise (`NOT_SERVING`, as while it drains after a stop signal; an unknown service; no
//! answer in time; a refused connection or TLS handshake), with one line on stderr saying why.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use cleanroom_service::TlsIdentity;
use cleanroom_service::client::{ServingStatus, check_health};

/// Arguments of `cleanroom health`.
#[derive(Args, Debug)]
pub struct HealthArgs {
    /// The server: https://host:port (http:// only to loopback, or with --insecure).
    #[arg(long, value_name = "URL")]
    server: String,
    /// The service to ask about: empty for the server as a whole, or
    /// cleanroom.v1.CleanRoomService.
    #[arg(long, value_name = "NAME", default_value = "")]
    service: String,
    /// The CA certificate (PEM) to trust for the server; default: the system's roots.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Allow http:// to a non-loopback server (only on a trusted network).
    #[arg(long)]
    insecure: bool,
    /// A client certificate (PEM) to present: needed when the server requires one
    /// (`serve --client-ca`).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Seconds to wait for the answer, connection included.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    timeout: u64,
}

/// Runs the check: prints the status on stdout, exit 0 for `SERVING`, 1 for anything else (the
/// reason on stderr). Only a bad invocation (an unreadable certificate file) is an error, exit 2.
pub fn run(args: HealthArgs) -> Result<ExitCode> {
    let ca = match &args.ca {
        Some(ca) => Some(std::fs::read(ca).with_context(|| format!("--ca {}", ca.display()))?),
        None => None,
    };
    let identity = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsIdentity {
            cert_pem: std::fs::read(cert)
                .with_context(|| format!("--tls-cert {}", cert.display()))?,
            key_pem: std::fs::read(key).with_context(|| format!("--tls-key {}", key.display()))?,
        }),
        _ => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let answer = runtime.block_on(check_health(
        &args.server,
        ca.as_deref(),
        args.insecure,
        identity.as_ref(),
        &args.service,
        Duration::from_secs(args.timeout.max(1)),
    ));
    Ok(match answer {
        Ok(ServingStatus::Serving) => {
            println!("SERVING");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            println!("{}", status.as_str_name());
            eprintln!(
                "error: {} answers {} for {}",
                args.server,
                status.as_str_name(),
                if args.service.is_empty() {
                    "the server".to_owned()
                } else {
                    format!("service {:?}", args.service)
                }
            );
            ExitCode::from(1)
        }
        Err(error) => {
            eprintln!("error: {}", cleanroom_service::transport::causes(&error));
            ExitCode::from(1)
        }
    })
}
