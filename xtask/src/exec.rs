//! Running external commands so that every failure names the command.
//!
//! Like aya's xtask `exec()`: an error says which command line failed, how it
//! ended, and what it printed on stderr, so a failing lab step is diagnosable from
//! the message alone. The `ns_*` variants run a command inside a named network
//! namespace with `ip netns exec`, and [`in_netns`] runs Rust code there.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::process::{Command, ExitStatus, Output, Stdio};

use anyhow::{Context, Result, anyhow, bail};

/// The command line of `cmd` for messages, shell-quoted where needed, e.g.
/// `ip -n cts12ab-fw1 addr add 10.1.0.2/24 dev lan0`.
pub fn cmdline(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(quote)
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote(arg: &OsStr) -> String {
    let s = arg.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs `cmd` with inherited stdio and fails unless it exits with status 0.
pub fn exec(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().map_err(|e| spawn_error(cmd, e))?;
    check_status(cmd, status, &[])
}

/// Runs `cmd` with stdout and stderr captured (stdin empty) and fails unless it
/// exits with status 0; the error includes the captured stderr.
pub fn output(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| spawn_error(cmd, e))?;
    check_status(cmd, out.status, &out.stderr)?;
    Ok(out)
}

/// Like [`output`], returning stdout as text.
pub fn stdout(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8", cmdline(cmd)))
}

/// Like [`output`], writing `input` to the command's stdin (e.g. `nft -f -`).
pub fn output_with_input(cmd: &mut Command, input: &[u8]) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| spawn_error(cmd, e))?;
    // Small inputs only: written before reading, so a child that fills its
    // stdout pipe before draining stdin would block; nft and friends don't.
    let write = child.stdin.take().expect("stdin is piped").write_all(input);
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{}`", cmdline(cmd)))?;
    check_status(cmd, out.status, &out.stderr)?;
    write.with_context(|| format!("writing to the stdin of `{}`", cmdline(cmd)))?;
    Ok(out)
}

/// A `Command` running `args` (program first) inside network namespace `ns`,
/// as `ip netns exec NS ARGS...`.
///
/// `ip netns exec` also gives the command a private mount namespace with `/sys`
/// of `ns` and `/etc/netns/NS/*` bind-mounted, as the tools expect.
pub fn ns_command<S: AsRef<OsStr>>(ns: &str, args: &[S]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(args);
    cmd
}

/// Runs `args` inside `ns` with inherited stdio; see [`exec`].
pub fn ns_exec<S: AsRef<OsStr>>(ns: &str, args: &[S]) -> Result<()> {
    exec(&mut ns_command(ns, args))
}

/// Runs `args` inside `ns` with output captured; see [`output`].
pub fn ns_output<S: AsRef<OsStr>>(ns: &str, args: &[S]) -> Result<Output> {
    output(&mut ns_command(ns, args))
}

/// Runs `args` inside `ns`, returning stdout as text; see [`stdout`].
pub fn ns_stdout<S: AsRef<OsStr>>(ns: &str, args: &[S]) -> Result<String> {
    stdout(&mut ns_command(ns, args))
}

/// Runs `f` on a new thread that has entered network namespace `ns`
/// (`/run/netns/NS`) and returns its result; a panic in `f` is propagated.
///
/// Network namespaces are per thread, so the caller's threads stay where they
/// are. Sockets created by `f` stay in `ns` wherever they are used later, and
/// processes spawned by `f` start in `ns`.
pub fn in_netns<T, F>(ns: &str, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).with_context(|| {
        format!("opening network namespace {path} (does `ip netns list` show {ns}?)")
    })?;
    std::thread::scope(|scope| {
        let thread = scope.spawn(move || {
            // SAFETY: plain syscall on a descriptor we own; it only changes this
            // thread's network namespace.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let err = io::Error::last_os_error();
                return Err(anyhow!("setns({path}, CLONE_NEWNET): {err} (needs root)"));
            }
            Ok(f())
        });
        match thread.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

fn spawn_error(cmd: &Command, err: io::Error) -> anyhow::Error {
    let program = cmd.get_program().to_string_lossy();
    let hint = if err.kind() == io::ErrorKind::NotFound {
        format!(" (is `{program}` installed? `cargo xtask setup` installs the tools ctsync needs)")
    } else {
        String::new()
    };
    anyhow!("could not run `{}`: {err}{hint}", cmdline(cmd))
}

fn check_status(cmd: &Command, status: ExitStatus, stderr: &[u8]) -> Result<()> {
    if status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(stderr);
    let stderr = stderr.trim();
    if stderr.is_empty() {
        bail!("`{}` failed ({status})", cmdline(cmd))
    } else {
        bail!("`{}` failed ({status}): {stderr}", cmdline(cmd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_quotes_only_what_needs_it() {
        let mut cmd = Command::new("nft");
        cmd.args(["add", "rule", "oifname \"wan0\"", "it's", ""]);
        assert_eq!(
            cmdline(&cmd),
            r#"nft add rule 'oifname "wan0"' 'it'\''s' ''"#
        );
    }

    #[test]
    fn errors_name_the_command_and_its_stderr() {
        let err = output(Command::new("sh").args(["-c", "echo oops >&2; exit 3"])).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("`sh -c 'echo oops >&2; exit 3'` failed"),
            "{msg}"
        );
        assert!(msg.contains("exit status: 3"), "{msg}");
        assert!(msg.ends_with("oops"), "{msg}");
    }

    #[test]
    fn missing_programs_get_a_hint() {
        let msg = output(&mut Command::new("no-such-program-xyz"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("could not run `no-such-program-xyz`"), "{msg}");
        assert!(msg.contains("cargo xtask setup"), "{msg}");
    }

    #[test]
    fn input_reaches_stdin() {
        let out = output_with_input(&mut Command::new("cat"), b"hello").unwrap();
        assert_eq!(out.stdout, b"hello");
    }
}
