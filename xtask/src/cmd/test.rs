//! `cargo xtask test`: the whole test suite on a fresh machine: set-up,
//! format check, build, then every test (unit, codec fuzz, and the kernel
//! tests in network namespaces, which need root).

use anyhow::{Result, bail};
use xtask::{build, exec, setup};

#[derive(clap::Args)]
pub struct Args {
    /// Passed to the test binaries (e.g. a test name filter).
    #[arg(trailing_var_arg = true)]
    rest: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    setup::ensure()?;
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the tests use network namespaces, ctnetlink and eBPF: run `cargo xtask test` as root"
        );
    }
    exec::exec(build::cargo().args(["fmt", "--all", "--check"]))
        .map_err(|e| e.context("formatting differs: run `cargo fmt --all`"))?;
    build::release_bins()?;
    let mut cmd = build::cargo();
    // Every test binary runs even when one fails, so a red run says all that is wrong.
    cmd.args(["test", "--release", "--no-fail-fast", "--"]);
    // Lab tests build their own namespaces; two at a time fit 2 cores.
    cmd.args(["--test-threads", "2"]);
    cmd.args(&args.rest);
    exec::exec(&mut cmd)
}
