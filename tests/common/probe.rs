//! Continuous connection probes inside a [`TestHost`]: a loop in a network
//! namespace that tries one TCP connection after another to one
//! `address:port` and logs each outcome with the host's clock, so a test can
//! change the host (reload its firewall, race two commands) while the probe
//! runs, and then count what got through, and when.

use std::collections::BTreeMap;
use std::fmt;
use std::process::{Child, Stdio};

use super::{finish, TestHost};

/// Directory inside the host holding each probe's log and stop file.
const PROBE_DIR: &str = "/root/probes";

/// The loop: `probe LOG ADDRESS PORT STOPFILE`. Each attempt gets 0.2 s
/// (one SYN: a connection within reach is established in milliseconds) and
/// is logged as `<unix time> <outcome>`; bash's own error text says why an
/// attempt failed.
const PROBE_SCRIPT: &str = r#"
log=$1 addr=$2 port=$3 stop=$4
: >"$log"
while [ ! -e "$stop" ]; do
  out=$(timeout 0.2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$addr" "$port" 2>&1)
  rc=$?
  case $rc:$out in
    0:*) r=connected ;;
    124:*) r=timeout ;;
    *refused*) r=refused ;;
    *"No route to host"*|*unreachable*) r=unreachable ;;
    *) r="other:$rc:$(printf %s "$out" | tr -s ' \n' __)" ;;
  esac
  echo "$(date +%s.%N) $r" >>"$log"
  sleep 0.01
done
"#;

/// How one connection attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// The connection was established: the far side was reached.
    Connected,
    /// A TCP reset came back: the far side (or a firewall rejecting with a
    /// reset) answered.
    Refused,
    /// An ICMP unreachable came back (`No route to host`, `Network is
    /// unreachable`): a routing decision refused it.
    Unreachable,
    /// No answer within 0.2 s: a firewall dropped it silently.
    TimedOut,
    /// Anything else (the log line is kept in the tally's `odd` list).
    Other,
}

impl Outcome {
    fn parse(word: &str) -> Outcome {
        match word {
            "connected" => Outcome::Connected,
            "refused" => Outcome::Refused,
            "unreachable" => Outcome::Unreachable,
            "timeout" => Outcome::TimedOut,
            _ => Outcome::Other,
        }
    }
}

/// One logged attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// When it ended, in seconds since the epoch (the host's clock: compare
    /// with [`clock`]).
    pub at: f64,
    /// How it ended.
    pub outcome: Outcome,
    /// The log line, for messages.
    pub line: String,
}

/// Counts of outcomes of a run of attempts.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// How many attempts ended each way.
    pub counts: BTreeMap<Outcome, usize>,
    /// The log lines of attempts that ended in an unexpected way.
    pub odd: Vec<String>,
}

impl Tally {
    /// The tally of `attempts`.
    pub fn of<'a>(attempts: impl IntoIterator<Item = &'a Attempt>) -> Tally {
        let mut tally = Tally::default();
        for a in attempts {
            *tally.counts.entry(a.outcome).or_default() += 1;
            if a.outcome == Outcome::Other {
                tally.odd.push(a.line.clone());
            }
        }
        tally
    }

    /// How many attempts ended as `outcome`.
    pub fn count(&self, outcome: Outcome) -> usize {
        self.counts.get(&outcome).copied().unwrap_or(0)
    }

    /// How many attempts there were.
    pub fn total(&self) -> usize {
        self.counts.values().sum()
    }

    /// Attempts whose packets reached the far side: established, or reset
    /// by a listener-less port over there.
    pub fn crossings(&self) -> usize {
        self.count(Outcome::Connected) + self.count(Outcome::Refused)
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.counts.iter().map(|(o, n)| format!("{o:?} {n}")).collect();
        write!(f, "{} attempt(s): {}", self.total(), parts.join(", "))?;
        if !self.odd.is_empty() {
            write!(f, "; odd: {:?}", self.odd)?;
        }
        Ok(())
    }
}

/// A probe running inside a host; [`Probe::stop`] ends it and returns its
/// attempts. Dropping it without stopping kills the loop's `nsenter`.
pub struct Probe {
    /// The probe's log inside the host.
    log: String,
    /// The file whose existence ends the loop.
    stop_file: String,
    child: Option<Child>,
}

impl Probe {
    /// Starts probing `address:port` from network namespace `netns` of
    /// `host`, and returns once the first attempt is logged. `name` names the
    /// probe's files (one probe per name at a time).
    pub fn start(host: &TestHost, name: &str, netns: &str, address: &str, port: u16) -> Probe {
        host.run_ok(&["mkdir", "-p", PROBE_DIR]);
        let log = format!("{PROBE_DIR}/{name}.log");
        let stop_file = format!("{PROBE_DIR}/{name}.stop");
        host.run_ok(&["rm", "-f", &stop_file, &log]);
        let port = port.to_string();
        let child = host
            .command(&[
                "ip",
                "netns",
                "exec",
                netns,
                "bash",
                "-c",
                PROBE_SCRIPT,
                "probe",
                &log,
                address,
                &port,
                &stop_file,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start probe {name}: {e}"));
        let probe = Probe {
            log,
            stop_file,
            child: Some(child),
        };
        for _ in 0..100 {
            if !probe.attempts(host).is_empty() {
                return probe;
            }
            std::thread::sleep(std::time::Duration::from_millis(30));
        }
        panic!("probe {name} logged no attempt within 3 s");
    }

    /// The attempts logged so far.
    pub fn attempts(&self, host: &TestHost) -> Vec<Attempt> {
        let out = host.exec(&["cat", "--", &self.log]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                let (at, word) = line.split_once(' ')?;
                Some(Attempt {
                    at: at.parse().ok()?,
                    outcome: Outcome::parse(word),
                    line: line.to_string(),
                })
            })
            .collect()
    }

    /// Ends the loop after its current attempt and returns every attempt.
    pub fn stop(mut self, host: &TestHost) -> Vec<Attempt> {
        host.run_ok(&["touch", &self.stop_file]);
        if let Some(child) = self.child.take() {
            let out = finish(child, "a probe loop");
            assert!(
                out.status.success(),
                "the probe loop failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.attempts(host)
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The host's clock now, in seconds since the epoch, as the probes log it.
pub fn clock(host: &TestHost) -> f64 {
    let now = host.run_ok(&["date", "+%s.%N"]);
    now.trim()
        .parse()
        .unwrap_or_else(|e| panic!("date printed {now:?}: {e}"))
}
