//! Helpers shared by gatectl's integration tests (`mod common;` in `tests/*.rs`).
//!
//! The centre piece is [`TestHost`]: a throwaway host with a real systemd as PID 1 of fresh
//! mount/pid/net/uts/ipc/cgroup namespaces, on an overlay of `/` whose writes go to a tmpfs
//! (see `tests/harness/testhost-init` and "Testing on machines without a booted systemd" in
//! the design notes). Tests run everything that has side effects *inside* it, with
//! `nsenter`, so nothing they do reaches a file, a network namespace, a firewall or a service
//! of the real machine. Dropping the host (also while a test panics) kills its PID 1, which
//! ends every process in it, and removes what the harness created on the real machine.
//!
//! Fixtures build the networks a gate talks to: named network namespaces joined to the
//! throwaway host's root namespace by veth pairs, and an `sshd` of the test's own in one of
//! them ([`TestHost::start_sshd`]). Test fixtures may use `ip`; gatectl itself never does.
//!
//! Only `std` and the package's own dependencies (`libc`, `serde_json`) are used, and the
//! dev-dependency `jsonschema` to validate gatectl's `--json` outputs.

#![allow(dead_code)] // each test binary uses a different subset

pub mod gatectl;
pub mod json_schema;
pub mod probe;
pub mod session;

use std::ffi::{CString, OsStr};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Directory of the real machine holding each throwaway host's pid file, log and (empty)
/// mount point directory, named after the host.
pub const STATE_ROOT: &str = "/run/gatectl-tests";

/// Directory *inside* a throwaway host where fixtures keep keys, configs and logs.
pub const FIXTURE_ROOT: &str = "/root/gatectl-fixture";

/// How long [`TestHost::boot`] waits for systemd, unless `GATECTL_TEST_BOOT_TIMEOUT` (seconds)
/// says otherwise.
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a command run inside a throwaway host may take before the test
/// calls it hung. Not a speed check: it turns a hang (a deadlock, a lost
/// wake-up) into one failing test that names the command, instead of a test
/// run that never ends.
pub const HANG_LIMIT: Duration = Duration::from_secs(180);

/// `PATH` of every command run inside a throwaway host.
const INNER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Waits for `child` and collects what it wrote to its piped stdout and
/// stderr, like `Child::wait_with_output`. A child still running after
/// [`HANG_LIMIT`] is killed and the test fails, naming `what`.
pub fn finish(child: Child, what: &str) -> Output {
    finish_within(child, what, HANG_LIMIT)
}

/// [`finish`] with a limit of its own, for a child that runs long by design.
pub fn finish_within(mut child: Child, what: &str, limit: Duration) -> Output {
    let stdout = child.stdout.take().map(read_to_end_in_background);
    let stderr = child.stderr.take().map(read_to_end_in_background);
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(1);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for a child process") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} hung: still running after {} s, so the test killed it",
                limit.as_secs()
            );
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    let collect = |reader: Option<thread::JoinHandle<Vec<u8>>>| {
        reader
            .map(|r| r.join().expect("read a child's output"))
            .unwrap_or_default()
    };
    Output {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    }
}

/// Reads `pipe` to its end on a thread of its own.
fn read_to_end_in_background(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

/// An argument vector as one line, for messages.
fn describe<S: AsRef<OsStr>>(argv: &[S]) -> String {
    let words: Vec<_> = argv.iter().map(|a| a.as_ref().to_string_lossy()).collect();
    format!("{words:?}")
}

/// Whether this process may run privileged tests.
///
/// Returns `true` when the effective uid is 0. Otherwise, when the environment variable `CI`
/// is set, panics (CI must run every test); else prints a skip notice to stderr and returns
/// `false`, and the caller should return early:
///
/// ```ignore
/// if !require_root() { return; }
/// ```
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("privileged test cannot run: not root; CI requires it");
    }
    eprintln!("skipping privileged test: not root (run the tests as root to include it)");
    false
}

/// A throwaway systemd host: systemd as PID 1 of its own namespaces, on an overlay root.
///
/// Boot one per test with [`TestHost::boot`]; run commands inside with [`TestHost::exec`],
/// [`TestHost::run_ok`] or [`TestHost::sh_ok`]; put files and freshly built binaries inside
/// with [`TestHost::write_file`] and [`TestHost::install_binary`] (the overlay shows `/` as it
/// was when the host booted, and a `DynamicUser=yes` unit can only execute binaries from a
/// system path such as `/usr/local/bin`).
///
/// Dropping it SIGKILLs its PID 1, which ends every process inside; the host's tmpfs, network
/// namespaces, firewall and units go with it. The host is also tied to the thread that booted
/// it: if that thread (or the whole test process) dies without dropping it, the host is
/// killed too (`PR_SET_PDEATHSIG` + `unshare --kill-child`). So keep a `TestHost` on the
/// thread that booted it: one host shared by several tests through a `static` would die
/// when the test that booted it ends.
pub struct TestHost {
    /// Unique name: host name inside, and the name of its files under [`STATE_ROOT`].
    name: String,
    /// PID of the host's systemd (its PID 1) as seen from outside; 0 until found.
    pid: i32,
    /// The `unshare` process (parent of the host's PID 1).
    runner: Option<Child>,
    /// Empty directory of the real machine, used as mount point inside the host's namespace.
    mnt: PathBuf,
    /// The init's and systemd's console output.
    log: PathBuf,
    /// Holds `pid`, for humans cleaning up after a crashed test run.
    pidfile: PathBuf,
    /// Per-host cgroups created for this host (one per hierarchy), removed on drop.
    cgroups: Vec<PathBuf>,
    /// The name given to [`TestHost::boot`], for a reboot.
    base_name: String,
    /// The disk holding the host's writes across boots, if it has one; removed when the
    /// host is dropped (not at a [`TestHost::reboot`]).
    disk: Option<HostDisk>,
    /// `CLOCK_MONOTONIC` (µs) just before the host's init was started: its power-on.
    powered_on_usec: u64,
}

/// How to boot a [`TestHost`]: see [`TestHost::boot_with`].
#[derive(Default)]
pub struct Boot {
    /// A disk that keeps the host's writes for its next boot (see [`HostDisk`]); `None`:
    /// they go to a tmpfs and die with the host.
    pub disk: Option<HostDisk>,
    /// Return as soon as systemd answers (`is-system-running` says `initializing` or
    /// `starting`), without
    /// waiting for its boot jobs to finish: for a test that watches the boot itself.
    pub until_answering: bool,
    /// How long to wait; `None`: `GATECTL_TEST_BOOT_TIMEOUT` (seconds) or
    /// [`DEFAULT_BOOT_TIMEOUT`].
    pub timeout: Option<Duration>,
}

/// A directory on the real machine's disk holding a throwaway host's overlay upper and work
/// directories (`GATECTL_TEST_DISK` of `tests/harness/testhost-init`), so that its writes to
/// `/etc`, `/var`, `/root` … outlive it: a host booted again with it ([`TestHost::reboot`])
/// sees them, while `/run`, `/tmp` and the kernel state (network namespaces, links,
/// nftables) are fresh, as after a reboot.
///
/// It lives under `CARGO_TARGET_TMPDIR` (the build's own `target/tmp`, never `/dev`, `/etc`,
/// `/run` or `/tmp` of the machine), named after the test process, and is removed with the
/// host that holds it (or, after a killed test run, by the next boot of any test host).
pub struct HostDisk {
    dir: PathBuf,
}

/// Where [`HostDisk`]s go.
fn disks_root() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("gatectl-disks")
}

impl HostDisk {
    /// Creates an empty disk named after `name` (made unique with the process id and a
    /// counter).
    pub fn new(name: &str) -> HostDisk {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let seq = SEQ.fetch_add(1, Ordering::SeqCst);
        let dir = disks_root().join(format!("{}-{}-{}", sanitize(name, 32), std::process::id(), seq));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        HostDisk { dir }
    }

    /// The directory (on the real machine).
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for HostDisk {
    /// Removes the directory and everything the host wrote there. Never panics.
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            if e.kind() != io::ErrorKind::NotFound {
                eprintln!(
                    "cannot remove the throwaway host disk {}: {e}",
                    self.dir.display()
                );
            }
        }
        let _ = fs::remove_dir(disks_root());
    }
}

/// `CLOCK_MONOTONIC` now, in µs: the clock of systemd's `…TimestampMonotonic` properties.
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

impl TestHost {
    /// Boots a throwaway host and waits until its systemd reports `running` or `degraded`.
    ///
    /// `name` identifies the test (any characters; it is sanitised and made unique with the
    /// process id and a counter). The host runs `tests/harness/testhost-init` under
    /// `unshare --fork --pid --mount --net --uts --ipc --cgroup` in a session of its own, in
    /// a cgroup of its own below the caller's. Directories listed in `GATECTL_TEST_BINDS` are
    /// bind-mounted inside (see the init script).
    ///
    /// Panics, with the host's log, when the host cannot be started or systemd does not come
    /// up within [`DEFAULT_BOOT_TIMEOUT`]; whatever was already created is cleaned up.
    pub fn boot(name: &str) -> TestHost {
        TestHost::boot_with(name, Boot::default())
    }

    /// [`TestHost::boot`] on `disk`: the host's writes stay there for a [`TestHost::reboot`].
    pub fn boot_with_disk(name: &str, disk: HostDisk) -> TestHost {
        TestHost::boot_with(
            name,
            Boot {
                disk: Some(disk),
                ..Boot::default()
            },
        )
    }

    /// Powers the host off (SIGKILL to its PID 1: nothing of it runs its shutdown) and boots
    /// it again on the same disk, with `boot`'s other options: the new host sees the old
    /// one's writes to files, and nothing else of it. Panics if the host has no disk.
    pub fn reboot_with(mut self, boot: Boot) -> TestHost {
        let disk = self
            .disk
            .take()
            .expect("reboot: the host has no disk (boot it with a HostDisk)");
        let name = self.base_name.clone();
        drop(self);
        TestHost::boot_with(
            &name,
            Boot {
                disk: Some(disk),
                ..boot
            },
        )
    }

    /// [`TestHost::reboot_with`] waiting until the new host is up.
    pub fn reboot(self) -> TestHost {
        self.reboot_with(Boot::default())
    }

    /// The directory of the host's disk on the real machine, if it has one.
    pub fn disk_path(&self) -> Option<&Path> {
        self.disk.as_ref().map(HostDisk::path)
    }

    /// `CLOCK_MONOTONIC` (µs) just before the host's init started: when it was powered on.
    pub fn powered_on_usec(&self) -> u64 {
        self.powered_on_usec
    }

    /// [`TestHost::boot`] with options: a disk of its own, and how long to wait.
    pub fn boot_with(name: &str, boot: Boot) -> TestHost {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let seq = SEQ.fetch_add(1, Ordering::SeqCst);
        let base_name = name.to_string();
        let name = format!("{}-{}-{}", sanitize(name, 32), std::process::id(), seq);
        let state = Path::new(STATE_ROOT);
        fs::create_dir_all(state).unwrap_or_else(|e| panic!("cannot create {}: {e}", state.display()));
        sweep_stale_hosts();
        // Hosts share the real /dev: a /dev/null replaced by a regular file
        // (seen once, origin unknown) breaks every daemon() in every host.
        use std::os::unix::fs::FileTypeExt;
        assert!(
            fs::metadata("/dev/null").is_ok_and(|m| m.file_type().is_char_device()),
            "/dev/null on this machine is not the null device any more (something replaced it); \
             restore it with `rm /dev/null && mknod -m 666 /dev/null c 1 3`"
        );
        let init = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/harness/testhost-init");
        assert!(
            init.is_file(),
            "the throwaway-host init is missing: {}",
            init.display()
        );
        assert!(
            Path::new("/lib/systemd/systemd").exists(),
            "systemd is not installed (apt-get install systemd dbus): the throwaway host needs it"
        );

        // From here on, a panic drops `host`, which cleans up whatever exists so far.
        let mut host = TestHost {
            mnt: state.join(format!("{name}.mnt")),
            log: state.join(format!("{name}.log")),
            pidfile: state.join(format!("{name}.pid")),
            name,
            pid: 0,
            runner: None,
            cgroups: Vec::new(),
            base_name,
            disk: boot.disk,
            powered_on_usec: 0,
        };
        fs::create_dir_all(&host.mnt).unwrap_or_else(|e| panic!("cannot create {}: {e}", host.mnt.display()));
        host.cgroups = create_host_cgroups(&host.name);
        let procs: Vec<CString> = host
            .cgroups
            .iter()
            .map(|d| CString::new(d.join("cgroup.procs").as_os_str().as_bytes()).unwrap())
            .collect();

        let log =
            File::create(&host.log).unwrap_or_else(|e| panic!("cannot create {}: {e}", host.log.display()));
        let log_err = log.try_clone().expect("dup log fd");
        let outer_mntns = fs::read_link("/proc/self/ns/mnt").expect("read /proc/self/ns/mnt");

        let mut cmd = Command::new("unshare");
        cmd.args([
            "--fork",
            "--pid",
            "--mount",
            "--net",
            "--uts",
            "--ipc",
            "--cgroup",
            "--kill-child",
        ])
        .arg("/bin/bash")
        .arg(&init)
        .arg(&host.mnt)
        .env("GATECTL_TEST_NAME", &host.name)
        .env("GATECTL_TEST_OUTER_MNTNS", &outer_mntns)
        .env(
            "GATECTL_TEST_DISK",
            host.disk.as_ref().map_or(Path::new(""), |d| d.path()),
        )
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
        // system calls (setsid, prctl, open, write, close) on memory allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                // Own session: the terminal's ^C goes to the test runner, not to the host.
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                // The host dies with the thread that booted it, even if nothing drops it.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                // Into the per-host cgroups ("0" = the writing process); best effort: a
                // hierarchy we cannot enter is shared with the caller's cgroup instead.
                for procs in &procs {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd >= 0 {
                        libc::write(fd, b"0".as_ptr().cast(), 1);
                        libc::close(fd);
                    }
                }
                Ok(())
            });
        }
        host.powered_on_usec = monotonic_usec();
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start unshare (util-linux): {e}"));
        let upid = child.id() as i32;
        host.runner = Some(child);

        let timeout = boot.timeout.unwrap_or_else(|| {
            std::env::var("GATECTL_TEST_BOOT_TIMEOUT")
                .ok()
                .and_then(|s| s.parse().ok())
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_BOOT_TIMEOUT)
        });
        let deadline = Instant::now() + timeout;
        let mut state = String::from("(systemd not started yet)");
        loop {
            if let Ok(Some(status)) = host.runner.as_mut().unwrap().try_wait() {
                panic!(
                    "throwaway host {} ended during boot ({status}); its log:\n{}",
                    host.name,
                    host.log_text()
                );
            }
            if host.pid == 0 {
                if let Some(p) = child_pids(upid).into_iter().next() {
                    // The child is the init script until it execs systemd.
                    if read_trimmed(format!("/proc/{p}/comm")).as_deref() == Some("systemd") {
                        host.pid = p;
                        let _ = fs::write(&host.pidfile, format!("{p}\n"));
                    }
                }
            }
            if host.pid != 0 {
                let out = host.exec(&["systemctl", "is-system-running"]);
                state = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if state == "running"
                    || state == "degraded"
                    || (boot.until_answering && (state == "starting" || state == "initializing"))
                {
                    return host;
                }
            }
            if Instant::now() >= deadline {
                let diag = if host.pid != 0 {
                    let jobs = host.exec(&["systemctl", "list-jobs", "--no-pager"]);
                    let failed = host.exec(&["systemctl", "--failed", "--no-pager"]);
                    format!(
                        "jobs:\n{}\nfailed units:\n{}",
                        String::from_utf8_lossy(&jobs.stdout),
                        String::from_utf8_lossy(&failed.stdout)
                    )
                } else {
                    String::new()
                };
                panic!(
                    "throwaway host {} did not come up within {timeout:?} (system state: {state})\n\
                     {diag}\nits log:\n{}",
                    host.name,
                    host.log_text()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The host's unique name (also its host name inside).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// PID of the host's systemd (PID 1 inside) as seen from the real machine.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The per-host cgroup directories (on the real machine) the host runs in; they are
    /// removed when the host is dropped.
    pub fn cgroup_dirs(&self) -> &[PathBuf] {
        &self.cgroups
    }

    /// The host's console log so far: the init script's errors and systemd's boot messages.
    pub fn log_text(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("(no log at {}: {e})", self.log.display()))
    }

    /// A `Command` running `argv` inside the host (`nsenter -t PID -a argv…`): in all its
    /// namespaces and its root, with a clean environment (`PATH`, `HOME=/root`, `LC_ALL=C`)
    /// and stdin from `/dev/null`. Adjust it (env, stdin, …) and run it yourself.
    pub fn command<S: AsRef<OsStr>>(&self, argv: &[S]) -> Command {
        assert!(!argv.is_empty(), "empty argv");
        assert!(self.pid > 0, "throwaway host {} is not running", self.name);
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.pid.to_string())
            .arg("-a")
            .arg("--")
            .args(argv)
            .env_clear()
            .env("PATH", INNER_PATH)
            .env("HOME", "/root")
            .env("LC_ALL", "C")
            .env("TERM", "dumb")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `argv` inside the host and returns its output, whatever its exit status.
    pub fn exec<S: AsRef<OsStr>>(&self, argv: &[S]) -> Output {
        let child = self
            .command(argv)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run nsenter (util-linux): {e}"));
        finish(child, &describe(argv))
    }

    /// Runs `argv` inside the host with `input` on its stdin; returns its output, whatever
    /// its exit status.
    pub fn exec_with_input<S: AsRef<OsStr>>(&self, argv: &[S], input: &[u8]) -> Output {
        self.pipe_into(argv, &mut &input[..])
    }

    /// Runs `argv` inside the host and returns its stdout; panics with the command, its exit
    /// status, stdout and stderr if it fails.
    pub fn run_ok<S: AsRef<OsStr>>(&self, argv: &[S]) -> String {
        let out = self.exec(argv);
        self.expect_success(argv, &out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a shell script (`sh -c script`) inside the host, like [`TestHost::run_ok`].
    /// For test fixtures only: gatectl itself never goes through a shell.
    pub fn sh_ok(&self, script: &str) -> String {
        self.run_ok(&["sh", "-c", script])
    }

    /// Writes `contents` to `path` inside the host (creating parent directories) and sets
    /// its mode. The bytes are streamed through stdin; `path` is passed as an argument, never
    /// interpolated into a script.
    pub fn write_file(&self, path: &str, contents: &[u8], mode: u32) {
        self.stream_file(path, &mut &contents[..], mode);
    }

    /// Copies a file of the real machine (e.g. a freshly built binary) to `dest` inside the
    /// host with mode 0755, by streaming its bytes: the host's overlay shows `/` as it was at
    /// its boot, and `DynamicUser=yes` units can only execute binaries from system paths such
    /// as `/usr/local/bin`.
    pub fn install_binary(&self, host_path: &Path, dest: &str) {
        let mut file =
            File::open(host_path).unwrap_or_else(|e| panic!("cannot open {}: {e}", host_path.display()));
        self.stream_file(dest, &mut file, 0o755);
    }

    /// Reads a file inside the host (panics if it cannot).
    pub fn read_file(&self, path: &str) -> String {
        self.run_ok(&["cat", "--", path])
    }

    /// Creates a named network namespace inside the host (iproute2-style, under the host's
    /// own `/run/netns`) with only loopback, up: an isolated agent namespace.
    pub fn add_netns(&self, ns: &str) {
        self.run_ok(&["ip", "netns", "add", ns]);
        self.run_ok(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }

    /// Creates a named network namespace inside the host joined to the host's root namespace
    /// by a veth pair: `host_if` (address `host_addr`, CIDR) in the root namespace, `eth0`
    /// (address `ns_addr`, CIDR) in `ns`, both up, loopback up, and a default route in `ns`
    /// via `host_addr`. With [`TestHost::enable_ip_forwarding`], namespaces set up this way
    /// reach one another through the host's root namespace.
    pub fn add_netns_with_link(&self, ns: &str, host_if: &str, host_addr: &str, ns_addr: &str) {
        self.add_netns(ns);
        self.run_ok(&[
            "ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ]);
        self.run_ok(&["ip", "addr", "add", host_addr, "dev", host_if]);
        self.run_ok(&["ip", "link", "set", host_if, "up"]);
        self.run_ok(&["ip", "-n", ns, "addr", "add", ns_addr, "dev", "eth0"]);
        self.run_ok(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
        let gateway = host_addr.split('/').next().unwrap();
        self.run_ok(&["ip", "-n", ns, "route", "add", "default", "via", gateway]);
    }

    /// The IPv6 twin of [`TestHost::add_netns_with_link`]: namespace `ns` joined to the
    /// host's root namespace by a veth pair `host_if` ↔ `eth0` with only IPv6 addresses
    /// (`host_addr`, `ns_addr`, CIDR; no duplicate address detection, so they work at once),
    /// loopback up, and an IPv6 default route in `ns` via `host_addr`.
    pub fn add_netns_with_link6(&self, ns: &str, host_if: &str, host_addr: &str, ns_addr: &str) {
        self.add_netns(ns);
        self.run_ok(&[
            "ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ]);
        self.run_ok(&["ip", "link", "set", host_if, "up"]);
        self.run_ok(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
        self.add_ipv6_to_link(ns, host_if, host_addr, ns_addr);
    }

    /// Gives the link of [`TestHost::add_netns_with_link`] (or
    /// [`TestHost::add_netns_with_link6`]) IPv6 addresses as well: `host_addr` on `host_if`,
    /// `ns_addr` on `eth0` in `ns` (CIDR, no duplicate address detection), and an IPv6
    /// default route in `ns` via `host_addr`: a dual-stack link.
    pub fn add_ipv6_to_link(&self, ns: &str, host_if: &str, host_addr: &str, ns_addr: &str) {
        self.run_ok(&["ip", "-6", "addr", "add", host_addr, "dev", host_if, "nodad"]);
        self.run_ok(&[
            "ip", "-n", ns, "-6", "addr", "add", ns_addr, "dev", "eth0", "nodad",
        ]);
        let gateway = host_addr.split('/').next().unwrap();
        self.run_ok(&["ip", "-n", ns, "-6", "route", "add", "default", "via", gateway]);
    }

    /// Turns on IPv4 forwarding in the host's root network namespace (its own namespace,
    /// not the real machine's).
    pub fn enable_ip_forwarding(&self) {
        self.run_ok(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    }

    /// Starts an `sshd` of the test's own inside network namespace `ns`, listening on
    /// `listen:port` only, and waits until it answers.
    ///
    /// Generates a fresh ed25519 host key and client key pair (no passphrase) in a fixture
    /// directory under [`FIXTURE_ROOT`] inside the host, authorises the client key for root,
    /// and writes an `sshd_config` (no PAM, no passwords, no DNS lookups, verbose log). The
    /// daemon lives until the host ends. One per `ns`/`port` pair (the fixture directory is
    /// named after them). Panics with the sshd log if it does not come up.
    pub fn start_sshd(&self, ns: &str, listen: &str, port: u16) -> SshFixture {
        let dir = format!("{FIXTURE_ROOT}/sshd-{}-{port}", sanitize(ns, 40));
        let fx = SshFixture {
            ns: ns.to_string(),
            listen: listen.to_string(),
            port,
            config: format!("{dir}/sshd_config"),
            log: format!("{dir}/sshd.log"),
            pid_file: format!("{dir}/sshd.pid"),
            identity: format!("{dir}/client_ed25519"),
            authorized_keys: format!("{dir}/authorized_keys"),
            host_key: format!("{dir}/ssh_host_ed25519_key"),
            host_public_key: String::new(),
            dir,
        };
        self.run_ok(&["mkdir", "-p", "-m", "0700", "--", &fx.dir]);
        for (key, comment) in [
            (&fx.host_key, "gatectl-test-host"),
            (&fx.identity, "gatectl-test-client"),
        ] {
            self.run_ok(&[
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                comment,
                "-f",
                key,
            ]);
        }
        let client_pub = self.read_file(&format!("{}.pub", fx.identity));
        self.write_file(&fx.authorized_keys, client_pub.as_bytes(), 0o600);
        let host_pub = self.read_file(&format!("{}.pub", fx.host_key));
        let host_public_key = host_pub.split_whitespace().take(2).collect::<Vec<_>>().join(" ");

        let listen_addr = if listen.contains(':') {
            format!("[{listen}]:{port}")
        } else {
            format!("{listen}:{port}")
        };
        let config = format!(
            "# sshd of a gatectl test fixture\n\
             ListenAddress {listen_addr}\n\
             HostKey {host_key}\n\
             PidFile {pid_file}\n\
             AuthorizedKeysFile {authorized_keys}\n\
             UsePAM no\n\
             StrictModes no\n\
             PermitRootLogin prohibit-password\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UseDNS no\n\
             LogLevel VERBOSE\n\
             PrintMotd no\n\
             Subsystem sftp internal-sftp\n",
            host_key = fx.host_key,
            pid_file = fx.pid_file,
            authorized_keys = fx.authorized_keys,
        );
        self.write_file(&fx.config, config.as_bytes(), 0o600);
        // sshd's privilege-separation directory (on the host's /run tmpfs)
        self.run_ok(&["mkdir", "-p", "-m", "0755", "/run/sshd"]);
        self.run_ok(&["/usr/sbin/sshd", "-t", "-f", &fx.config]);
        let fx = SshFixture {
            host_public_key,
            ..fx
        };
        self.run_sshd(&fx);
        fx
    }

    /// Starts the daemon of `fx` again, with its keys and config as they are: on a host
    /// booted again on its disk ([`TestHost::reboot`]), whose files of the fixture are still
    /// there but whose processes and network namespaces are not. The caller makes the
    /// namespace `fx.ns` again first. Waits until it answers, like [`TestHost::start_sshd`].
    pub fn restart_sshd(&self, fx: &SshFixture) {
        self.run_sshd(fx);
    }

    /// Runs the daemon of `fx` in its netns and waits (10 s at most) until it
    /// answers with its host key.
    fn run_sshd(&self, fx: &SshFixture) {
        self.run_ok(&["mkdir", "-p", "-m", "0755", "/run/sshd"]);
        self.run_ok(&[
            "ip",
            "netns",
            "exec",
            &fx.ns,
            "/usr/sbin/sshd",
            "-f",
            &fx.config,
            "-E",
            &fx.log,
        ]);
        let key_b64 = fx.host_public_key.split(' ').nth(1).unwrap_or("").to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let scan = self.exec(&[
                "ip",
                "netns",
                "exec",
                &fx.ns,
                "ssh-keyscan",
                "-T",
                "2",
                "-t",
                "ed25519",
                "-p",
                &fx.port.to_string(),
                &fx.listen,
            ]);
            if !key_b64.is_empty() && String::from_utf8_lossy(&scan.stdout).contains(&key_b64) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sshd in netns {} does not answer on {}:{}; keyscan said: {}\nsshd log:\n{}",
                fx.ns,
                fx.listen,
                fx.port,
                String::from_utf8_lossy(&scan.stderr),
                fx.log_text(self)
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Streams `reader` into `path` inside the host, then chmods it to `mode`.
    fn stream_file(&self, path: &str, reader: &mut dyn Read, mode: u32) {
        let mode = format!("{mode:o}");
        let argv = [
            "sh",
            "-c",
            r#"mkdir -p -- "$(dirname -- "$1")" && cat > "$1" && chmod "$2" -- "$1""#,
            "sh",
            path,
            &mode,
        ];
        let out = self.pipe_into(&argv, reader);
        self.expect_success(&argv, &out);
    }

    /// Runs `argv` inside the host with `reader`'s bytes on its stdin.
    fn pipe_into<S: AsRef<OsStr>>(&self, argv: &[S], reader: &mut dyn Read) -> Output {
        let mut child = self
            .command(argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run nsenter (util-linux): {e}"));
        let mut stdin = child.stdin.take().unwrap();
        // A command that exits early closes the pipe: its exit status tells why.
        let copied = io::copy(reader, &mut stdin);
        drop(stdin);
        let out = finish(child, &describe(argv));
        if let Err(e) = copied {
            if out.status.success() {
                panic!("streaming into the throwaway host failed: {e}");
            }
        }
        out
    }

    fn expect_success<S: AsRef<OsStr>>(&self, argv: &[S], out: &Output) {
        if !out.status.success() {
            let argv = describe(argv);
            panic!(
                "command failed inside throwaway host {}: {argv}\nstatus: {}\nstdout:\n{}\nstderr:\n{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

impl Drop for TestHost {
    /// Kills the host's PID 1 (ending everything inside), waits until it is gone, and removes
    /// the host's cgroups, mount point directory, pid file and log. Never panics: it also
    /// runs while a failing test unwinds; problems are reported on stderr.
    fn drop(&mut self) {
        let failing = thread::panicking();
        if failing {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "--- last lines of throwaway host {}'s log ---\n{}\n--- end of log ---",
                self.name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let upid = self.runner.as_ref().map(|c| c.id() as i32);
        let mut targets: Vec<i32> = Vec::new();
        if self.pid > 0 {
            targets.push(self.pid);
        } else if let Some(upid) = upid {
            // Boot failed before systemd was found: its child is the init (or systemd).
            targets.extend(child_pids(upid));
        }
        for &p in &targets {
            // SAFETY: plain kill(2) of processes this host started.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        if let Some(mut child) = self.runner.take() {
            if !wait_child(&mut child, Duration::from_secs(10)) {
                // unshare --kill-child: killing unshare kills the host's PID 1 as well
                let _ = child.kill();
                if !wait_child(&mut child, Duration::from_secs(5)) {
                    eprintln!(
                        "throwaway host {}: unshare (pid {}) does not exit",
                        self.name,
                        child.id()
                    );
                }
            }
        }
        for &p in &targets {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{p}")).exists() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            if Path::new(&format!("/proc/{p}")).exists() {
                eprintln!("throwaway host {}: PID {p} still exists after SIGKILL", self.name);
            }
        }
        for dir in &self.cgroups {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match remove_cgroup_tree(dir) {
                    Ok(()) => break,
                    Err(e) if Instant::now() >= deadline => {
                        eprintln!(
                            "throwaway host {}: cannot remove cgroup {}: {e}",
                            self.name,
                            dir.display()
                        );
                        break;
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        // The overlay was mounted in the host's private mount namespace only; should
        // anything show up here all the same, detach it before removing the directory.
        if is_mount_point(&self.mnt) {
            if let Ok(c) = CString::new(self.mnt.as_os_str().as_bytes()) {
                // SAFETY: umount2 with a valid NUL-terminated path.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        if let Err(e) = fs::remove_dir(&self.mnt) {
            if e.kind() != io::ErrorKind::NotFound {
                eprintln!(
                    "throwaway host {}: cannot remove {}: {e}",
                    self.name,
                    self.mnt.display()
                );
            }
        }
        let _ = fs::remove_file(&self.pidfile);
        if std::env::var_os("GATECTL_TEST_KEEP_LOGS").is_some() {
            eprintln!("throwaway host {}: log kept at {}", self.name, self.log.display());
        } else {
            let _ = fs::remove_file(&self.log);
        }
        // Only succeeds once no other host of any test run is left.
        let _ = fs::remove_dir(STATE_ROOT);
    }
}

/// An `sshd` a test started in a network namespace of a [`TestHost`]; all paths are inside
/// that host.
#[derive(Debug, Clone)]
pub struct SshFixture {
    /// Network namespace the daemon runs in.
    pub ns: String,
    /// Address it listens on (only there).
    pub listen: String,
    /// Port it listens on.
    pub port: u16,
    /// Fixture directory holding everything below.
    pub dir: String,
    /// The daemon's `sshd_config`.
    pub config: String,
    /// The daemon's log (`sshd -E`), handy when a test fails.
    pub log: String,
    /// The daemon's pid file.
    pub pid_file: String,
    /// The client's private key (mode 0600), authorised for root; `<identity>.pub` beside it.
    pub identity: String,
    /// The daemon's authorized_keys file.
    pub authorized_keys: String,
    /// The daemon's private host key.
    pub host_key: String,
    /// The daemon's public host key, `ssh-ed25519 AAAA…` (no comment).
    pub host_public_key: String,
}

impl SshFixture {
    /// A known_hosts line (with newline) vouching for this daemon's host key under
    /// `host_alias`. `ssh` looks up the name verbatim when `HostKeyAlias` is set (as in
    /// gatectl's ssh-config), else the host name, or `[host]:port` for a port other than 22
    /// (see [`SshFixture::known_hosts_name`]).
    pub fn known_hosts_for(&self, host_alias: &str) -> String {
        format!("{host_alias} {}\n", self.host_public_key)
    }

    /// The name `ssh` looks up in known_hosts when connecting straight to the daemon's
    /// address without `HostKeyAlias`: `addr`, or `[addr]:port` when the port is not 22.
    pub fn known_hosts_name(&self) -> String {
        if self.port == 22 {
            self.listen.clone()
        } else {
            format!("[{}]:{}", self.listen, self.port)
        }
    }

    /// Writes a known_hosts file at `path` inside `host` (mode 0600) with one line per name.
    pub fn write_known_hosts(&self, host: &TestHost, path: &str, names: &[&str]) {
        let text: String = names.iter().map(|n| self.known_hosts_for(n)).collect();
        host.write_file(path, text.as_bytes(), 0o600);
    }

    /// An ssh_config `Host` block reaching this daemon directly as root under `alias`.
    pub fn client_config(&self, alias: &str) -> String {
        format!(
            "Host {alias}\n  HostName {}\n  Port {}\n  User root\n",
            self.listen, self.port
        )
    }

    /// The daemon's log so far.
    pub fn log_text(&self, host: &TestHost) -> String {
        String::from_utf8_lossy(&host.exec(&["cat", &self.log]).stdout).into_owned()
    }
}

/// The argv of a non-interactive `ssh` run inside a throwaway host:
///
/// `[ip netns exec NETNS] ssh -F CONFIG -i IDENTITY -o UserKnownHostsFile=KNOWN_HOSTS
///  -o StrictHostKeyChecking=yes -o BatchMode=yes … ALIAS COMMAND`
///
/// `netns` `None` runs ssh in the host's root network namespace; `config` `None` uses
/// `/dev/null` (no config, not even root's own). Also set: `IdentitiesOnly=yes`,
/// `GlobalKnownHostsFile=/dev/null`, `UpdateHostKeys=no`, `ConnectTimeout=5`, `LogLevel=ERROR`,
/// so that only the given key and known_hosts count and stderr holds only errors. Pass the
/// result to [`TestHost::run_ok`] or [`TestHost::exec`]. Files must be mode 0600.
pub fn ssh_args(
    netns: Option<&str>,
    config: Option<&str>,
    identity: &str,
    known_hosts: &str,
    alias: &str,
    command: &str,
) -> Vec<String> {
    let mut argv: Vec<String> = Vec::new();
    if let Some(ns) = netns {
        argv.extend(["ip", "netns", "exec", ns].map(String::from));
    }
    argv.extend(
        [
            "ssh",
            "-F",
            config.unwrap_or("/dev/null"),
            "-i",
            identity,
            "-o",
            &format!("UserKnownHostsFile={known_hosts}"),
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "UpdateHostKeys=no",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "LogLevel=ERROR",
            "--",
            alias,
            command,
        ]
        .map(String::from),
    );
    argv
}

/// Lists the entries of a directory of the real machine (empty if it does not exist),
/// sorted: e.g. `/run/netns`, to show a test created nothing there.
pub fn list_dir(path: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(path)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Whether a process `pid` exists on the real machine.
pub fn pid_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// `name` reduced to `[A-Za-z0-9-]`, at most `max` characters, never empty.
fn sanitize(name: &str, max: usize) -> String {
    let s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(max)
        .collect();
    let s = s.trim_matches('-').to_string();
    if s.is_empty() {
        "host".to_string()
    } else {
        s
    }
}

fn read_trimmed(path: String) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// PIDs whose parent is `parent`.
fn child_pids(parent: i32) -> Vec<i32> {
    let mut pids = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return pids;
    };
    for entry in rd.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid …": comm may contain spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        if rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) == Some(parent) {
            pids.push(pid);
        }
    }
    pids
}

/// Waits up to `timeout` for `child` to exit; true if it did.
fn wait_child(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return true,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Ok(None) => return false,
            Err(_) => return true, // already reaped
        }
    }
}

/// This process's own cgroup directory in every hierarchy mounted under `/sys/fs/cgroup`
/// (where its throwaway hosts' cgroups go).
fn own_cgroup_dirs() -> Vec<PathBuf> {
    struct CgMount {
        fstype: String,
        mountpoint: String,
        root: String,
        options: Vec<String>,
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mounts: Vec<CgMount> = mountinfo
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            let (root, mountpoint) = (*pre.get(3)?, *pre.get(4)?);
            let (fstype, options) = (*post.first()?, *post.get(2)?);
            let ours = mountpoint == "/sys/fs/cgroup" || mountpoint.starts_with("/sys/fs/cgroup/");
            (ours && (fstype == "cgroup" || fstype == "cgroup2")).then(|| CgMount {
                fstype: fstype.to_string(),
                mountpoint: mountpoint.to_string(),
                root: root.to_string(),
                options: options.split(',').map(String::from).collect(),
            })
        })
        .collect();
    let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut dirs = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if path.contains("/..") {
            continue; // outside our cgroup namespace's view
        }
        let mount = if controllers.is_empty() {
            mounts.iter().find(|m| m.fstype == "cgroup2")
        } else {
            mounts.iter().find(|m| {
                m.fstype == "cgroup" && controllers.split(',').all(|c| m.options.iter().any(|o| o == c))
            })
        };
        let Some(mount) = mount else { continue };
        let rel = if mount.root == "/" {
            path
        } else if let Some(rel) = path.strip_prefix(mount.root.as_str()) {
            rel
        } else {
            continue;
        };
        dirs.push(Path::new(&mount.mountpoint).join(rel.trim_start_matches('/')));
    }
    dirs
}

/// Creates a cgroup `gatectl-test-NAME` below this process's own cgroup in every hierarchy
/// mounted under `/sys/fs/cgroup`, and returns the directories created. The host's init is
/// moved into them before it unshares its cgroup namespace, so the inner systemd builds its
/// tree there: hosts booted side by side do not share cgroups, and none lands in the real
/// machine's root cgroup. Best effort: a hierarchy where this fails is left out.
fn create_host_cgroups(name: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for parent in own_cgroup_dirs() {
        let dir = parent.join(format!("gatectl-test-{name}"));
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                eprintln!(
                    "note: cannot create cgroup {}: {e}; sharing the caller's",
                    dir.display()
                );
                continue;
            }
        }
        // cgroup v1 cpuset: a new cgroup has no CPUs or memory nodes until given some.
        for f in ["cpuset.cpus", "cpuset.mems"] {
            let own_value = read_trimmed(dir.join(f).to_string_lossy().into_owned());
            if own_value.as_deref() == Some("") {
                if let Some(v) = read_trimmed(parent.join(f).to_string_lossy().into_owned()) {
                    if !v.is_empty() {
                        let _ = fs::write(dir.join(f), v);
                    }
                }
            }
        }
        dirs.push(dir);
    }
    dirs
}

/// The test process id embedded in a host name (`<test>-<pid>-<seq>`).
fn owner_pid(host_name: &str) -> Option<i32> {
    let mut parts = host_name.rsplitn(3, '-');
    let _seq: u64 = parts.next()?.parse().ok()?;
    parts.next()?.parse().ok()
}

/// Removes what throwaway hosts of test processes that no longer exist left behind (a test
/// run killed with SIGKILL cannot drop its hosts; the hosts themselves died with it): their
/// files under [`STATE_ROOT`] and their empty cgroups. Best effort; a host that is somehow
/// still running is reported, never killed.
fn sweep_stale_hosts() {
    let state = Path::new(STATE_ROOT);
    let mut names: Vec<String> = list_dir(STATE_ROOT)
        .iter()
        .filter_map(|f| f.rsplit_once('.').map(|(name, _)| name.to_string()))
        .collect();
    names.dedup();
    for name in names {
        match owner_pid(&name) {
            Some(owner) if !pid_exists(owner) => {}
            _ => continue, // not ours, or its test process still runs
        }
        let pidfile = state.join(format!("{name}.pid"));
        let host_pid = fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        if let Some(p) = host_pid {
            if read_trimmed(format!("/proc/{p}/comm")).as_deref() == Some("systemd") {
                eprintln!("note: stale throwaway host {name} still runs as PID {p} (kill -KILL {p})");
                continue; // leave everything of it alone
            }
        }
        let mnt = state.join(format!("{name}.mnt"));
        if !is_mount_point(&mnt) {
            let _ = fs::remove_dir(&mnt);
        }
        let _ = fs::remove_file(&pidfile);
        let _ = fs::remove_file(state.join(format!("{name}.log")));
    }
    // Disks of hosts whose test process was killed: nothing boots them again.
    for entry in fs::read_dir(disks_root()).into_iter().flatten().flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        if matches!(owner_pid(&file), Some(p) if !pid_exists(p)) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    for parent in own_cgroup_dirs() {
        for entry in fs::read_dir(&parent).into_iter().flatten().flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(name) = file.strip_prefix("gatectl-test-") else {
                continue;
            };
            if matches!(owner_pid(name), Some(p) if !pid_exists(p)) {
                let _ = remove_cgroup_tree(&entry.path()); // fails while still populated
            }
        }
    }
}

/// Removes a cgroup directory and the cgroups below it (deepest first).
fn remove_cgroup_tree(dir: &Path) -> io::Result<()> {
    if let Ok(rd) = fs::read_dir(dir) {
        for entry in rd.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&entry.path())?;
            }
        }
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Whether `path` is a mount point in this process's mount namespace.
fn is_mount_point(path: &Path) -> bool {
    let Some(p) = path.to_str() else { return false };
    fs::read_to_string("/proc/self/mountinfo")
        .map(|mi| mi.lines().any(|l| l.split(' ').nth(4) == Some(p)))
        .unwrap_or(false)
}
