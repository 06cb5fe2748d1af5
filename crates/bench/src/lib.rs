//! The harness behind `cleanroom bench`: one benchmark session ([`bench`]) on generated
//! identifiers or on two tables, in memory or through the real gRPC service on a loopback port
//! ([`loopback`], both members in one process), and the load test ([`load`]) of a `cleanroom
//! serve` child process. The benchmark's data, collaboration and expected answers are in
//! [`fixture`].
//!
//! The harness measures and checks; it prints nothing but progress bars. The `cleanroom`
//! binary parses the command line, reads the tables it names and prints the reports. Every
//! answer is checked against the plain computation before it is reported, and a load test
//! fails unless the server's audit log holds exactly one release per result received.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bench;
mod chain;
pub mod fixture;
mod list;
pub mod load;
pub mod loopback;

pub use bench::{
    BenchProtocol, BenchReport, Identifiers, Report, Session, Tables, Transport, run_generated,
    run_tables,
};
pub use chain::{PartiesReport, run_parties};
pub use load::{Load, LoadReport};
