//! `cargo xtask lab up|down|status|move-vips`.

use anyhow::{Result, bail};
use clap::{Subcommand, ValueEnum};
use xtask::lab::{self, Fw, Lab, LabOptions};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Build a lab and leave it running; prints its prefix on stdout.
    Up {
        /// Namespace name prefix (default: `cts` + 4 random hex digits).
        #[arg(long)]
        prefix: Option<String>,
        /// Leave the virtual addresses unassigned (keepalived will manage them).
        #[arg(long)]
        no_vips: bool,
    },
    /// Remove a lab: its namespaces and every process in them.
    Down {
        /// The lab to remove (default: the only lab, if there is just one).
        #[arg(long, conflicts_with = "all")]
        prefix: Option<String>,
        /// Remove every `cts*-{client,server,fw1,fw2}` namespace, e.g. left by crashes.
        #[arg(long)]
        all: bool,
    },
    /// Show the labs: namespaces, interfaces, addresses, processes, VIP holder.
    Status {
        /// Only this lab (default: every `cts*` lab).
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Move the virtual addresses to a firewall (a manual failover).
    MoveVips {
        /// The firewall that takes the virtual addresses.
        to: FwArg,
        /// The lab (default: the only lab, if there is just one).
        #[arg(long)]
        prefix: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum FwArg {
    Fw1,
    Fw2,
}

impl From<FwArg> for Fw {
    fn from(fw: FwArg) -> Fw {
        match fw {
            FwArg::Fw1 => Fw::Fw1,
            FwArg::Fw2 => Fw::Fw2,
        }
    }
}

pub fn run(Args { action }: Args) -> Result<()> {
    match action {
        Action::Up { prefix, no_vips } => {
            xtask::setup::ensure()?;
            let lab = Lab::up(LabOptions {
                prefix,
                vips: !no_vips,
            })?;
            let prefix = lab.keep();
            eprintln!("lab {prefix} is up; for example:");
            eprintln!(
                "  ip netns exec {prefix}-client ping -c1 {}",
                lab::SERVER_V4
            );
            eprintln!("  cargo xtask lab status --prefix {prefix}");
            eprintln!("  cargo xtask lab down --prefix {prefix}");
            println!("{prefix}");
        }
        Action::Down { all: true, .. } => {
            let removed = lab::down_all()?;
            if removed.is_empty() {
                eprintln!("no lab found");
            }
            for prefix in removed {
                eprintln!("lab {prefix} removed");
            }
        }
        Action::Down { prefix, all: false } => {
            let lab = Lab::attach(&the_lab(prefix)?);
            if !lab.exists() {
                bail!("no lab {} (see `cargo xtask lab status`)", lab.prefix());
            }
            let prefix = lab.prefix().to_owned();
            lab.down()?;
            eprintln!("lab {prefix} removed");
        }
        Action::Status { prefix } => {
            let prefixes = match prefix {
                Some(prefix) => vec![prefix],
                None => lab::list()?,
            };
            if prefixes.is_empty() {
                println!("no lab found");
            }
            for prefix in prefixes {
                print!("{}", Lab::attach(&prefix).status()?);
            }
        }
        Action::MoveVips { to, prefix } => {
            let lab = Lab::attach(&the_lab(prefix)?);
            lab.move_vips(to.into())?;
            eprintln!(
                "virtual addresses of lab {} now on {}",
                lab.prefix(),
                Fw::from(to)
            );
        }
    }
    Ok(())
}

/// The prefix given, or the only lab's.
fn the_lab(prefix: Option<String>) -> Result<String> {
    if let Some(prefix) = prefix {
        return Ok(prefix);
    }
    let mut labs = lab::list()?;
    match labs.len() {
        0 => bail!("no lab found (`cargo xtask lab up` builds one)"),
        1 => Ok(labs.remove(0)),
        _ => bail!(
            "several labs exist ({}): choose one with --prefix",
            labs.join(", ")
        ),
    }
}
