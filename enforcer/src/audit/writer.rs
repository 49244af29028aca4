//! The writer: appends sealed records to a log, continuing its chain.
//!
//! [`AuditLog::append`] seals a record into a memory buffer (cheap: one
//! serialisation and one SHA-256); [`AuditLog::flush`] writes the buffer,
//! fdatasyncs, and then replaces the head file. So a burst of events costs
//! one write and one sync per flush, and the caller chooses when to flush:
//! after each batch of events, and after every record that must be durable
//! before the agent acts on it ([`AuditLog::append_flush`]). Measured on
//! the development machine (release build): sealing an event record takes
//! about 4 µs; a flush (fdatasync of the log, fsync of the head's temporary
//! file and of the directory) about 15 ms. So: flush per batch, not per
//! event.
//!
//! Opening an existing log continues its chain from the last complete line,
//! after checking that line's own seal and that the head file does not
//! record more than the log holds. The cases:
//! - last line sealed, head at or before it: continue;
//! - head ahead of the log, or the same seq with another hash: refuse (the
//!   log was cut or rewritten: appending would bury the evidence under a
//!   new head); `enforcer audit verify` names the line;
//! - last complete line not a sealed record: refuse, naming its line;
//! - an incomplete last line (no `\n`: a write cut off by a crash; the
//!   head then still records an earlier, complete record): cut it off and
//!   append a `recovered` record stating how many bytes were discarded,
//!   their SHA-256 and their first characters. The chain then continues
//!   over a visible, verifiable statement instead of over a silent gap;
//!   `verify` lists it as a warning.
//!
//! One exception to "head ahead: refuse": a log that is *empty or missing*
//! while its head records N records (the log was rotated or moved away
//! while no agent ran, or deleted). Refusing would keep the agent down
//! until someone finds the old file; instead the writer starts the file
//! with a `continued` record (cause `missing_at_start`) whose `seq` and
//! `prev` follow the head, and logs a warning: the chain goes on from the
//! head, `enforcer audit verify OLD NEW` checks the link when the old file
//! is found, and `audit verify` warns about it either way. A log that still
//! holds records but fewer than its head is refused as before: records were
//! removed from it.
//!
//! # Faults
//!
//! - **A failed write** (a full disk): the file only ever holds whole
//!   lines. A write cut short is cut back to its last complete line
//!   (`ftruncate`); what was not written stays buffered and the next flush
//!   tries again. Waiting records are bounded by [`MAX_PENDING`] bytes:
//!   beyond it, records are dropped (they get no sequence number) until a
//!   flush writes everything waiting, and then a `gap` record (how many,
//!   of which kinds, after which seq, the write error) is chained in where
//!   they would have been.
//! - **A moved, deleted or rotated log**: every flush compares the open
//!   file's device and inode with the path's. When they differ (or the
//!   path is gone), once everything waiting is written to the old file,
//!   the writer opens the path again (creating it) and starts it with a
//!   `continued` record naming the old file (where the rename took it) and
//!   its last record's seq and hash. The head file follows the path: it
//!   always records the chain's last record.
//!
//! One writer per log: the file is flocked for as long as the writer lives.

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io::{self, BufRead as _, BufReader, Read as _, Seek as _, SeekFrom, Write as _},
    os::unix::fs::{FileExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::SystemTime,
};

use nix::fcntl::{Flock, FlockArg};

use super::{
    Continued, Gap, Head, Kind, MAX_LINE, MAX_PENDING, Recovered, ZERO_HASH, head_path,
    note::{CheckpointBody, NoteError, NoteSigner, checkpoint_path},
    seal, sha256_hex,
    verify::{Problem, check_record, read_head},
};

/// What [`AuditLog::append`] sealed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    pub hash: String,
    /// The record was dropped (the memory bound was reached while writes
    /// fail): `seq` and `hash` are the last record's, and a `gap` record
    /// will state it.
    pub dropped: bool,
}

/// Why the log cannot be opened or written. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    // `error`, not `source`: the message carries it (a source would print
    // it twice in an anyhow chain).
    #[error("audit log {}: {what}: {error}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        error: io::Error,
    },
    #[error("audit log {} is in use by another process (it is locked)", path.display())]
    Busy { path: PathBuf },
    #[error(
        "audit log {}:{line}: the last record is not valid ({problem}); not appending to it \
         (`enforcer audit verify` checks the log; move it aside to start a new one)",
        path.display()
    )]
    Tail {
        path: PathBuf,
        line: u64,
        problem: Problem,
    },
    #[error(
        "audit log {}: line {line} is longer than {MAX_LINE} bytes: not an audit log",
        path.display()
    )]
    TooLong { path: PathBuf, line: u64 },
    #[error(
        "audit log {}: its head {} records {head_seq} records but the log ends at seq {log_seq}: \
         records were removed from it; not appending (`enforcer audit verify` checks the log; \
         move the log aside to start a new file, which then continues the chain from the head)",
        path.display(), head.display()
    )]
    HeadAhead {
        path: PathBuf,
        head: PathBuf,
        head_seq: u64,
        log_seq: u64,
    },
    #[error(
        "audit log {}: record {seq} has hash {log_hash} but its head {} says {head_hash}: the log \
         was rewritten; not appending",
        path.display(), head.display()
    )]
    HeadMismatch {
        path: PathBuf,
        head: PathBuf,
        seq: u64,
        log_hash: String,
        head_hash: String,
    },
    #[error("audit log head {}: {problem}", head.display())]
    BadHead { head: PathBuf, problem: String },
    #[error(
        "audit log {}: a {kind} record of {bytes} bytes is longer than {MAX_LINE} bytes",
        path.display()
    )]
    RecordTooLong {
        path: PathBuf,
        kind: &'static str,
        bytes: usize,
    },
    #[error("audit log {}: signing a checkpoint: {error}", path.display())]
    Sign { path: PathBuf, error: NoteError },
    #[error("audit log {}: encoding a {kind} record: {error}", path.display())]
    Encode {
        path: PathBuf,
        kind: &'static str,
        error: serde_json::Error,
    },
}

/// An open audit log. Not `Sync`: share it behind a mutex.
pub struct AuditLog {
    path: PathBuf,
    head_path: PathBuf,
    file: Flock<File>,
    /// The last record sealed (buffered or written).
    seq: u64,
    hash: String,
    time: String,
    /// Sealed lines not yet written.
    buf: Vec<u8>,
    /// Written but not yet fdatasynced.
    unsynced: bool,
    /// The head as last written.
    head: Option<Head>,
    since_checkpoint: u64,
    /// Records being dropped since the bound was reached.
    dropping: Option<Dropping>,
    /// The last write error, until a write succeeds.
    last_error: Option<String>,
    /// Records dropped, and files opened again, by this writer.
    dropped_total: u64,
    reopens: u64,
    /// Signs every checkpoint record (a `note` field) when set.
    signer: Option<NoteSigner>,
    /// The latest signed note, until it is durable in the log and written
    /// to `<log>.checkpoint`.
    pending_note: Option<String>,
    /// Test hook: writes fail (ENOSPC) after this many more bytes.
    #[cfg(test)]
    pub(super) fail_after: Option<usize>,
}

/// The records dropped since the bound was reached, for the `gap` record.
#[derive(Debug)]
struct Dropping {
    count: u64,
    after_seq: u64,
    kinds: BTreeMap<String, u64>,
    first_time: String,
    last_time: String,
    error: String,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .field("seq", &self.seq)
            .field("hash", &self.hash)
            .field("buffered", &self.buf.len())
            .finish()
    }
}

/// The end of a log file.
#[derive(Debug, Default, PartialEq, Eq)]
struct TailBytes {
    /// Offset after the last `\n` (0 when there is none).
    complete_end: u64,
    /// The last complete line (without `\n`) and its offset.
    last: Option<(u64, Vec<u8>)>,
    /// Bytes after the last `\n`.
    partial: Vec<u8>,
}

/// Reads the end of the file backwards until it holds the last complete
/// line, so opening costs the same for any log size. `Err(offset)`: a line
/// around `offset` is longer than [`MAX_LINE`].
fn read_tail(file: &File, len: u64) -> io::Result<Result<TailBytes, u64>> {
    let max = MAX_LINE as u64;
    let mut window = 64 * 1024u64;
    loop {
        let start = len.saturating_sub(window);
        let mut buf = vec![0u8; (len - start) as usize];
        file.read_exact_at(&mut buf, start)?;
        let at_start = start == 0;
        // The last '\n' ends the complete part; what follows is partial.
        match buf.iter().rposition(|&b| b == b'\n') {
            None if buf.len() as u64 > max => return Ok(Err(start)),
            None if at_start => {
                return Ok(Ok(TailBytes {
                    complete_end: 0,
                    last: None,
                    partial: buf,
                }));
            }
            None => {}
            Some(nl) if (buf.len() - nl - 1) as u64 > max => {
                return Ok(Err(start + nl as u64 + 1));
            }
            Some(nl) => match buf[..nl].iter().rposition(|&b| b == b'\n') {
                None if nl as u64 > max => return Ok(Err(start)),
                None if !at_start => {}
                found => {
                    let line_start = found.map_or(0, |p| p + 1);
                    return Ok(Ok(TailBytes {
                        complete_end: start + nl as u64 + 1,
                        last: Some((start + line_start as u64, buf[line_start..nl].to_vec())),
                        partial: buf[nl + 1..].to_vec(),
                    }));
                }
            },
        }
        // Both segments are at most MAX_LINE, so this stops growing at
        // about 2 MiB.
        window *= 2;
    }
}

fn io_err(path: &Path, what: &'static str) -> impl FnOnce(io::Error) -> AuditError {
    let path = path.to_owned();
    move |error| AuditError::Io { path, what, error }
}

/// The 1-based line number of the line starting at `offset` (only for
/// error messages: it reads the file up to there).
fn line_at(file: &File, offset: u64) -> io::Result<u64> {
    let mut f = file.try_clone()?;
    f.seek(SeekFrom::Start(0))?;
    let mut reader = BufReader::new(f.take(offset));
    let mut lines = 1u64;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(lines);
        }
        lines += buf.iter().filter(|&&b| b == b'\n').count() as u64;
        let n = buf.len();
        reader.consume(n);
    }
}

/// Opens (creating it, mode 0640, and its directory) and locks a log file.
fn open_locked(path: &Path) -> Result<Flock<File>, AuditError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err(path, "creating its directory"))?;
    }
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o640)
        // A symlink planted at the path would have root write to
        // whatever it names.
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err(path, "opening"))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(f) => Ok(f),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(AuditError::Busy {
            path: path.to_owned(),
        }),
        Err((_, errno)) => Err(io_err(path, "locking")(io::Error::from(errno))),
    }
}

/// The last complete record of an open log: its seq, hash and time (0, 64
/// zeros and "" when it has none), and the end of the file as read.
fn last_record(file: &File, path: &Path) -> Result<(u64, String, String, TailBytes), AuditError> {
    let len = file
        .metadata()
        .map_err(io_err(path, "reading its size"))?
        .len();
    let tail = match read_tail(file, len).map_err(io_err(path, "reading its end"))? {
        Ok(t) => t,
        Err(offset) => {
            let line = line_at(file, offset).map_err(io_err(path, "reading"))?;
            return Err(AuditError::TooLong {
                path: path.to_owned(),
                line,
            });
        }
    };
    match &tail.last {
        None => Ok((0, ZERO_HASH.to_owned(), String::new(), tail)),
        Some((offset, line)) => match check_record(line) {
            Ok(env) => Ok((env.seq, env.hash, env.time, tail)),
            Err(problem) => {
                let line = line_at(file, *offset).map_err(io_err(path, "reading"))?;
                Err(AuditError::Tail {
                    path: path.to_owned(),
                    line,
                    problem,
                })
            }
        },
    }
}

/// Where an open file is now: `/proc/self/fd` names it after a rename,
/// and says ` (deleted)` after an unlink.
fn current_name(file: &File) -> Option<String> {
    use std::os::fd::AsRawFd as _;
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .ok()
        .map(|p| p.display().to_string())
}

impl AuditLog {
    /// Opens `path` for appending, creating it (mode 0640, and its
    /// directory) when missing; see the module docs for how an existing
    /// log's end is checked.
    pub fn open(path: impl AsRef<Path>) -> Result<AuditLog, AuditError> {
        let path = path.as_ref().to_owned();
        let file = open_locked(&path)?;
        let (seq, hash, time, tail) = last_record(&file, &path)?;
        let head_path = head_path(&path);
        let head = read_head(&head_path).map_err(|problem| AuditError::BadHead {
            head: head_path.clone(),
            problem,
        })?;
        // An empty log under a head that records records: it was moved
        // away (or deleted); continue the chain from the head.
        let continue_from = head
            .as_ref()
            .filter(|h| tail.last.is_none() && h.seq > 0)
            .cloned();
        if let Some(h) = head.as_ref().filter(|_| continue_from.is_none()) {
            if h.seq > seq {
                return Err(AuditError::HeadAhead {
                    path,
                    head: head_path,
                    head_seq: h.seq,
                    log_seq: seq,
                });
            }
            if h.seq == seq && h.hash != hash {
                return Err(AuditError::HeadMismatch {
                    path,
                    head: head_path,
                    seq,
                    log_hash: hash,
                    head_hash: h.hash.clone(),
                });
            }
        }
        let (seq, hash, time) = match &continue_from {
            Some(h) => (h.seq, h.hash.clone(), h.time.clone()),
            None => (seq, hash, time),
        };
        let mut log = AuditLog {
            path,
            head_path,
            file,
            seq,
            hash,
            time,
            buf: Vec::new(),
            unsynced: false,
            head,
            since_checkpoint: 0,
            dropping: None,
            last_error: None,
            dropped_total: 0,
            reopens: 0,
            signer: None,
            pending_note: None,
            #[cfg(test)]
            fail_after: None,
        };
        if !tail.partial.is_empty() {
            log.file
                .set_len(tail.complete_end)
                .map_err(|e| log.io("cutting off its incomplete last line", e))?;
            log.file
                .sync_data()
                .map_err(|e| log.io("syncing after cutting off its incomplete last line", e))?;
        }
        if let Some(h) = continue_from {
            tracing::warn!(
                log = %log.path.display(),
                head_seq = h.seq,
                "the audit log is empty or missing but its head records {} records: it was \
                 rotated, moved or deleted while no agent ran; continuing the chain from the head \
                 (`enforcer audit verify OLD NEW` checks the link once the old file is found)",
                h.seq
            );
            log.append_flush(Kind::Continued(Continued {
                previous_file: None,
                previous_seq: h.seq,
                previous_hash: h.hash,
                cause: "missing_at_start".into(),
            }))?;
        }
        if !tail.partial.is_empty() {
            let start: String = String::from_utf8_lossy(&tail.partial)
                .chars()
                .take(200)
                .collect();
            log.append_flush(Kind::Recovered(Recovered {
                discarded_bytes: tail.partial.len() as u64,
                discarded_sha256: sha256_hex(&tail.partial),
                discarded_start: start,
            }))?;
        }
        Ok(log)
    }

    /// Seals a record (time: now) into the buffer; [`flush`](Self::flush)
    /// writes it.
    pub fn append(&mut self, kind: Kind) -> Result<Appended, AuditError> {
        self.append_at(SystemTime::now(), kind)
    }

    /// [`append`](Self::append) then [`flush`](Self::flush): for records
    /// that must be durable before the agent goes on.
    pub fn append_flush(&mut self, kind: Kind) -> Result<Appended, AuditError> {
        let a = self.append(kind)?;
        self.flush()?;
        Ok(a)
    }

    /// Seals a record with a given time (tests, and callers that must state
    /// the time themselves). The verifier warns when time goes backwards.
    ///
    /// When the records waiting to be written would exceed [`MAX_PENDING`]
    /// bytes, it first tries to write them; if that fails, the record is
    /// dropped (`dropped` in the answer), and so is every record after it
    /// until a [`flush`](Self::flush) writes everything waiting and chains
    /// in the `gap` record.
    pub fn append_at(&mut self, time: SystemTime, kind: Kind) -> Result<Appended, AuditError> {
        let time = humantime::format_rfc3339_micros(time).to_string();
        if self.dropping.is_none() && self.buf.len() >= MAX_PENDING.saturating_sub(MAX_LINE / 16) {
            // The bound is near: write what waits (a large burst of events
            // between two flushes gets here without any fault).
            if self.write_buf().is_err() && self.buf.len() >= MAX_PENDING / 2 {
                let error = self
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "the memory bound was reached".into());
                tracing::error!(
                    log = %self.path.display(),
                    error,
                    bound_bytes = MAX_PENDING,
                    "audit records cannot be written and their memory bound is reached: \
                     dropping records until writing works again (a gap record will say how many)"
                );
                self.dropping = Some(Dropping {
                    count: 0,
                    after_seq: self.seq,
                    kinds: BTreeMap::new(),
                    first_time: time.clone(),
                    last_time: time.clone(),
                    error,
                });
            }
        }
        if let Some(d) = &mut self.dropping {
            d.count += 1;
            *d.kinds.entry(kind.name().to_owned()).or_default() += 1;
            d.last_time = time;
            self.dropped_total += 1;
            return Ok(Appended {
                seq: self.seq,
                hash: self.hash.clone(),
                dropped: true,
            });
        }
        self.seal_record(time, kind)
    }

    /// Seals a record into the buffer, whatever the bound.
    fn seal_record(&mut self, time: String, mut kind: Kind) -> Result<Appended, AuditError> {
        if let Kind::Checkpoint(c) = &mut kind {
            c.records_since_last = self.since_checkpoint;
            // The note commits to the records before this one (seq - 1 of
            // them, the last one's hash = this record's prev), and being a
            // field of this record it is covered by this record's hash too.
            c.note = match &self.signer {
                Some(signer) => {
                    let mut extensions = vec![format!("mode {}", c.mode)];
                    if let Some(p) = &c.policy_sha256 {
                        extensions.push(format!("policy {p}"));
                    }
                    extensions.extend(c.databases.iter().map(|d| format!("db {}", d.sha256)));
                    extensions.push(format!("time {time}"));
                    let body = CheckpointBody {
                        origin: signer.origin.clone(),
                        size: self.seq,
                        hash: self.hash.clone(),
                        extensions,
                    };
                    let note = signer.sign(&body).map_err(|error| AuditError::Sign {
                        path: self.path.clone(),
                        error,
                    })?;
                    Some(note)
                }
                None => None,
            };
        }
        let name = kind.name();
        let json = serde_json::to_string(&kind).map_err(|error| AuditError::Encode {
            path: self.path.clone(),
            kind: name,
            error,
        })?;
        let seq = self.seq + 1;
        let (line, hash) = seal(seq, &time, &self.hash, &json);
        if line.len() > MAX_LINE {
            return Err(AuditError::RecordTooLong {
                path: self.path.clone(),
                kind: name,
                bytes: line.len(),
            });
        }
        self.buf.extend_from_slice(line.as_bytes());
        self.buf.push(b'\n');
        self.seq = seq;
        self.hash.clone_from(&hash);
        self.time = time;
        self.since_checkpoint = match kind {
            Kind::Checkpoint(c) => {
                if c.note.is_some() {
                    self.pending_note = c.note;
                }
                0
            }
            _ => self.since_checkpoint + 1,
        };
        Ok(Appended {
            seq,
            hash,
            dropped: false,
        })
    }

    /// One `write` of the buffer (the test hook may fail it).
    fn write_some(&self, bytes: &[u8]) -> io::Result<usize> {
        #[cfg(test)]
        if let Some(left) = self.fail_after {
            if left == 0 {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            return (&*self.file).write(&bytes[..bytes.len().min(left)]);
        }
        (&*self.file).write(bytes)
    }

    /// Writes the buffer; the file keeps only whole lines: a write cut
    /// short is cut back to its last complete line, and the rest stays
    /// buffered for the next call.
    fn write_buf(&mut self) -> Result<(), AuditError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let start = self.file.metadata().map(|m| m.len());
        let mut written = 0;
        let result = loop {
            if written == self.buf.len() {
                break Ok(());
            }
            match self.write_some(&self.buf[written..]) {
                Ok(0) => break Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => {
                    written += n;
                    self.unsynced = true;
                    #[cfg(test)]
                    if let Some(left) = &mut self.fail_after {
                        *left -= n.min(*left);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        let whole = self.buf[..written]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1);
        let mut keep = written;
        if whole < written
            && let Ok(start) = start
        {
            // A torn line: cut it off, so no reader (nor a crash) ever
            // sees half a record; it is written again whole. If the cut
            // fails, the rest is written after it next time instead.
            match self.file.set_len(start + whole as u64) {
                Ok(()) => keep = whole,
                Err(e) => {
                    tracing::warn!(log = %self.path.display(), error = %e, "cannot cut a torn audit line back")
                }
            }
        }
        self.buf.drain(..keep);
        match result {
            Ok(()) => {
                self.last_error = None;
                Ok(())
            }
            Err(e) => {
                self.last_error = Some(e.to_string());
                Err(self.io("writing", e))
            }
        }
    }

    /// Writes the buffered records, fdatasyncs, then replaces the head file
    /// (temporary file, fsync, rename, fsync of the directory). On an error
    /// nothing is lost: what was not written stays buffered, and the next
    /// flush continues where this one stopped. After records were dropped,
    /// the `gap` record is chained in as soon as everything waiting is
    /// written; then, when the file at the path is no longer the one open,
    /// the path is opened again (see the module docs).
    pub fn flush(&mut self) -> Result<(), AuditError> {
        self.write_buf()?;
        if let Some(d) = self.dropping.take() {
            tracing::warn!(
                log = %self.path.display(),
                dropped = d.count,
                after_seq = d.after_seq,
                "audit log writable again; a gap record states the records dropped"
            );
            self.seal_record(
                humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
                Kind::Gap(Gap {
                    dropped: d.count,
                    after_seq: d.after_seq,
                    kinds: d.kinds,
                    first_time: d.first_time,
                    last_time: d.last_time,
                    error: d.error,
                    bound_bytes: MAX_PENDING as u64,
                }),
            )?;
            self.write_buf()?;
        }
        self.sync_and_head()?;
        if let Some(cause) = self.moved() {
            self.reopen(cause)?;
        }
        Ok(())
    }

    fn sync_and_head(&mut self) -> Result<(), AuditError> {
        if self.unsynced {
            self.file.sync_data().map_err(|e| self.io("syncing", e))?;
            self.unsynced = false;
        }
        if self.seq > 0 && self.head.as_ref().is_none_or(|h| h.seq != self.seq) {
            let head = Head {
                seq: self.seq,
                hash: self.hash.clone(),
                time: self.time.clone(),
            };
            self.write_head(&head)?;
            self.head = Some(head);
        }
        // Only once the record holding it is durable: the file never
        // names records the log does not hold.
        if let Some(note) = self.pending_note.take() {
            let path = checkpoint_path(&self.path);
            if let Err(e) = write_atomic(&path, note.as_bytes()) {
                // Written again with the next checkpoint.
                self.pending_note = Some(note);
                return Err(AuditError::Io {
                    path,
                    what: "writing the latest signed checkpoint",
                    error: e,
                });
            }
        }
        Ok(())
    }

    /// Signs every checkpoint record from now on with `signer` (none:
    /// checkpoints are not signed).
    pub fn set_signer(&mut self, signer: Option<NoteSigner>) {
        self.signer = signer;
    }

    /// Whether the path no longer names the open file: `renamed` (another
    /// file or none is there, and the open one still has a name) or
    /// `deleted`. None when it does, or when it cannot be told.
    fn moved(&self) -> Option<&'static str> {
        let open = self.file.metadata().ok()?;
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.dev() == open.dev() && m.ino() == open.ino() => None,
            Ok(_) => Some(if open.nlink() == 0 {
                "deleted"
            } else {
                "renamed"
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Some(if open.nlink() == 0 {
                "deleted"
            } else {
                "renamed"
            }),
            Err(_) => None,
        }
    }

    /// Opens the path again when the file there is no longer the one open
    /// (`enforcer reload`, SIGHUP, and every flush check this); a no-op
    /// otherwise. Everything waiting is written to the old file first.
    pub fn reopen_if_moved(&mut self) -> Result<bool, AuditError> {
        match self.moved() {
            Some(cause) => {
                self.write_buf()?;
                self.sync_and_head()?;
                self.reopen(cause)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Switches to a new file at the path, starting it with a `continued`
    /// record. Only with nothing waiting (those records belong to the old
    /// file's chain). A file at the path that already holds records is
    /// appended to only when it ends with this chain's last record (a
    /// copy); any other is refused and the old file kept.
    fn reopen(&mut self, cause: &'static str) -> Result<(), AuditError> {
        if !self.buf.is_empty() || self.dropping.is_some() {
            return Ok(());
        }
        let file = open_locked(&self.path)?;
        let (seq, hash, _, tail) = last_record(&file, &self.path)?;
        if tail.last.is_some() || !tail.partial.is_empty() {
            if seq == self.seq && hash == self.hash && tail.partial.is_empty() {
                self.file = file;
                self.reopens += 1;
                return Ok(());
            }
            return Err(AuditError::Io {
                path: self.path.clone(),
                what: "opening it again after it was moved",
                error: io::Error::other(format!(
                    "the file now at the path holds other records (its last is seq {seq}); \
                     still writing to the moved file {}",
                    current_name(&self.file).unwrap_or_default()
                )),
            });
        }
        let previous_file = current_name(&self.file);
        tracing::info!(
            log = %self.path.display(),
            previous = previous_file.as_deref().unwrap_or("?"),
            cause,
            "the audit log was moved; continuing its chain in a new file at its path"
        );
        self.file = file;
        self.reopens += 1;
        self.seal_record(
            humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            Kind::Continued(Continued {
                previous_file,
                previous_seq: self.seq,
                previous_hash: self.hash.clone(),
                cause: cause.into(),
            }),
        )?;
        self.write_buf()?;
        self.sync_and_head()
    }

    fn write_head(&self, head: &Head) -> Result<(), AuditError> {
        let mut text = serde_json::to_string(head).map_err(|e| AuditError::Encode {
            path: self.path.clone(),
            kind: "head",
            error: e,
        })?;
        text.push('\n');
        write_atomic(&self.head_path, text.as_bytes()).map_err(|e| AuditError::BadHead {
            head: self.head_path.clone(),
            problem: e.to_string(),
        })
    }
}

/// Replaces `path` with `bytes` (mode 0640): a temporary file beside it,
/// fsync, rename, fsync of the directory; a reader sees the old content or
/// the new, never part of it. Errors say which step failed.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let step =
        |what: &'static str| move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(step("creating its temporary file"))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(step("writing its temporary file"))?;
    std::fs::rename(&tmp, path).map_err(step("renaming"))?;
    // The rename is durable once the directory is.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(step("syncing its directory"))?;
    }
    Ok(())
}

impl AuditLog {
    fn io(&self, what: &'static str, error: io::Error) -> AuditError {
        AuditError::Io {
            path: self.path.clone(),
            what,
            error,
        }
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last record sealed (0 and 64 zeros for an empty log).
    pub fn last(&self) -> Appended {
        Appended {
            seq: self.seq,
            hash: self.hash.clone(),
            dropped: false,
        }
    }

    /// Records dropped by this writer (see [`MAX_PENDING`]).
    pub fn dropped(&self) -> u64 {
        self.dropped_total
    }

    /// Times this writer opened its path again after the file was moved.
    pub fn reopens(&self) -> u64 {
        self.reopens
    }

    /// The last write error, until a write succeeds.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// The head as last written (None before the first flush of a new log).
    pub fn head(&self) -> Option<&Head> {
        self.head.as_ref()
    }

    /// Bytes sealed but not yet written.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

impl Drop for AuditLog {
    /// Best effort: a caller that cares flushes and handles the error.
    fn drop(&mut self) {
        if (!self.buf.is_empty() || self.unsynced)
            && let Err(e) = self.flush()
        {
            tracing::warn!(error = %e, "audit log: records lost at close");
        }
    }
}
