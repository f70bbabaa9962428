//! A held ssh session through a gate: `ssh ALIAS cat` from an agent netns,
//! each line sent coming back while the session lives; and the server end
//! of a new session, to see which upstream an alias reaches.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use super::gatectl::text;
use super::{ssh_args, SshFixture, TestHost};

/// The agent's ssh: its netns, ssh config and known_hosts, and the key of
/// `sshd`'s fixture.
pub struct Agent<'a> {
    /// The host.
    pub host: &'a TestHost,
    /// The upstream fixture whose client key the agent uses.
    pub sshd: &'a SshFixture,
    /// The agent's netns.
    pub netns: &'a str,
    /// Its ssh config.
    pub config: &'a str,
    /// Its known_hosts.
    pub known_hosts: &'a str,
}

impl<'a> Agent<'a> {
    /// The agent of the standard fixture (`gatectl::setup`): netns
    /// `agent`, config `/root/agent/alice.ssh_config`, known_hosts
    /// `/root/agent/known_hosts`, with the key of `sshd`'s fixture.
    pub fn of_fixture(host: &'a TestHost, sshd: &'a SshFixture) -> Agent<'a> {
        Agent {
            host,
            sshd,
            netns: "agent",
            config: "/root/agent/alice.ssh_config",
            known_hosts: "/root/agent/known_hosts",
        }
    }

    /// The argv of ssh to `alias` running `command`.
    fn ssh(&self, alias: &str, command: &str) -> Vec<String> {
        ssh_args(
            Some(self.netns),
            Some(self.config),
            &self.sshd.identity,
            self.known_hosts,
            alias,
            command,
        )
    }

    /// The server address and port (`addr:port`) of a new session to
    /// `alias`, as sshd sees them (`SSH_CONNECTION`), or why ssh failed.
    pub fn server_of(&self, alias: &str) -> Result<String, String> {
        let out = self
            .host
            .exec(&self.ssh(alias, "set -- $SSH_CONNECTION; echo $3:$4"));
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(text(&out))
        }
    }

    /// Opens a session to `alias` running `cat`, and checks it echoes.
    pub fn session(&self, alias: &str) -> Session {
        let mut child = self
            .host
            .command(&self.ssh(alias, "cat"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run ssh");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut session = Session { child, stdin, lines };
        session
            .echo("hello")
            .unwrap_or_else(|e| panic!("session through {alias}: {e}"));
        session
    }
}

/// A held ssh session running `cat` upstream; killed when dropped.
pub struct Session {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Session {
    /// Sends `line` and waits for it to come back.
    pub fn echo(&mut self, line: &str) -> Result<(), String> {
        writeln!(self.stdin, "{line}").map_err(|e| format!("the session is closed: {e}"))?;
        match self.lines.recv_timeout(Duration::from_secs(10)) {
            Ok(got) if got == line => Ok(()),
            Ok(got) => Err(format!("got {got:?} back instead of {line:?}")),
            Err(e) => Err(format!("no echo: {e}")),
        }
    }

    /// Waits until ssh exits (the session was cut); `false` if it still
    /// runs after `limit`.
    pub fn ends_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
