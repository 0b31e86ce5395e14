//! The on-disk record format, and how a record is written so a crash never leaves a
//! half-written one.
//!
//! ```text
//! offset  size  field
//!      0     4  magic and format version: "CSF1"
//!      4     1  kind: b'S' session, b'L' session lock, b'F' focus, b'K' cache, b'A' cache alias, b'C' counters
//!      5     3  reserved, zero
//!      8     8  deadline: i64 LE milliseconds since the Unix epoch (i64::MAX: never)
//!     16     4  meta length: u32 LE
//!     20     4  body length (meta + payload): u32 LE
//!     24     4  CRC-32 of the body
//!     28     4  CRC-32 of bytes 0..28 (the header)
//!     32     -  body: `meta length` bytes of JSON metadata, then the raw payload
//! ```
//!
//! The header has its own checksum so the sweeper can read a deadline from the
//! first 32 bytes without reading the body, and still trust it. The JSON metadata
//! makes a record readable with `tail -c +33 FILE | head -c META_LEN`; payloads
//! (cache values, focus documents) are stored as the raw bytes the caller gave.
//!
//! Writes go to a temporary file in the target's own folder, are fsynced, renamed
//! over the target, and the folder is fsynced: a reader or a restarted process sees
//! the old record or the new one, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

use chatstate_core::{Error, ErrorKind, Result, Timestamp};

/// "CSF" and format version 1.
pub(crate) const MAGIC: &[u8; 4] = b"CSF1";
/// Header length in bytes.
pub(crate) const HEADER_LEN: usize = 32;
/// A deadline that never comes.
pub(crate) const NEVER: Timestamp = Timestamp(i64::MAX);
/// Names of temporary files start with this (and are skipped by listings).
pub(crate) const TMP_PREFIX: &str = ".tmp-";

/// What a record file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Session = b'S' as isize,
    SessionLock = b'L' as isize,
    Focus = b'F' as isize,
    Cache = b'K' as isize,
    CacheAlias = b'A' as isize,
    Counters = b'C' as isize,
}

/// Whether writes wait for the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// fsync the file before the rename and the folder after it: an acknowledged
    /// write survives a crash of the process and of the machine.
    #[default]
    Fsync,
    /// No fsync: an acknowledged write survives a crash of the process (the rename
    /// is still atomic) but maybe not a power loss. For tests and benchmarks.
    None,
}

/// A decoded header.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Header {
    pub kind: u8,
    pub deadline: Timestamp,
    pub meta_len: usize,
    pub body_len: usize,
    pub body_crc: u32,
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Decode,
        format!("file {} is corrupt: {what}", path.display()),
    )
}

/// An I/O error as a chatstate error naming the file. Missing space, permissions
/// and the like are `Unavailable` (the disk may recover); the caller's data is never
/// in the message.
pub(crate) fn io_error(path: &Path, op: &str, e: io::Error) -> Error {
    let kind = match e.kind() {
        io::ErrorKind::InvalidData => ErrorKind::Decode,
        _ => ErrorKind::Unavailable,
    };
    Error::new(kind, format!("{op} {} failed", path.display())).with_source(e)
}

/// The longest body (metadata + payload) a record can have: the header stores its
/// lengths as `u32`. Just under 4 GiB.
pub(crate) const MAX_BODY_LEN: usize = u32::MAX as usize;

/// An `InvalidInput` error when a record for `path` with this much metadata and
/// payload would not fit the format; checked before anything is written.
pub(crate) fn check_body_len(path: &Path, meta_len: usize, payload_len: usize) -> Result<()> {
    match meta_len.checked_add(payload_len) {
        Some(len) if len <= MAX_BODY_LEN => Ok(()),
        _ => Err(Error::invalid_input(format!(
            "the record for {} would be {meta_len} + {payload_len} bytes, over the file \
             format's limit of {MAX_BODY_LEN}; nothing was written",
            path.display()
        ))),
    }
}

/// Encodes a record for `path`; a body over [`MAX_BODY_LEN`] is an `InvalidInput`
/// error (its length would not fit the header).
pub(crate) fn encode(
    path: &Path,
    kind: Kind,
    deadline: Timestamp,
    meta: &[u8],
    payload: &[u8],
) -> Result<Vec<u8>> {
    check_body_len(path, meta.len(), payload.len())?;
    let body_len = meta.len() + payload.len();
    let mut out = Vec::with_capacity(HEADER_LEN + body_len);
    out.extend_from_slice(MAGIC);
    out.push(kind as u8);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&deadline.0.to_le_bytes());
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(meta);
    h.update(payload);
    out.extend_from_slice(&h.finalize().to_le_bytes());
    let header_crc = crc32fast::hash(&out[..28]);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(meta);
    out.extend_from_slice(payload);
    Ok(out)
}

/// Decodes and checks a header.
pub(crate) fn decode_header(path: &Path, bytes: &[u8]) -> Result<Header> {
    if bytes.len() < HEADER_LEN {
        return Err(corrupt(
            path,
            format!("{} bytes, shorter than the header", bytes.len()),
        ));
    }
    if &bytes[..4] != MAGIC {
        return Err(corrupt(
            path,
            "no CSF1 magic (not a chatstate file, or a future format)",
        ));
    }
    let u32_at =
        |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    if crc32fast::hash(&bytes[..28]) != u32_at(28) {
        return Err(corrupt(path, "header checksum mismatch"));
    }
    let mut deadline = [0u8; 8];
    deadline.copy_from_slice(&bytes[8..16]);
    let header = Header {
        kind: bytes[4],
        deadline: Timestamp(i64::from_le_bytes(deadline)),
        meta_len: u32_at(16) as usize,
        body_len: u32_at(20) as usize,
        body_crc: u32_at(24),
    };
    if header.meta_len > header.body_len {
        return Err(corrupt(path, "metadata longer than the body"));
    }
    Ok(header)
}

/// A whole record: header, metadata JSON and payload.
#[derive(Debug)]
pub(crate) struct Record {
    pub header: Header,
    pub bytes: Vec<u8>,
}

impl Record {
    pub fn meta(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..HEADER_LEN + self.header.meta_len]
    }

    pub fn payload(&self) -> &[u8] {
        &self.bytes[HEADER_LEN + self.header.meta_len..]
    }
}

/// Checks a whole record's bytes.
pub(crate) fn decode(path: &Path, bytes: Vec<u8>, kind: Kind) -> Result<Record> {
    let header = decode_header(path, &bytes)?;
    if header.kind != kind as u8 {
        return Err(corrupt(
            path,
            format!(
                "holds a record of kind {:?}, expected {:?}",
                char::from(header.kind),
                kind
            ),
        ));
    }
    if bytes.len() != HEADER_LEN + header.body_len {
        return Err(corrupt(
            path,
            format!(
                "{} body bytes, the header says {} (torn write?)",
                bytes.len().saturating_sub(HEADER_LEN),
                header.body_len
            ),
        ));
    }
    if crc32fast::hash(&bytes[HEADER_LEN..]) != header.body_crc {
        return Err(corrupt(path, "body checksum mismatch"));
    }
    Ok(Record { header, bytes })
}

/// Reads a record; `None` when the file does not exist.
pub(crate) fn read(path: &Path, kind: Kind) -> Result<Option<Record>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path, "opening", e)),
    };
    let bytes = read_record_bytes(f).map_err(|e| io_error(path, "reading", e))?;
    decode(path, bytes, kind).map(Some)
}

/// The first read of a record: most records (a session with its window, a cache
/// entry) fit in it, so reading one is `open`, one `read`, `close`.
const FIRST_READ: usize = 16 * 1024;

/// A record file's bytes in as few `read`s as its header allows (issue 13: the
/// append's system calls). std's `fs::read` asks for the size first (`statx`) and
/// reads until a read returns nothing: two calls more per record. Here the header
/// says how long the record is, and a read that came back short of its buffer,
/// ending exactly there, has reached the end of the file (a regular file's `read`
/// returns less than asked only at its end). Anything else — a file longer or
/// shorter than its header says, a garbled header — is read to its end and reaches
/// [`decode`] whole, which reports it.
fn read_record_bytes(mut f: File) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; FIRST_READ];
    let mut len = 0;
    loop {
        if len == bytes.len() {
            // Full: grow to what the header says (and one byte more, to see a file
            // that is longer), at least doubling when the header does not say.
            let want = recorded_len(&bytes).map_or(len * 2, |total| total.max(len) + 1);
            bytes.resize(want.max(len + 1), 0);
        }
        let n = match f.read(&mut bytes[len..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let short = len + n < bytes.len();
        len += n;
        if n == 0 || (short && recorded_len(&bytes[..len]) == Some(len)) {
            break;
        }
    }
    bytes.truncate(len);
    Ok(bytes)
}

/// The whole record's length as its header gives it (unchecked: [`decode`] checks),
/// once the header has been read.
fn recorded_len(bytes: &[u8]) -> Option<usize> {
    let body = bytes.get(20..24)?;
    (bytes.len() >= HEADER_LEN && bytes[..4] == *MAGIC)
        .then(|| HEADER_LEN + u32::from_le_bytes([body[0], body[1], body[2], body[3]]) as usize)
}

/// Reads only a record's header; `None` when the file does not exist.
pub(crate) fn read_header(path: &Path) -> Result<Option<Header>> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path, "opening", e)),
    };
    let mut buf = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match f.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(path, "reading", e)),
        }
    }
    decode_header(path, &buf[..got]).map(Some)
}

/// Syncs a folder so a rename or removal in it survives a crash.
pub(crate) fn sync_dir(dir: &Path, durability: Durability) -> Result<()> {
    if durability == Durability::Fsync {
        match File::open(dir).and_then(|d| d.sync_all()) {
            Ok(()) => {}
            // The sweeper removed the folder once it was empty: nothing left to sync.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(dir, "syncing folder", e)),
        }
    }
    Ok(())
}

/// Folders the store creates are its user's alone: they hold users' conversations.
#[cfg(unix)]
const DIR_MODE: u32 = 0o700;
/// Files the store creates (records, `FORMAT`, lock stripes): owner read/write only.
#[cfg(unix)]
pub(crate) const FILE_MODE: u32 = 0o600;

/// Options that create a new file with [`FILE_MODE`] (on Unix).
pub(crate) fn new_file_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, FILE_MODE);
    options
}

/// Creates `dir` and any missing parents (mode 0700 on Unix, before the umask),
/// syncing each parent whose entries changed.
pub(crate) fn ensure_dir(dir: &Path, durability: Durability) -> Result<()> {
    // "" is the working directory: the parent of a relative path such as "data".
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        ensure_dir(parent, durability)?;
    }
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
    match builder.create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(io_error(dir, "creating folder", e)),
    }
    if let Some(parent) = dir.parent() {
        sync_dir(parent, durability)?;
    }
    Ok(())
}

/// A temporary file name: a random id drawn once per process and a counter, so a
/// write makes no `getrandom` call (it drew a random id per write before). A
/// forked child keeps both; [`write_atomic`] draws a random name when the one it
/// got is taken.
fn temp_name() -> String {
    static PROCESS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let process = PROCESS.get_or_init(chatstate_core::model::random_id);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{TMP_PREFIX}{process}-{n}")
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder (mode
/// 0600 on Unix), fsync, rename, fsync of the folder. The folder is made when the
/// temporary file cannot be created for want of it (no check before each write:
/// that was a `stat` per write).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], durability: Durability) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::new(ErrorKind::Internal, "a record path has no folder"))?;
    let mut tmp = dir.join(temp_name());
    let result = (|| {
        let create = |tmp: &Path| new_file_options().write(true).create_new(true).open(tmp);
        let mut created = create(&tmp);
        // A first write to the folder, or the sweeper removed it once empty — which
        // it may do again between our making it and creating the file: a few tries.
        for _ in 0..5 {
            match &created {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    ensure_dir(dir, durability)?;
                    created = create(&tmp);
                }
                _ => break,
            }
        }
        // Taken (a forked child repeats its parent's names): never touch that file,
        // draw a random name instead.
        if matches!(&created, Err(e) if e.kind() == io::ErrorKind::AlreadyExists) {
            tmp = dir.join(format!(
                "{TMP_PREFIX}{}",
                chatstate_core::model::random_id()
            ));
            created = create(&tmp);
        }
        let mut f = created.map_err(|e| io_error(&tmp, "creating", e))?;
        f.write_all(bytes)
            .map_err(|e| io_error(&tmp, "writing", e))?;
        if durability == Durability::Fsync {
            f.sync_all().map_err(|e| io_error(&tmp, "syncing", e))?;
        }
        fs::rename(&tmp, path).map_err(|e| io_error(path, "renaming into", e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(dir, durability)
}

/// Removes `path` durably; `false` when it did not exist.
pub(crate) fn remove(path: &Path, durability: Durability) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => {
            if let Some(dir) = path.parent() {
                sync_dir(dir, durability)?;
            }
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error(path, "removing", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("x/y.rec")
    }

    /// Issue 13: `read` reads by the header's length instead of asking the size;
    /// records of every size around its first read come back whole, and a file
    /// longer or shorter than its header says is still reported, not cut to fit.
    #[test]
    fn read_returns_records_of_any_size_whole_and_reports_wrong_lengths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.rec");
        for payload_len in [
            0,
            FIRST_READ - HEADER_LEN - 8,
            FIRST_READ - HEADER_LEN - 7,
            FIRST_READ - HEADER_LEN - 6,
            FIRST_READ,
            3 * FIRST_READ + 5,
        ] {
            let payload: Vec<u8> = (0..payload_len).map(|i| (i % 251) as u8).collect();
            let bytes = encode(&path, Kind::Cache, Timestamp(1), b"{\"m\":1}", &payload).unwrap();
            fs::write(&path, &bytes).unwrap();
            let r = read(&path, Kind::Cache).unwrap().expect("a record");
            assert_eq!(r.payload(), &payload[..], "{payload_len}");

            let mut longer = bytes.clone();
            longer.push(0);
            fs::write(&path, &longer).unwrap();
            let err = read(&path, Kind::Cache).unwrap_err();
            assert_eq!(
                err.kind(),
                ErrorKind::Decode,
                "{payload_len}: one byte too many"
            );

            fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
            let err = read(&path, Kind::Cache).unwrap_err();
            assert_eq!(
                err.kind(),
                ErrorKind::Decode,
                "{payload_len}: one byte short"
            );
        }
        assert!(
            read(&dir.path().join("absent"), Kind::Cache)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn roundtrip() {
        let bytes = encode(
            p(),
            Kind::Cache,
            Timestamp(42),
            b"{\"a\":1}",
            b"\x00payload",
        )
        .unwrap();
        let r = decode(p(), bytes, Kind::Cache).unwrap();
        assert_eq!(r.header.deadline, Timestamp(42));
        assert_eq!(r.meta(), b"{\"a\":1}");
        assert_eq!(r.payload(), b"\x00payload");
    }

    #[test]
    fn every_flipped_bit_and_every_truncation_is_detected() {
        let bytes = encode(p(), Kind::Session, Timestamp(7), b"{\"k\":\"v\"}", b"data").unwrap();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                let err = decode(p(), b, Kind::Session).err();
                let err = err.unwrap_or_else(|| panic!("flip of byte {i} bit {bit} undetected"));
                assert_eq!(err.kind(), ErrorKind::Decode);
                assert!(err.to_string().contains("x/y.rec"), "{err}");
            }
        }
        for len in 0..bytes.len() {
            let err = decode(p(), bytes[..len].to_vec(), Kind::Session).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Decode, "truncation to {len}");
        }
    }

    #[test]
    fn the_body_length_limit_is_the_u32_in_the_header() {
        assert!(check_body_len(p(), 10, MAX_BODY_LEN - 10).is_ok());
        for (meta, payload) in [(11, MAX_BODY_LEN - 10), (0, usize::MAX), (usize::MAX, 1)] {
            let err = check_body_len(p(), meta, payload).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        }
    }

    #[test]
    fn wrong_kind_is_a_decode_error() {
        let bytes = encode(p(), Kind::Focus, NEVER, b"{}", b"").unwrap();
        let err = decode(p(), bytes, Kind::Cache).unwrap_err();
        assert!(err.to_string().contains("expected Cache"), "{err}");
    }

    #[test]
    fn a_relative_folder_without_dot_slash_is_created() {
        // `Path::new("data").parent()` is "", which cannot be created: it is the
        // working directory and must be taken as existing.
        assert!(ensure_dir(Path::new(""), Durability::None).is_ok());
    }

    #[test]
    fn a_taken_temp_name_is_left_alone_and_another_is_drawn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec");
        write_atomic(&path, b"one", Durability::None).unwrap();
        // The next names this process would use (a few more, for tests writing in
        // other threads), taken by another writer's files.
        let next = temp_name();
        let n: u64 = next.rsplit('-').next().unwrap().parse().unwrap();
        let prefix = next.rsplit_once('-').unwrap().0.to_string();
        let taken: Vec<_> = (n + 1..=n + 64)
            .map(|i| dir.path().join(format!("{prefix}-{i}")))
            .collect();
        for t in &taken {
            fs::write(t, b"theirs").unwrap();
        }
        write_atomic(&path, b"two", Durability::None).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        for t in &taken {
            assert_eq!(
                fs::read(t).unwrap(),
                b"theirs",
                "the other files are untouched"
            );
        }
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/rec");
        write_atomic(&path, b"one", Durability::Fsync).unwrap();
        write_atomic(&path, b"two", Durability::None).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("rec")]);
        assert!(remove(&path, Durability::Fsync).unwrap());
        assert!(!remove(&path, Durability::Fsync).unwrap());
    }
}
