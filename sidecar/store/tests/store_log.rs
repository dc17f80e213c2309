//! The outcome log on a real disk: group commit, recovery, torn tails,
//! corruption, snapshots and compaction, one writer per directory. The
//! state machine here is a plain list of payloads, so what is checked is
//! the log alone.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use abmesh_store::{RecordRef, StateMachine, Store, StoreError, StoreMetrics, StoreOptions};
use bytes::Bytes;

/// The record kinds of this state machine (the log does not know any).
const OUTCOMES: u8 = 1;
const EXPOSURES: u8 = 2;

/// Every payload applied, in order, with its LSN.
#[derive(Default, Debug, PartialEq)]
struct Journal(Vec<(u64, Vec<u8>)>);

impl StateMachine for Journal {
    type Output = u64;
    fn knows_kind(kind: u8) -> bool {
        kind == OUTCOMES || kind == EXPOSURES
    }
    fn apply(&mut self, r: &RecordRef<'_>) -> u64 {
        self.0.push((r.lsn, r.payload.to_vec()));
        r.lsn
    }
    type SnapshotError = std::convert::Infallible;
    fn write_snapshot(&self, out: &mut Vec<u8>) -> Result<(), Self::SnapshotError> {
        for (lsn, p) in &self.0 {
            out.extend_from_slice(&lsn.to_le_bytes());
            out.extend_from_slice(&(p.len() as u32).to_le_bytes());
            out.extend_from_slice(p);
        }
        Ok(())
    }
}

fn restore(bytes: Option<&[u8]>) -> Result<Journal, std::convert::Infallible> {
    let mut j = Journal::default();
    let mut b = bytes.unwrap_or_default();
    while !b.is_empty() {
        let lsn = u64::from_le_bytes(b[..8].try_into().unwrap());
        let n = u32::from_le_bytes(b[8..12].try_into().unwrap()) as usize;
        j.0.push((lsn, b[12..12 + n].to_vec()));
        b = &b[12 + n..];
    }
    Ok(j)
}

/// Opens for writing. A store dropped without `shutdown` (a simulated
/// crash) releases its lock when its threads have exited, a moment later,
/// so a `Locked` is retried for a while.
fn open(
    dir: &Path,
    options: StoreOptions,
) -> Result<(Store<Journal>, abmesh_store::Recovery), StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Store::open(dir, options, StoreMetrics::new(), restore) {
            Err(StoreError::Locked(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            r => return r,
        }
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn payload(i: usize) -> Bytes {
    Bytes::from(format!("record-{i}-{}", "x".repeat(i % 50)))
}

/// The journal a directory recovers to.
fn journal(dir: &Path) -> Journal {
    abmesh_store::load(dir, restore).unwrap().0
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

#[test]
fn concurrent_appends_share_syncs_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (store, rec) = open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(rec.last_lsn, 0);
    let rt = rt();
    let lsns: Vec<u64> = rt.block_on(async {
        let tasks: Vec<_> = (0..400)
            .map(|i| {
                let s = store.clone();
                tokio::spawn(async move { s.append(OUTCOMES, payload(i)).await.unwrap() })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let mut sorted = lsns.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        (1..=400).collect::<Vec<_>>(),
        "every append got its own LSN"
    );
    store.shutdown();
    drop(store);

    let j = journal(dir.path());
    assert_eq!(j.0.len(), 400);
    let mut payloads: Vec<Vec<u8>> = j.0.iter().map(|(_, p)| p.clone()).collect();
    payloads.sort();
    let mut expected: Vec<Vec<u8>> = (0..400).map(|i| payload(i).to_vec()).collect();
    expected.sort();
    assert_eq!(payloads, expected);
    // Reopening for writing continues the numbering.
    let (store, rec) = open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(rec.last_lsn, 400);
    let lsn = rt
        .block_on(store.append(OUTCOMES, Bytes::from_static(b"after")))
        .unwrap();
    assert_eq!(lsn, 401);
    store.shutdown();
}

#[test]
fn a_torn_tail_is_truncated_and_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    {
        let (store, _) = open(dir.path(), StoreOptions::default()).unwrap();
        for i in 0..20 {
            rt.block_on(store.append(OUTCOMES, payload(i))).unwrap();
        }
        // No shutdown: no final snapshot, as after a crash.
        drop(store);
    }
    let seg = segments(dir.path()).pop().unwrap();
    let good_len = fs::metadata(&seg).unwrap().len();
    // A record cut in the middle of its payload, then zeros (a file
    // extended by the file system but never written).
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    let mut torn = Vec::new();
    torn.extend_from_slice(&100u32.to_le_bytes());
    torn.extend_from_slice(&[1, 2, 3, 4, 1, 21, 0, 0]);
    f.write_all(&torn).unwrap();
    f.write_all(&[0u8; 300]).unwrap();
    drop(f);

    // A reader stops at the tear and changes nothing.
    assert_eq!(journal(dir.path()).0.len(), 20);
    assert!(fs::metadata(&seg).unwrap().len() > good_len);

    let (store, rec) = open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(rec.truncated_bytes, torn.len() as u64 + 300);
    assert_eq!(rec.last_lsn, 20);
    assert_eq!(fs::metadata(&seg).unwrap().len(), good_len);
    let lsn = rt.block_on(store.append(OUTCOMES, payload(99))).unwrap();
    assert_eq!(lsn, 21);
    store.shutdown();
    let j = journal(dir.path());
    assert_eq!(j.0.len(), 21);
    assert_eq!(j.0[20].1, payload(99).to_vec());
}

#[test]
fn every_cut_of_the_last_record_recovers_to_the_records_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    {
        let (store, _) = open(dir.path(), StoreOptions::default()).unwrap();
        for i in 0..3 {
            rt.block_on(store.append(EXPOSURES, payload(i))).unwrap();
        }
    }
    let seg = segments(dir.path()).pop().unwrap();
    let full = fs::read(&seg).unwrap();
    let last_len = 8 + 17 + payload(2).len();
    let start = full.len() - last_len;
    for cut in (start..full.len()).step_by(3) {
        fs::write(&seg, &full[..cut]).unwrap();
        let (store, rec) = open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(
            (rec.last_lsn, rec.truncated_bytes),
            (2, (cut - start) as u64),
            "cut at {cut}"
        );
        drop(store);
    }
}

#[test]
fn damage_before_the_last_segment_is_refused_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let small = StoreOptions {
        segment_bytes: 512,
        snapshot_every_bytes: u64::MAX,
        ..StoreOptions::default()
    };
    {
        let (store, _) = open(dir.path(), small).unwrap();
        for i in 0..60 {
            rt.block_on(store.append(OUTCOMES, payload(i))).unwrap();
        }
    }
    let segs = segments(dir.path());
    assert!(segs.len() >= 3, "{segs:?}");
    let mut bytes = fs::read(&segs[0]).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0xff;
    fs::write(&segs[0], &bytes).unwrap();
    let err = open(dir.path(), small).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&segs[0].display().to_string()) && msg.contains("checksum"),
        "{msg}"
    );
}

#[test]
fn snapshots_bound_replay_and_remove_covered_segments() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let opts = StoreOptions {
        segment_bytes: 1024,
        snapshot_every_bytes: 4096,
        ..StoreOptions::default()
    };
    {
        let (store, _) = open(dir.path(), opts).unwrap();
        for i in 0..500 {
            rt.block_on(store.append(OUTCOMES, payload(i))).unwrap();
        }
        drop(store); // a crash: no final snapshot
    }
    let snaps: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("snapshot-")
                .then_some(p)
        })
        .collect();
    assert_eq!(
        snaps.len(),
        2,
        "the newest two snapshots are kept: {snaps:?}"
    );
    // 500 records of ~50 bytes = ~40 KiB of log in 1 KiB segments, but
    // only the segments after the older kept snapshot are left.
    assert!(
        segments(dir.path()).len() <= 12,
        "{:?}",
        segments(dir.path())
    );
    let (store, rec) = open(dir.path(), opts).unwrap();
    assert!(rec.snapshot_lsn >= 400, "{rec:?}");
    assert!(
        rec.replayed <= 100,
        "replay is bounded by the snapshot interval: {rec:?}"
    );
    assert_eq!(rec.last_lsn, 500);
    store.shutdown();
    // A clean shutdown leaves a snapshot of everything: nothing to replay.
    let (store, rec) = open(dir.path(), opts).unwrap();
    assert_eq!((rec.snapshot_lsn, rec.replayed), (500, 0));
    drop(store);
    let j = journal(dir.path());
    assert_eq!(
        j.0.iter().map(|x| x.0).collect::<Vec<_>>(),
        (1..=500).collect::<Vec<_>>()
    );
}

#[test]
fn a_damaged_newest_snapshot_falls_back_to_the_one_before() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let opts = StoreOptions {
        segment_bytes: 1024,
        snapshot_every_bytes: 4096,
        ..StoreOptions::default()
    };
    {
        let (store, _) = open(dir.path(), opts).unwrap();
        for i in 0..500 {
            rt.block_on(store.append(OUTCOMES, payload(i))).unwrap();
        }
        store.shutdown();
    }
    let mut snaps: Vec<PathBuf> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    snaps.sort();
    let newest = snaps.pop().unwrap();
    let mut b = fs::read(&newest).unwrap();
    b[40] ^= 0x55;
    fs::write(&newest, b).unwrap();
    let j = journal(dir.path());
    assert_eq!(
        j.0.iter().map(|x| x.0).collect::<Vec<_>>(),
        (1..=500).collect::<Vec<_>>()
    );
}

#[test]
fn a_damaged_snapshot_falls_back_to_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    {
        let (store, _) = open(dir.path(), StoreOptions::default()).unwrap();
        for i in 0..10 {
            rt.block_on(store.append(OUTCOMES, payload(i))).unwrap();
        }
        store.shutdown();
    }
    let snap = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "bin"))
        .unwrap();
    let mut b = fs::read(&snap).unwrap();
    let n = b.len();
    b[n - 1] ^= 1;
    fs::write(&snap, b).unwrap();
    // Segments were kept (the snapshot covered the active segment only),
    // so the log alone rebuilds everything.
    assert_eq!(journal(dir.path()).0.len(), 10);
}

#[test]
fn one_writer_per_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), StoreOptions::default()).unwrap();
    let err = Store::open(
        dir.path(),
        StoreOptions::default(),
        StoreMetrics::new(),
        restore,
    )
    .unwrap_err();
    assert!(matches!(err, StoreError::Locked(_)), "{err}");
    store.shutdown();
    drop(store);
    // Shut down and dropped: the lock is released.
    let (store, _) = open(dir.path(), StoreOptions::default()).unwrap();
    store.shutdown();
}

#[test]
fn appends_after_shutdown_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), StoreOptions::default()).unwrap();
    store.shutdown();
    let err = rt()
        .block_on(store.append(OUTCOMES, payload(1)))
        .unwrap_err();
    assert!(matches!(err, StoreError::Closed), "{err}");
}
