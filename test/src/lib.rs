//! The end-to-end test crate: a private, real containerd per test, with this
//! shim first on its `PATH`, driven with `ctr` ([`Containerd`]) or through
//! the CRI as kubelet drives it ([`cri::CriNode`]). The suites are in
//! tests/, one binary each; `make demo` and `make bench` are in src/bin/.
//!
//! - [`environment`]: what the tests run against (the shim and containerd
//!   under test, its version) and the root check.
//! - [`harness`]: [`Containerd`], `ctr` calls and their output.
//! - `daemon`: starting and stopping a containerd process, for both kinds
//!   of node.
//! - [`leaks`]: what a container must not leave behind.
//! - [`procfs`], [`cgroups`]: what the tests read from /proc and cgroupfs.
//! - [`images`]: the test images' names, and images built at test time.
//! - [`cri`], [`critest`], [`registry`]: the CRI node, Kubernetes' CRI
//!   validation suite, and a local OCI registry.
//! - [`rng`]: seeds for the race tests.
//!
//! These tests need root and containerd; without them they say so and fail,
//! so a CI without root cannot pass silently.

pub mod cgroups;
pub mod cri;
pub mod critest;
mod daemon;
pub mod environment;
pub mod events;
pub mod harness;
pub mod images;
pub mod leaks;
pub mod metrics;
pub mod procfs;
pub mod registry;
pub mod rng;

pub use environment::{containerd_version, shim_binary, workspace};
pub use harness::{unique_id, Containerd, CtrOutput, NAMESPACE, RUNTIME};
