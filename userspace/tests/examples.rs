//! The shipped examples are valid: every ctsync config passes the agent's
//! own `check-config`, and the keepalived configurations pass keepalived's
//! `--config-test` (Debian's keepalived, in a private namespace that has
//! their interfaces).

mod support;

use std::{path::PathBuf, process::Command};

use support::ctsync_bin;

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn run(cmd: &mut Command) -> std::process::Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e} (`cargo xtask setup` installs it)"))
}

#[test]
fn example_ctsync_configs_pass_check_config() {
    for f in [
        "ctsync.toml",
        "pair/ctsync-fw1.toml",
        "pair/ctsync-fw2.toml",
    ] {
        let path = examples().join(f);
        let out = run(Command::new(ctsync_bin()).arg("check-config").arg(&path));
        assert!(
            out.status.success(),
            "{f}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn example_keepalived_configs_pass_keepalived_config_test() {
    support::enter_private_netns();
    // The examples' LAN and WAN interfaces.
    let out = run(Command::new("ip").args([
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["pair/keepalived-fw1.conf", "pair/keepalived-fw2.conf"] {
        let path = examples().join(f);
        let text = std::fs::read_to_string(&path).unwrap();
        for state in ["master", "backup", "fault"] {
            assert!(
                text.contains(&format!("ctsync notify {state}\"")),
                "{f} has no notify_{state} line calling ctsync"
            );
        }
        let out = run(Command::new("keepalived")
            .args(["--config-test", "--use-file"])
            .arg(&path));
        assert!(
            out.status.success(),
            "{f}: keepalived --config-test failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
