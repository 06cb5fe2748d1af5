//! One module per subcommand, plus the output formats they share.

pub mod audit;
pub mod bench;
pub mod budget;
pub mod check;
pub mod demo;
pub mod health;
pub mod key;
pub mod match_job;
pub mod matching;
pub mod output;
pub mod query;
pub mod results;
pub mod sample;
pub mod serve;
pub mod table_input;
pub mod token;
pub mod usage;
