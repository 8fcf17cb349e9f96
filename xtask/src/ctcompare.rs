//! The kernel table as `conntrack -L` (conntrack-tools, the independent
//! oracle) prints it, and the agent's `ctsync dump --json`, in one normalised
//! form, so that tests and the demo can say whether they are equal.

use std::{collections::BTreeSet, net::IpAddr, process::Command};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// `IPS_SEEN_REPLY` and `IPS_ASSURED`.
const IPS_SEEN_REPLY: u64 = 1 << 1;
const IPS_ASSURED: u64 = 1 << 2;

/// The fields of an entry that both sides show, normalised.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Entry {
    pub family: String,
    pub proto: u8,
    /// `src=.. dst=.. [sport=.. dport=..] [type=.. code=.. id=..]`
    pub orig: String,
    pub reply: String,
    pub zone: u16,
    pub mark: u32,
    /// TCP state name; `None` for other protocols.
    pub state: Option<String>,
    pub assured: bool,
    pub unreplied: bool,
}

fn tuple_text(
    src: IpAddr,
    dst: IpAddr,
    ports: Option<(&str, &str)>,
    icmp: Option<(&str, &str, &str)>,
) -> String {
    let mut s = format!("src={src} dst={dst}");
    if let Some((sp, dp)) = ports {
        s += &format!(" sport={sp} dport={dp}");
    }
    if let Some((ty, code, id)) = icmp {
        s += &format!(" type={ty} code={code} id={id}");
    }
    s
}

/// Parses one line of `conntrack -L -o extended`.
pub fn parse_conntrack_line(line: &str) -> Option<Entry> {
    let mut words = line.split_whitespace();
    let family = words.next()?.to_string();
    words.next()?; // l3 protocol number
    words.next()?; // l4 protocol name
    let proto: u8 = words.next()?.parse().ok()?;
    words.next()?; // timeout
    let mut e = Entry {
        family,
        proto,
        orig: String::new(),
        reply: String::new(),
        zone: 0,
        mark: 0,
        state: None,
        assured: false,
        unreplied: false,
    };
    let mut tuples: Vec<Vec<(&str, &str)>> = vec![vec![]];
    for w in words {
        match w.split_once('=') {
            Some(("mark", v)) => e.mark = v.parse().ok()?,
            Some(("zone", v)) => e.zone = v.parse().ok()?,
            Some(("use" | "secctx" | "labels" | "helper" | "zone-orig" | "zone-reply", _)) => {}
            Some((k, v)) => {
                if k == "src" && tuples.last()?.iter().any(|(k, _)| *k == "src") {
                    tuples.push(vec![]);
                }
                tuples.last_mut()?.push((k, v));
            }
            None if w == "[ASSURED]" => e.assured = true,
            None if w == "[UNREPLIED]" => e.unreplied = true,
            None if w.starts_with('[') => {}
            None if proto == 6 => e.state = Some(w.to_string()),
            None => {}
        }
    }
    let text = |t: &[(&str, &str)]| -> Option<String> {
        let get = |k: &str| t.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        let ports = get("sport").zip(get("dport"));
        let icmp = match (get("type"), get("code"), get("id")) {
            (Some(a), Some(b), Some(c)) => Some((a, b, c)),
            _ => None,
        };
        Some(tuple_text(
            get("src")?.parse().ok()?,
            get("dst")?.parse().ok()?,
            ports,
            icmp,
        ))
    };
    e.orig = text(tuples.first()?)?;
    e.reply = text(tuples.get(1)?)?;
    Some(e)
}

fn tuple_from_json(t: &Value) -> Option<String> {
    let addr = |k: &str| t[k].as_str()?.parse::<IpAddr>().ok();
    let sport = t["sport"].as_u64().map(|p| p.to_string());
    let dport = t["dport"].as_u64().map(|p| p.to_string());
    let icmp: Option<Vec<String>> = t["icmp"].as_array().map(|a| {
        a.iter()
            .map(|v| v.as_u64().unwrap_or(0).to_string())
            .collect()
    });
    let ports = sport.as_deref().zip(dport.as_deref());
    let icmp = icmp
        .as_ref()
        .map(|v| (v[0].as_str(), v[1].as_str(), v[2].as_str()));
    Some(tuple_text(addr("src")?, addr("dst")?, ports, icmp))
}

/// One entry of `ctsync dump ... --json`.
pub fn entry_from_json(v: &Value) -> Result<Entry> {
    let bad = || anyhow::anyhow!("unexpected entry in ctsync's dump: {v}");
    let proto = v["proto"].as_u64().ok_or_else(bad)? as u8;
    let status = v["status"].as_u64().ok_or_else(bad)?;
    Ok(Entry {
        family: v["family"].as_str().ok_or_else(bad)?.to_string(),
        proto,
        orig: tuple_from_json(&v["orig"]).ok_or_else(bad)?,
        reply: tuple_from_json(&v["reply"]).ok_or_else(bad)?,
        zone: v["zone"].as_u64().ok_or_else(bad)? as u16,
        mark: v["mark"].as_u64().ok_or_else(bad)? as u32,
        state: if proto == 6 {
            v["state"].as_str().map(str::to_string)
        } else {
            None
        },
        assured: status & IPS_ASSURED != 0,
        unreplied: status & IPS_SEEN_REPLY == 0,
    })
}

/// Parses the output of `ctsync dump ... --json`, sorted.
pub fn parse_ctsync_dump(json: &str) -> Result<Vec<Entry>> {
    let v: Value = serde_json::from_str(json).context("ctsync dump --json printed invalid JSON")?;
    let mut out = v
        .as_array()
        .context("ctsync dump --json did not print an array")?
        .iter()
        .map(entry_from_json)
        .collect::<Result<Vec<_>>>()?;
    out.sort();
    Ok(out)
}

/// The kernel table, both families, by running `conntrack -L` in the
/// network namespace `ns` (`None`: the caller's), sorted.
pub fn kernel_table(ns: Option<&str>) -> Result<Vec<Entry>> {
    let mut out = vec![];
    for fam in ["ipv4", "ipv6"] {
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "conntrack"]);
                c
            }
            None => Command::new("conntrack"),
        };
        cmd.args(["-L", "-o", "extended", "-f", fam]);
        let o = cmd
            .output()
            .context("running conntrack -L (install conntrack: `cargo xtask setup`)")?;
        if !o.status.success() {
            bail!(
                "conntrack -L failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            out.push(
                parse_conntrack_line(line)
                    .with_context(|| format!("cannot parse conntrack output line {line:?}"))?,
            );
        }
    }
    out.sort();
    Ok(out)
}

/// The table without the replication traffic itself: the agents ignore the
/// lab's sync links (10.9.0.0/16) so that they never replicate their own flows.
pub fn without_sync_links(mut entries: Vec<Entry>) -> Vec<Entry> {
    entries.retain(|e| !e.orig.starts_with("src=10.9."));
    entries
}

/// What differs between two entry lists, for messages.
pub fn diff(kernel: &[Entry], agent: &[Entry]) -> String {
    let k: BTreeSet<_> = kernel.iter().collect();
    let a: BTreeSet<_> = agent.iter().collect();
    let only_k: Vec<_> = k.difference(&a).take(5).collect();
    let only_a: Vec<_> = a.difference(&k).take(5).collect();
    format!(
        "kernel {} entries, agent {}; {} only in the kernel (first: {:#?}); {} only in the agent (first: {:#?})",
        kernel.len(),
        agent.len(),
        k.difference(&a).count(),
        only_k,
        a.difference(&k).count(),
        only_a
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_conntrack_lines() {
        let e = parse_conntrack_line(
            "ipv4     2 tcp      6 431999 ESTABLISHED src=10.1.0.10 dst=10.2.0.10 sport=40000 dport=5001 \
             src=10.2.0.10 dst=10.2.0.1 sport=5001 dport=40000 [ASSURED] mark=0 zone=3 use=1",
        )
        .unwrap();
        assert_eq!(e.state.as_deref(), Some("ESTABLISHED"));
        assert_eq!(e.reply, "src=10.2.0.10 dst=10.2.0.1 sport=5001 dport=40000");
        assert!(e.assured && !e.unreplied);
        assert_eq!(e.zone, 3);
        let e = parse_conntrack_line(
            "ipv6     10 icmpv6   58 29 src=fd00:1::10 dst=fd00:2::10 type=128 code=0 id=7 src=fd00:2::10 \
             dst=fd00:1::10 type=129 code=0 id=7 mark=0 use=1",
        )
        .unwrap();
        assert_eq!(e.orig, "src=fd00:1::10 dst=fd00:2::10 type=128 code=0 id=7");
        assert_eq!(
            (e.proto, e.state.as_deref(), e.unreplied),
            (58, None, false)
        );
    }

    #[test]
    fn json_and_text_agree() {
        let j = serde_json::json!({"family":"ipv4","proto":17,"orig":{"src":"10.1.0.10","dst":"10.2.0.10","sport":5,"dport":53},
            "reply":{"src":"10.2.0.10","dst":"10.2.0.1","sport":53,"dport":5},"zone":0,"mark":0,"status":14,"timeout":3,"id":1});
        let t = parse_conntrack_line(
            "ipv4 2 udp 17 30 src=10.1.0.10 dst=10.2.0.10 sport=5 dport=53 src=10.2.0.10 dst=10.2.0.1 sport=53 dport=5 [ASSURED] mark=0 use=1",
        )
        .unwrap();
        assert_eq!(entry_from_json(&j).unwrap(), t);
    }
}
