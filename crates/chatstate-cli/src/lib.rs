//! # chatstate-cli
//!
//! The `chatstate` command: runs the seed systems' workloads on the configured
//! backend (`demo`), operates a store (`status`, `inspect`, `list`, `stats`,
//! `purge`, `sweep`, `export`, `import`, `migrate`), checks any deployment against
//! the conformance suite (`conformance`), and measures chatstate against raw
//! redis-rs and moka (`bench`, which `cargo xtask bench` runs).
//!
//! ## Layout
//!
//! - `main.rs`: the command line (clap), text or `--json` output, one-line errors.
//! - [`seeds`]: the seed systems' memory, written as an app would use the
//!   `chatstate` facade; the crate's examples include these files as they are.
//! - [`demo`]: runs the seeds with N users, timing each call and counting round
//!   trips against a naive one-command-per-call client.
//! - [`ops`]: the operator commands.
//! - [`conformance`]: the configured backend as a conformance backend, each
//!   fixture under a prefix or folder of this run, removed afterwards.
//! - [`bench`](mod@bench): the benchmark workloads (a timing harness: warm-up, many
//!   iterations, median and p99, chatstate and its raw contender in the same run),
//!   the Markdown table, the JSON and the SVG chart.
//!
//! The backend comes from the environment exactly as
//! [`chatstate::Stores::from_env`] reads it: the file store in `./chatstate-data`
//! by default, `USE_REDIS=1` for Redis, `CHATSTATE_BACKEND=memory`.
//!
//! Crates chosen: clap (derive) for the command line, indicatif for progress on a
//! terminal, plotters (SVG backend only) for the chart — each the well-kept
//! default for its job.

#![warn(missing_docs)]

pub mod bench;
pub mod conformance;
pub mod demo;
pub mod ops;
pub mod seeds;
