//! Kernel settings that apply to every namespace (conntrack's limit and
//! hash size), raised for a run and put back afterwards.

use anyhow::{Context, Result};

pub const CONNTRACK_MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";
pub const HASHSIZE: &str = "/sys/module/nf_conntrack/parameters/hashsize";

/// A setting raised to at least a value, restored on drop.
pub struct Raised {
    path: &'static str,
    old: String,
}

impl Raised {
    pub fn at_least(path: &'static str, n: u64) -> Result<Raised> {
        let old = std::fs::read_to_string(path).context(path)?;
        if old.trim().parse::<u64>().context(path)? < n {
            std::fs::write(path, n.to_string()).context(path)?;
        }
        Ok(Raised { path, old })
    }
}

impl Drop for Raised {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path, self.old.trim());
    }
}
