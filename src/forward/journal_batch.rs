//! Journal entries written in batches: the forwarder's audit records, one
//! entry per connection, reach journald through its native protocol
//! (<https://systemd.io/JOURNAL_NATIVE_PROTOCOL/>), a datagram per entry,
//! but many datagrams per system call (`sendmmsg(2)`) and per wake-up of
//! journald.
//!
//! [`JournalBatch::send`] queues an entry; a writer task gathers the entries
//! queued within [`FLUSH_DELAY`] of the first one and sends them together.
//! [`JournalBatch::close`] sends what is queued and stops the writer: the
//! forwarder calls it when it stops, so that a clean stop loses no record.
//! A forwarder killed outright loses the entries of its last
//! [`FLUSH_DELAY`] at most.
//!
//! The socket is blocking, as `tracing-journald`'s is: while journald's
//! queue is full the forwarder (one thread) waits for it rather than drop
//! an entry, which also stops new entries from piling up in memory.

use std::io::{self, IoSlice, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{sendmmsg, MsgFlags, MultiHeaders, UnixAddr};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

/// How long the writer gathers entries after the first one before sending
/// them: what an entry may wait, and what lets a burst of connections share
/// a system call.
pub const FLUSH_DELAY: Duration = Duration::from_millis(10);

/// Entries sent by one `sendmmsg(2)` at most.
const MAX_BATCH: usize = 64;

/// One journal entry in the native protocol, built field by field.
#[derive(Debug, Default)]
pub struct Entry(Vec<u8>);

impl Entry {
    /// An entry with no field yet.
    pub fn new() -> Self {
        Entry(Vec::with_capacity(512))
    }

    /// Adds the field `name` (upper case letters, digits and `_`, as the
    /// journal requires) with `value` as it displays. The value is written
    /// with its length, so it may hold any byte, a newline included.
    pub fn field(&mut self, name: &str, value: impl std::fmt::Display) -> &mut Self {
        let buf = &mut self.0;
        buf.extend_from_slice(name.as_bytes());
        buf.push(b'\n');
        let length_at = buf.len();
        buf.extend_from_slice(&[0; 8]);
        write!(buf, "{value}").expect("writing to a Vec cannot fail");
        let length = (buf.len() - length_at - 8) as u64;
        buf[length_at..length_at + 8].copy_from_slice(&length.to_le_bytes());
        buf.push(b'\n');
        self
    }

    /// The datagram journald reads.
    #[cfg(test)]
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// What the writer task is told.
#[derive(Debug)]
enum Message {
    /// An entry to send.
    Entry(Entry),
    /// Send everything queued before this, then say so and stop.
    Close(oneshot::Sender<()>),
}

/// The queue of one forwarder's journal entries and its writer task.
#[derive(Debug)]
pub struct JournalBatch {
    queue: mpsc::UnboundedSender<Message>,
    /// Cuts the writer's [`FLUSH_DELAY`] short when closing.
    closing: Arc<Notify>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl JournalBatch {
    /// Starts a writer task, in the current tokio runtime, that sends
    /// entries to the journal socket at `path`. Fails if no socket can be
    /// made; the path is tried at each send.
    pub fn open(path: &Path) -> io::Result<JournalBatch> {
        let socket = UnixDatagram::unbound()?;
        let address = UnixAddr::new(path).map_err(io::Error::from)?;
        let (queue, entries) = mpsc::unbounded_channel();
        let closing = Arc::new(Notify::new());
        let writer = tokio::spawn(write(entries, Arc::clone(&closing), socket, address));
        Ok(JournalBatch {
            queue,
            closing,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Queues `entry`; it is sent within [`FLUSH_DELAY`]. An entry queued
    /// after [`close`](Self::close) is dropped.
    pub fn send(&self, entry: Entry) {
        let _ = self.queue.send(Message::Entry(entry));
    }

    /// Sends every entry queued so far, stops the writer task and waits for
    /// it.
    pub async fn close(&self) {
        let (done, sent) = oneshot::channel();
        if self.queue.send(Message::Close(done)).is_ok() {
            self.closing.notify_one();
            let _ = sent.await;
        }
        let writer = self.writer.lock().expect("the writer lock").take();
        if let Some(writer) = writer {
            let _ = writer.await;
        }
    }
}

/// The writer task: waits for an entry, gathers the others that come within
/// [`FLUSH_DELAY`] (or until `closing` is notified), sends them all, and
/// again, until told to close.
async fn write(
    mut queue: mpsc::UnboundedReceiver<Message>,
    closing_soon: Arc<Notify>,
    socket: UnixDatagram,
    address: UnixAddr,
) {
    let mut batch = Vec::new();
    let mut closing = None;
    while closing.is_none() {
        match queue.recv().await {
            Some(Message::Entry(entry)) => batch.push(entry),
            Some(Message::Close(done)) => closing = Some(done),
            None => return,
        }
        if closing.is_none() {
            tokio::select! {
                () = tokio::time::sleep(FLUSH_DELAY) => {}
                () = closing_soon.notified() => {}
            }
        }
        while closing.is_none() {
            match queue.try_recv() {
                Ok(Message::Entry(entry)) => batch.push(entry),
                Ok(Message::Close(done)) => closing = Some(done),
                Err(_) => break,
            }
        }
        if let Err(e) = send_all(&socket, &address, &batch) {
            tracing::warn!(
                error = %e,
                "could not write {} audit record(s) to the journal: {e}",
                batch.len()
            );
        }
        batch.clear();
    }
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

/// Sends `entries` to `address`, [`MAX_BATCH`] per system call. Stops at
/// the first entry the kernel refuses (journald is not running, say).
fn send_all(socket: &UnixDatagram, address: &UnixAddr, entries: &[Entry]) -> io::Result<()> {
    let mut headers = MultiHeaders::<UnixAddr>::preallocate(MAX_BATCH.min(entries.len()), None);
    let mut rest = entries;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(MAX_BATCH)];
        let slices: Vec<[IoSlice<'_>; 1]> = chunk.iter().map(|e| [IoSlice::new(&e.0)]).collect();
        let addresses = vec![Some(*address); chunk.len()];
        let sent = match sendmmsg(
            socket.as_raw_fd(),
            &mut headers,
            &slices,
            &addresses,
            [],
            MsgFlags::MSG_NOSIGNAL,
        ) {
            Ok(results) => results.count(),
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => return Err(e.into()),
        };
        rest = &rest[sent..];
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The fields of one native-protocol datagram, in order.
    pub(crate) fn parse(mut datagram: &[u8]) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        while let Some(newline) = datagram.iter().position(|&b| b == b'\n') {
            let line = &datagram[..newline];
            datagram = &datagram[newline + 1..];
            if let Some(equals) = line.iter().position(|&b| b == b'=') {
                let (name, value) = (&line[..equals], &line[equals + 1..]);
                fields.push((
                    String::from_utf8_lossy(name).into(),
                    String::from_utf8_lossy(value).into(),
                ));
                continue;
            }
            let length = u64::from_le_bytes(datagram[..8].try_into().unwrap()) as usize;
            let value = &datagram[8..8 + length];
            assert_eq!(datagram[8 + length], b'\n', "a value ends with a newline");
            datagram = &datagram[8 + length + 1..];
            fields.push((
                String::from_utf8_lossy(line).into(),
                String::from_utf8_lossy(value).into(),
            ));
        }
        assert!(datagram.is_empty(), "trailing bytes: {datagram:?}");
        fields
    }

    #[test]
    fn fields_are_length_encoded() {
        let mut entry = Entry::new();
        entry.field("MESSAGE", "two\nlines").field("GATE_BYTES", 42);
        assert_eq!(
            entry.bytes(),
            b"MESSAGE\n\x09\0\0\0\0\0\0\0two\nlines\nGATE_BYTES\n\x02\0\0\0\0\0\0\x0042\n"
        );
        assert_eq!(
            parse(entry.bytes()),
            [
                ("MESSAGE".to_string(), "two\nlines".to_string()),
                ("GATE_BYTES".to_string(), "42".to_string())
            ]
        );
    }

    /// A journal socket at a fresh path, read by a thread of its own (a
    /// blocking send waits for it, as for journald): the first field's value
    /// of each datagram, as it arrives.
    fn journal() -> (std::path::PathBuf, std::sync::mpsc::Receiver<String>) {
        let dir = std::env::temp_dir().join(format!("gatectl-journal-batch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("socket");
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                if tx.send(parse(&buf[..n])[0].1.clone()).is_err() {
                    return;
                }
            }
        });
        (path, rx)
    }

    fn entry(n: impl std::fmt::Display) -> Entry {
        let mut entry = Entry::new();
        entry.field("N", n);
        entry
    }

    #[tokio::test]
    async fn every_entry_arrives_in_order_and_close_flushes_the_last() {
        let (path, received) = journal();
        let batch = JournalBatch::open(&path).unwrap();
        let wait = Duration::from_secs(5);

        // More than one system call's worth, sent together after the delay.
        for i in 0..150 {
            batch.send(entry(i));
        }
        assert!(received.try_recv().is_err(), "nothing before the writer runs");
        tokio::time::sleep(FLUSH_DELAY * 2).await;
        for i in 0..150 {
            assert_eq!(received.recv_timeout(wait).unwrap(), i.to_string());
        }

        // Queued just before close: close sends it, without the delay.
        batch.send(entry("last"));
        tokio::time::timeout(FLUSH_DELAY / 2, batch.close())
            .await
            .expect("close does not wait for the delay");
        assert_eq!(received.recv_timeout(wait).unwrap(), "last");
        batch.send(entry("late"));
        batch.close().await;
        assert!(
            received.recv_timeout(FLUSH_DELAY * 2).is_err(),
            "nothing after close"
        );
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
