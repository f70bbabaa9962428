//! libnftables (the library behind the `nft` command), called in-process: no
//! `nft` child process, same input and output as `nft -j`.
//!
//! [`Context`] owns one `struct nft_ctx`, set up as `nft -j` sets it up: JSON
//! output, and so JSON input too (libnftables 1.0.6 reads a buffer as JSON
//! exactly when JSON output is on, and as nft's text syntax otherwise, e.g.
//! `list table inet gatectl`). What nft would print to stdout and stderr is
//! captured in buffers instead of reaching the terminal.
//!
//! Only the eight functions below are declared, by hand from
//! `<nftables/libnftables.h>` (package libnftables-dev); the binary links
//! `libnftables.so.1` (package libnftables1).
//!
//! libnftables keeps some process-wide state (one-time initialisation in
//! `nft_ctx_new`, an interface cache), so every context in the process is
//! serialised by one lock, held from [`Context::new`] until the context is
//! dropped. A context is bound to the thread's network namespace at creation
//! (its netlink socket lives there) and cannot leave that thread.

use std::ffi::{c_char, c_int, c_uint, CStr, CString};
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// `struct nft_ctx`, opaque.
#[repr(C)]
struct NftCtx {
    _opaque: [u8; 0],
}

/// `NFT_CTX_DEFAULT`: a context with a netlink socket.
const NFT_CTX_DEFAULT: u32 = 0;
/// `NFT_CTX_OUTPUT_JSON`: print JSON, and read JSON input (nft's `-j`).
const NFT_CTX_OUTPUT_JSON: c_uint = 1 << 4;

#[link(name = "nftables")]
extern "C" {
    fn nft_ctx_new(flags: u32) -> *mut NftCtx;
    fn nft_ctx_free(ctx: *mut NftCtx);
    fn nft_ctx_output_set_flags(ctx: *mut NftCtx, flags: c_uint);
    fn nft_ctx_buffer_output(ctx: *mut NftCtx) -> c_int;
    fn nft_ctx_buffer_error(ctx: *mut NftCtx) -> c_int;
    fn nft_ctx_get_output_buffer(ctx: *mut NftCtx) -> *const c_char;
    fn nft_ctx_get_error_buffer(ctx: *mut NftCtx) -> *const c_char;
    fn nft_run_cmd_from_buffer(ctx: *mut NftCtx, buf: *const c_char) -> c_int;
}

/// Serialises every use of libnftables in the process.
static LIBNFTABLES: Mutex<()> = Mutex::new(());

/// One libnftables context in `nft -j` mode with captured output, freed on
/// drop. Neither `Send` nor `Sync`: it stays on the thread (and so in the
/// network namespace) that created it.
pub struct Context {
    ctx: NonNull<NftCtx>,
    /// Held for the context's whole life; released after `nft_ctx_free`
    /// (fields drop after `Drop::drop`).
    _lock: MutexGuard<'static, ()>,
}

impl Context {
    /// A new context in the calling thread's network namespace. Waits for
    /// any other context of the process to be dropped first (so a thread
    /// must not hold two at once: it would wait for itself). The error says
    /// why libnftables cannot be used.
    pub fn new() -> Result<Self, String> {
        // The lock guards no data of its own: a panic while it was held
        // leaves nothing inconsistent, so a poisoned lock is just taken.
        let lock = LIBNFTABLES.lock().unwrap_or_else(PoisonError::into_inner);
        // nft_ctx_new exits the whole process (after printing to stderr)
        // when it cannot open its netfilter netlink socket; find out first.
        probe_netfilter_socket()?;
        // SAFETY: nft_ctx_new has no preconditions; the lock serialises it
        // with every other libnftables call of the process.
        let raw = unsafe { nft_ctx_new(NFT_CTX_DEFAULT) };
        let ctx = NonNull::new(raw).ok_or("libnftables could not allocate a context (out of memory?)")?;
        let context = Context { ctx, _lock: lock };
        let ptr = context.ctx.as_ptr();
        // SAFETY: ptr is a live context owned by `context`, used on this
        // thread only, under the lock.
        unsafe { nft_ctx_output_set_flags(ptr, NFT_CTX_OUTPUT_JSON) };
        // SAFETY: as above; both functions only swap the context's FILE
        // streams for in-memory ones, which nft_ctx_free releases.
        let (out, err) = unsafe { (nft_ctx_buffer_output(ptr), nft_ctx_buffer_error(ptr)) };
        if out != 0 || err != 0 {
            // `context` drops here and frees the half set-up context.
            return Err("libnftables could not buffer its output (out of memory?)".into());
        }
        Ok(context)
    }

    /// Runs `commands` (a JSON document of the libnftables-json(5) schema,
    /// or nft's text syntax) as one transaction. `Ok` holds what `nft -j`
    /// would print on stdout; `Err` what it would print on stderr when it
    /// fails (possibly empty).
    pub fn run(&mut self, commands: &str) -> Result<String, String> {
        let input = CString::new(commands).map_err(|_| {
            "the nft commands contain a NUL byte; gatectl never builds such commands".to_string()
        })?;
        let ptr = self.ctx.as_ptr();
        // SAFETY: ptr is a live context owned by self (&mut: no other use at
        // the same time, and the context never left its thread); input is a
        // NUL-terminated string that outlives the call, which only reads it.
        let rc = unsafe { nft_run_cmd_from_buffer(ptr, input.as_ptr()) };
        // Both buffers are read after every run: reading one rewinds it, so
        // the next run's output does not follow this one's.
        // SAFETY: ptr is live; each getter returns a NUL-terminated string
        // (never NULL) that stays valid until the next write to that stream,
        // and both are copied before anything else touches the context.
        let (stdout, stderr) = unsafe {
            (
                CStr::from_ptr(nft_ctx_get_output_buffer(ptr)).to_owned(),
                CStr::from_ptr(nft_ctx_get_error_buffer(ptr)).to_owned(),
            )
        };
        if rc != 0 {
            return Err(stderr.to_string_lossy().into_owned());
        }
        stdout
            .into_string()
            .map_err(|e| format!("nft printed output that is not UTF-8: {e}"))
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: the context is live and owned by self; it is freed exactly
        // once, here, on its own thread, before the lock is released.
        unsafe { nft_ctx_free(self.ctx.as_ptr()) }
    }
}

/// Opens and closes a netfilter netlink socket, as nft_ctx_new is about to:
/// an error here is a message instead of libnftables ending the process.
fn probe_netfilter_socket() -> Result<(), String> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockProtocol, SockType};
    socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )
    .map(drop)
    .map_err(|e| {
        format!(
            "cannot open a netfilter netlink socket ({e}); the kernel needs nf_tables support \
             (`modprobe nf_tables`), and gatectl a free file descriptor"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sched::{unshare, CloneFlags};

    /// Runs `f` on a fresh thread in a network namespace of its own (an
    /// empty ruleset that vanishes with the thread), so these tests never
    /// touch the host's firewall. Skips unless root (fails under `CI`).
    fn in_private_netns(name: &str, f: impl FnOnce() + Send + 'static) {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var_os("CI").is_none(),
                "{name} cannot run: not root; CI requires it"
            );
            eprintln!("skipping {name}: not root (run the tests as root to include it)");
            return;
        }
        let thread = std::thread::spawn(move || {
            unshare(CloneFlags::CLONE_NEWNET).expect("a private network namespace for this thread");
            f();
        });
        if let Err(panic) = thread.join() {
            std::panic::resume_unwind(panic);
        }
    }

    /// The tables `nft -j list tables` reports, as `family name`.
    fn tables(ctx: &mut Context) -> Vec<String> {
        let out = ctx.run("list tables").expect("list tables");
        let v: serde_json::Value = serde_json::from_str(&out).expect("JSON listing");
        v["nftables"]
            .as_array()
            .expect("nftables array")
            .iter()
            .filter_map(|o| o.get("table"))
            .map(|t| {
                format!(
                    "{} {}",
                    t["family"].as_str().unwrap(),
                    t["name"].as_str().unwrap()
                )
            })
            .collect()
    }

    #[test]
    fn applies_json_and_lists_as_json() {
        in_private_netns("applies_json_and_lists_as_json", || {
            let mut ctx = Context::new().expect("context");
            assert!(tables(&mut ctx).is_empty());
            let out = ctx
                .run(r#"{"nftables": [{"add": {"table": {"family": "inet", "name": "t"}}}]}"#)
                .expect("add a table");
            assert_eq!(out, "", "adding prints nothing");
            assert_eq!(tables(&mut ctx), ["inet t"]);
            // Output does not pile up across runs: the same listing twice.
            assert_eq!(ctx.run("list tables").unwrap(), ctx.run("list tables").unwrap());
        });
    }

    #[test]
    fn a_refused_transaction_returns_nfts_message_and_changes_nothing() {
        in_private_netns(
            "a_refused_transaction_returns_nfts_message_and_changes_nothing",
            || {
                let mut ctx = Context::new().expect("context");
                // The second command fails, so the first is not applied either.
                let err = ctx
                    .run(
                        r#"{"nftables": [{"add": {"table": {"family": "inet", "name": "t"}}},
                       {"delete": {"table": {"family": "inet", "name": "absent"}}}]}"#,
                    )
                    .expect_err("deleting an absent table fails");
                assert!(
                    err.contains("Error: Could not process rule: No such file or directory"),
                    "{err}"
                );
                assert!(tables(&mut ctx).is_empty());
                // Errors do not pile up either, and the context stays usable.
                let err = ctx
                    .run("list table inet absent")
                    .expect_err("listing an absent table fails");
                assert!(err.contains("No such file or directory"), "{err}");
                assert!(!err.contains("delete"), "the previous error was repeated: {err}");
            },
        );
    }

    #[test]
    fn bad_input_returns_the_parsers_message() {
        in_private_netns("bad_input_returns_the_parsers_message", || {
            let mut ctx = Context::new().expect("context");
            let err = ctx.run("this is not nft").expect_err("text syntax error");
            assert!(err.contains("Error: syntax error"), "{err}");
            let err = ctx
                .run(r#"{"nftables": [{"add": {"bogus": {}}}]}"#)
                .expect_err("unknown JSON object");
            assert!(err.contains("Error:"), "{err}");
            let err = ctx.run("list\0tables").expect_err("NUL byte");
            assert!(err.contains("NUL byte"), "{err}");
        });
    }

    #[test]
    fn contexts_are_freed_on_drop() {
        in_private_netns("contexts_are_freed_on_drop", || {
            let open_fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
            let before = open_fds();
            for _ in 0..200 {
                let mut ctx = Context::new().expect("context");
                ctx.run("list tables").expect("list tables");
            }
            // Each context holds a netlink socket: a leak would show 200.
            // Other tests may hold a few descriptors meanwhile.
            let after = open_fds();
            assert!(after < before + 50, "{before} descriptors before, {after} after");
        });
    }
}
