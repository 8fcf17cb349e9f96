//! Developer and operator tasks for ctsync, run as `cargo xtask ...`.
//!
//! The library half exists so that integration tests, the demo and the bench can
//! build the same network-namespace lab as `cargo xtask lab up`:
//!
//! ```no_run
//! use xtask::lab::{Lab, LabOptions, Node, SERVER_V4};
//!
//! # fn main() -> anyhow::Result<()> {
//! let lab = Lab::up(LabOptions::default())?; // torn down when dropped, even on panic
//! lab.exec(Node::Client, &["ping", "-c1", "-W1", &SERVER_V4.to_string()])?;
//! # Ok(())
//! # }
//! ```
//!
//! - [`setup`]: checks and installs the prerequisites (`cargo xtask setup`).
//! - [`lab`]: the client / fw1 / fw2 / server topology in network namespaces.
//! - [`exec`]: running commands with the command line in every error.

pub mod agent;
pub mod build;
pub mod conntrackd;
pub mod ctcompare;
pub mod exec;
pub mod keepalived;
pub mod lab;
pub mod setup;
pub mod sysctl;
pub mod traffic;
