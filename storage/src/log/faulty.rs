//! An in-memory directory that models what survives a crash: the file seam for tests and for
//! the deterministic simulator.
//!
//! Each file keeps its *current* bytes (what reads see) apart from its *durable* bytes (as of
//! its last `fdatasync`); the directory keeps its current names apart from its durable names
//! (as of its last `sync`). [`FaultyDir::crash`] throws away everything not durable, and can
//! "tear" the last unsynced write: keep a random prefix of it, as a power cut in the middle of
//! a multi-sector write would. Randomness comes from a seed, so every failure replays.
#![allow(async_fn_in_trait)]

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::rc::Rc;

use bytes::Bytes;

use super::file::{is_aligned, SegmentDir, SegmentFile};

/// A small deterministic generator (SplitMix64), so tests need no RNG dependency.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..=max` (slightly biased; fine for fault injection).
    pub fn upto(&mut self, max: u64) -> u64 {
        if max == u64::MAX {
            self.next_u64()
        } else {
            self.next_u64() % (max + 1)
        }
    }
}

/// How a crash treats unsynced data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Every unsynced byte is lost.
    DropUnsynced,
    /// As `DropUnsynced`, but a random prefix (possibly empty, possibly all) of the last
    /// unsynced write survives.
    TearLastWrite,
}

type FileId = u64;

#[derive(Default)]
struct MemFile {
    current: Vec<u8>,
    durable: Vec<u8>,
}

struct LastWrite {
    file: FileId,
    pos: u64,
    data: Vec<u8>,
}

struct State {
    files: HashMap<FileId, MemFile>,
    names: BTreeMap<String, FileId>,
    durable_names: BTreeMap<String, FileId>,
    next_id: FileId,
    /// Bumped by every crash: handles from before it fail.
    generation: u64,
    last_write: Option<LastWrite>,
    rng: SplitMix64,
    /// Counters, for tests that check group commit.
    fdatasyncs: u64,
    writes: u64,
    /// `read_at` calls per file name (as named when the handle was opened).
    reads: HashMap<String, u64>,
    /// Bytes returned by `read_at`, all files.
    read_bytes: u64,
    /// When set, the next write fails with this error kind (then clears).
    fail_next_write: Option<io::ErrorKind>,
    /// Disk size: a write or creation that would take the files' total current size past it
    /// fails with ENOSPC (and changes nothing). `None`: unlimited.
    capacity: Option<u64>,
    /// Mutating operations allowed before every further one fails (a process stopped at
    /// that point: crash right after). `None`: unlimited.
    ops_left: Option<u64>,
}

impl State {
    /// Counts one mutating operation against [`FaultyDir::stop_after`].
    fn spend_op(&mut self) -> io::Result<()> {
        match &mut self.ops_left {
            Some(0) => Err(io::Error::other("injected stop: no more operations")),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl State {
    /// Bytes of the named files (removed files count as freed at once, although open handles
    /// keep them readable).
    fn used(&self) -> u64 {
        self.names
            .values()
            .filter_map(|id| self.files.get(id))
            .map(|f| f.current.len() as u64)
            .sum()
    }
}

fn no_space() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSPC)
}

/// The in-memory directory. Cheap to clone (shared state); single-threaded.
#[derive(Clone)]
pub struct FaultyDir {
    state: Rc<RefCell<State>>,
}

impl FaultyDir {
    pub fn new(seed: u64) -> Self {
        Self {
            state: Rc::new(RefCell::new(State {
                files: HashMap::new(),
                names: BTreeMap::new(),
                durable_names: BTreeMap::new(),
                next_id: 1,
                generation: 0,
                last_write: None,
                rng: SplitMix64::new(seed),
                fdatasyncs: 0,
                writes: 0,
                reads: HashMap::new(),
                read_bytes: 0,
                fail_next_write: None,
                capacity: None,
                ops_left: None,
            })),
        }
    }

    /// Simulates a power cut: files and names revert to their durable state (see
    /// [`CrashMode`]); handles opened before the crash stop working.
    pub fn crash(&self, mode: CrashMode) {
        let mut st = self.state.borrow_mut();
        st.generation += 1;
        let last = st.last_write.take();
        st.names = st.durable_names.clone();
        let live: Vec<FileId> = st.names.values().copied().collect();
        st.files.retain(|id, _| live.contains(id));
        for f in st.files.values_mut() {
            f.current = f.durable.clone();
        }
        if let (CrashMode::TearLastWrite, Some(w)) = (mode, last) {
            let keep = st.rng.upto(w.data.len() as u64) as usize;
            if let Some(f) = st.files.get_mut(&w.file) {
                let end = w.pos as usize + keep;
                if f.current.len() < end {
                    f.current.resize(end, 0);
                }
                f.current[w.pos as usize..end].copy_from_slice(&w.data[..keep]);
            }
        }
        // What the disk holds after the crash is, by definition, durable.
        for f in st.files.values_mut() {
            f.durable = f.current.clone();
        }
    }

    /// Number of `fdatasync` calls so far.
    pub fn fdatasyncs(&self) -> u64 {
        self.state.borrow().fdatasyncs
    }

    /// Number of `write_at` calls so far.
    pub fn writes(&self) -> u64 {
        self.state.borrow().writes
    }

    /// Lets `ops` more mutating operations (write, fdatasync, truncate, create, remove,
    /// rename, directory sync) succeed and fails every later one, until reset with `None`:
    /// with [`Self::crash`] after it, a crash at any chosen step of a multi-step operation.
    pub fn stop_after(&self, ops: Option<u64>) {
        self.state.borrow_mut().ops_left = ops;
    }

    /// Makes the next `write_at` fail with `kind`.
    pub fn fail_next_write(&self, kind: io::ErrorKind) {
        self.state.borrow_mut().fail_next_write = Some(kind);
    }

    /// Limits the disk to `capacity` bytes (`None`: unlimited). Writes that would grow the
    /// files past it fail with ENOSPC; shrinking or deleting files frees space.
    pub fn set_capacity(&self, capacity: Option<u64>) {
        self.state.borrow_mut().capacity = capacity;
    }

    /// Bytes currently held by the files (the measure [`Self::set_capacity`] limits).
    pub fn used_bytes(&self) -> u64 {
        self.state.borrow().used()
    }

    /// Number of `read_at` calls on handles opened under `name`.
    pub fn reads_of(&self, name: &str) -> u64 {
        self.state.borrow().reads.get(name).copied().unwrap_or(0)
    }

    /// Bytes returned by `read_at`, all files.
    pub fn read_bytes(&self) -> u64 {
        self.state.borrow().read_bytes
    }

    /// Number of `read_at` calls on any file.
    pub fn reads(&self) -> u64 {
        self.state.borrow().reads.values().sum()
    }

    /// Whether `name` exists (current view).
    pub fn exists(&self, name: &str) -> bool {
        self.state.borrow().names.contains_key(name)
    }

    /// The current bytes of `name`, for tests.
    pub fn contents(&self, name: &str) -> Option<Vec<u8>> {
        let st = self.state.borrow();
        let id = st.names.get(name)?;
        Some(st.files[id].current.clone())
    }

    /// Overwrites bytes of `name` (current and durable): corruption injection for tests.
    pub fn corrupt(&self, name: &str, pos: usize, bytes: &[u8]) {
        let mut st = self.state.borrow_mut();
        let Some(&id) = st.names.get(name) else {
            return;
        };
        let f = st.files.get_mut(&id).expect("named file exists");
        if f.current.len() < pos + bytes.len() {
            f.current.resize(pos + bytes.len(), 0);
        }
        f.current[pos..pos + bytes.len()].copy_from_slice(bytes);
        f.durable = f.current.clone();
    }
}

fn stale() -> io::Error {
    io::Error::other("file handle from before a simulated crash")
}

/// A handle to one file of a [`FaultyDir`].
pub struct FaultyFile {
    state: Rc<RefCell<State>>,
    id: FileId,
    generation: u64,
    name: Rc<str>,
}

impl FaultyFile {
    fn with<R>(&self, f: impl FnOnce(&mut State, &mut MemFile) -> R) -> io::Result<R> {
        let mut st = self.state.borrow_mut();
        if st.generation != self.generation {
            return Err(stale());
        }
        // A removed-but-open file keeps working (as on POSIX): take it out and put it back.
        let mut file = st.files.remove(&self.id).ok_or_else(stale)?;
        let r = f(&mut st, &mut file);
        st.files.insert(self.id, file);
        Ok(r)
    }
}

impl SegmentFile for FaultyFile {
    type Buf = Vec<u8>;

    async fn write_at(&self, pos: u64, buf: Vec<u8>, len: usize) -> (Vec<u8>, io::Result<()>) {
        assert!(
            is_aligned(pos) && is_aligned(len as u64) && len <= buf.len(),
            "unaligned write: pos {pos} len {len}"
        );
        let id = self.id;
        let r = self.with(|st, f| {
            if let Some(kind) = st.fail_next_write.take() {
                return Err(io::Error::new(kind, "injected write failure"));
            }
            st.spend_op()?;
            let end = pos as usize + len;
            let growth = end.saturating_sub(f.current.len()) as u64;
            // `f` is out of `st.files` while we hold it: count it by hand.
            let named = st.names.values().any(|&n| n == id);
            let used = st.used() + if named { f.current.len() as u64 } else { 0 };
            if growth > 0 && st.capacity.is_some_and(|c| used + growth > c) {
                return Err(no_space());
            }
            st.writes += 1;
            let data = &buf.as_slice()[..len];
            if f.current.len() < end {
                f.current.resize(end, 0);
            }
            f.current[pos as usize..end].copy_from_slice(data);
            st.last_write = Some(LastWrite {
                file: id,
                pos,
                data: data.to_vec(),
            });
            Ok(())
        });
        (buf, r.and_then(|r| r))
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes> {
        let name = self.name.clone();
        self.with(|st, f| {
            *st.reads.entry(name.to_string()).or_default() += 1;
            st.read_bytes += (pos as usize + len)
                .min(f.current.len())
                .saturating_sub(pos as usize) as u64;
            let start = (pos as usize).min(f.current.len());
            let end = (pos as usize + len).min(f.current.len());
            Bytes::copy_from_slice(&f.current[start..end])
        })
    }

    async fn fdatasync(&self) -> io::Result<()> {
        let id = self.id;
        self.with(|st, f| {
            st.spend_op()?;
            st.fdatasyncs += 1;
            f.durable = f.current.clone();
            if st.last_write.as_ref().is_some_and(|w| w.file == id) {
                st.last_write = None;
            }
            Ok(())
        })?
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        let id = self.id;
        self.with(|st, f| {
            st.spend_op()?;
            let growth = (len as usize).saturating_sub(f.current.len()) as u64;
            let named = st.names.values().any(|&n| n == id);
            let used = st.used() + if named { f.current.len() as u64 } else { 0 };
            if growth > 0 && st.capacity.is_some_and(|c| used + growth > c) {
                return Err(no_space());
            }
            f.current.resize(len as usize, 0);
            Ok(())
        })?
    }

    async fn size(&self) -> io::Result<u64> {
        self.with(|_, f| f.current.len() as u64)
    }

    async fn close(self) -> io::Result<()> {
        Ok(())
    }
}

impl SegmentDir for FaultyDir {
    type Buf = Vec<u8>;
    type File = FaultyFile;

    fn alloc_buf(&self, len: usize) -> Vec<u8> {
        // Deliberately not zeroed, like DMA memory: the appender must pad explicitly.
        vec![0xA5; len]
    }

    async fn open(&self, name: &str) -> io::Result<FaultyFile> {
        let mut st = self.state.borrow_mut();
        let id = match st.names.get(name) {
            Some(&id) => id,
            None => {
                st.spend_op()?;
                // A new file needs at least a directory entry's worth of room.
                if st.capacity.is_some_and(|c| st.used() >= c) {
                    return Err(no_space());
                }
                let id = st.next_id;
                st.next_id += 1;
                st.files.insert(id, MemFile::default());
                st.names.insert(name.to_string(), id);
                id
            }
        };
        Ok(FaultyFile {
            state: self.state.clone(),
            id,
            generation: st.generation,
            name: name.into(),
        })
    }

    async fn open_existing(&self, name: &str) -> io::Result<FaultyFile> {
        let st = self.state.borrow();
        let Some(&id) = st.names.get(name) else {
            return Err(io::Error::new(io::ErrorKind::NotFound, name.to_string()));
        };
        Ok(FaultyFile {
            state: self.state.clone(),
            id,
            generation: st.generation,
            name: name.into(),
        })
    }

    async fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.state.borrow().names.keys().cloned().collect())
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        let mut st = self.state.borrow_mut();
        st.spend_op()?;
        match st.names.remove(name) {
            // The contents stay reachable through open handles and through the durable
            // names until the directory is synced; `crash` garbage-collects them.
            Some(_) => Ok(()),
            None => Err(io::Error::new(io::ErrorKind::NotFound, name.to_string())),
        }
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut st = self.state.borrow_mut();
        st.spend_op()?;
        match st.names.remove(from) {
            // Atomic, as POSIX: `to` (if any) is replaced; durable once the directory syncs.
            Some(id) => {
                st.names.insert(to.to_string(), id);
                Ok(())
            }
            None => Err(io::Error::new(io::ErrorKind::NotFound, from.to_string())),
        }
    }

    async fn sync(&self) -> io::Result<()> {
        let mut st = self.state.borrow_mut();
        st.spend_op()?;
        st.durable_names = st.names.clone();
        Ok(())
    }
}
