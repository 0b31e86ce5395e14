//! A record whose checksums are right but whose numbers sit at the end of their
//! range (an operator's edit, another tool, a future writer). Adding 1 with plain
//! `+=` would panic in debug builds (the blocking task dies: `Internal`) and wrap to
//! 0 in release builds — for a fence, exactly the "fence goes back" fencing exists to
//! prevent. The core transitions refuse it with a `Decode` error instead.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chatstate_core::{ErrorKind, ManualClock, SessionKey, SessionStore};
use chatstate_file::FileStore;

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Rewrites a record's JSON metadata with `edit`, keeping the documented header
/// (CSF1, kind, deadline, lengths, CRC-32 of body and header) valid.
fn edit_record(path: &Path, edit: impl FnOnce(String) -> String) {
    let bytes = fs::read(path).unwrap();
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap()) as usize;
    let (meta_len, body_len) = (u32_at(16), u32_at(20));
    let meta = String::from_utf8(bytes[32..32 + meta_len].to_vec()).unwrap();
    let payload = bytes[32 + meta_len..32 + body_len].to_vec();
    let meta = edit(meta);
    let mut out = bytes[..16].to_vec(); // magic, kind, padding, deadline
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&((meta.len() + payload.len()) as u32).to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(meta.as_bytes());
    h.update(&payload);
    out.extend_from_slice(&h.finalize().to_le_bytes());
    let header_crc = crc32fast::hash(&out[..28]);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(meta.as_bytes());
    out.extend_from_slice(&payload);
    fs::write(path, out).unwrap();
}

#[tokio::test]
async fn a_stored_fence_at_u64_max_neither_panics_nor_goes_back() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let s = FileStore::builder(dir.path())
        .clock(clock.shared())
        .sweep_interval(None)
        .open()
        .unwrap();
    let k = SessionKey::new("t", "c", "u").unwrap();
    let lease = s
        .try_lock(&k, "job", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert!(s.release_lock(&lease).await.unwrap());
    let lock_file = files_under(&dir.path().join("session-locks"))
        .pop()
        .unwrap();
    edit_record(&lock_file, |meta| {
        assert!(meta.contains("\"fence\":1"), "{meta}");
        meta.replace("\"fence\":1", &format!("\"fence\":{}", u64::MAX))
    });
    match s.try_lock(&k, "job", Duration::from_secs(5)).await {
        Ok(Some(l)) => panic!(
            "a fence below the stored one ({}) was handed out: {}",
            u64::MAX,
            l.fence
        ),
        Ok(None) => panic!("the lock is free"),
        Err(e) => assert_eq!(
            e.kind(),
            ErrorKind::Decode,
            "an exhausted fence is a clear Decode error, not a panicking task: {e}"
        ),
    }
}
