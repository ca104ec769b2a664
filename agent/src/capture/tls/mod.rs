//! Where the TLS libraries live, and the uprobes that capture plaintext from them.
//!
//! Each library mcptap reads is a module that plans where its probes go in one binary (the
//! `LIBRARIES` list, marked `TLS_LIBRARY_LIST`): OpenSSL (`openssl`) and GnuTLS (`gnutls`) by
//! their exported symbols, Go's `crypto/tls` (`go`) by its symbol table or function table,
//! BoringSSL in Bun (`boringssl`) by its error-reporting sites, rustls (`rustls`) by its
//! symbols. A uprobe is set on an inode, so one library reached through
//! several paths or mount namespaces is one target, identified by (device, inode); a binary
//! replaced at its path (an agent CLI updating itself) is a new inode, examined and probed
//! afresh when a process runs or maps it.
//!
//! Watching every process, each such binary is probed once for all processes: the system's
//! TLS libraries and whatever the running processes have mapped at start, then each new
//! program at its exec. With `--comm`/`--pid` the probes are set per watched process instead,
//! so unwatched processes never take the uprobe trap: the system libraries (a process may load
//! them later, as Python loads `_ssl` on first use) and what the process has mapped. A TLS
//! socket in a process whose library was not probed yet (a library loaded from an unusual
//! path, a child that forked without exec) brings a fresh look at its mappings, so its later
//! connections are covered.
//!
//! The other concerns are modules of their own: ELF reading (`elf`), the x86 decoding that
//! places probes (`x86`), `/proc` (`procs`) and detaching (`detach`).

mod boringssl;
mod detach;
mod elf;
mod gnutls;
mod go;
mod openssl;
mod procs;
mod rustls;
mod x86;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroU32;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::{Context as _, Result};
use aya::Ebpf;
use aya::maps::{Array, MapData, ProgramArray};
use aya::programs::UProbe;
use aya::programs::uprobe::{UProbeAttachLocation, UProbeLink, UProbeLinkId, UProbeScope};
use log::{debug, info, warn};
use mcptap_abi::{
    BORINGSSL_PROBES, GNUTLS_PROBES, GO_PROBES, OPENSSL_PROBES, RUSTLS_PROBES, TAIL_SHIP_MORE,
    names,
};

use super::host::TlsLibraries;
use detach::{Detacher, release_after_exit};
use elf::Mapped;

/// A file's identity: what a uprobe is really attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FileId {
    dev: u64,
    ino: u64,
}

/// A TLS library whose plaintext mcptap reads.
pub use crate::signal::TlsLibrary as Library;

/// Where the uprobes go in one binary, for one library.
#[derive(Debug)]
pub struct Plan {
    /// The library.
    pub library: Library,
    /// `(program, file offset, what is probed there)`.
    pub probes: Vec<(&'static str, u64, &'static str)>,
    /// How it is probed, for the metrics (`internal`, `exported`, ...).
    pub mode: &'static str,
    /// What the log says of it.
    pub detail: String,
    /// Why it is recognised but cannot be probed, if it cannot.
    pub blocked: Option<String>,
    /// Its probes read plaintext (OpenSSL's libcrypto alone only binds SSL objects).
    pub carries_data: bool,
}

/// One library's part: which mapped files may hold it, where its probes go in a binary, and
/// where the system keeps it.
struct LibraryPlanner {
    library: Library,
    /// Whether a mapped file at this path may hold it (executables are always looked at).
    maybe_in: fn(&str) -> bool,
    /// Its probes in a binary's bytes; `None` when the binary does not have it.
    plan: fn(&[u8]) -> Result<Option<Plan>>,
    /// Its shared libraries in the system's library directories.
    system: fn() -> Vec<PathBuf>,
    /// Every kernel program it uses.
    programs: &'static [(&'static str, &'static str, bool)],
}

// TLS_LIBRARY_LIST: every library read, in the order a binary is examined for them. A new
// library is a module with these four parts, its line here, its `Library` variant and
// `tls_lib` constant, and its kernel programs.
const LIBRARIES: &[LibraryPlanner] = &[
    LibraryPlanner {
        library: Library::OpenSsl,
        maybe_in: openssl::maybe_in,
        plan: openssl::plan,
        system: openssl::system_libraries,
        programs: &OPENSSL_PROBES,
    },
    LibraryPlanner {
        library: Library::GnuTls,
        maybe_in: gnutls::maybe_in,
        plan: gnutls::plan,
        system: gnutls::system_libraries,
        programs: &GNUTLS_PROBES,
    },
    LibraryPlanner {
        library: Library::Go,
        maybe_in: go::maybe_in,
        plan: go::plan,
        system: go::system_libraries,
        programs: &GO_PROBES,
    },
    LibraryPlanner {
        library: Library::BoringSsl,
        maybe_in: boringssl::maybe_in,
        plan: boringssl::plan,
        system: boringssl::system_libraries,
        programs: &BORINGSSL_PROBES,
    },
    LibraryPlanner {
        library: Library::Rustls,
        maybe_in: rustls::maybe_in,
        plan: rustls::plan,
        system: rustls::system_libraries,
        programs: &RUSTLS_PROBES,
    },
];

/// Whether a mapped file may hold any library read.
fn maybe_tls(path: &str) -> bool {
    LIBRARIES.iter().any(|l| (l.maybe_in)(path))
}

/// What one binary holds: a plan per library found in it.
type Offsets = Rc<Vec<Plan>>;

/// How the probes of one binary fared, per library (the `state` of `mcptap_tls_probes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeState {
    /// Its probes are set.
    Probed,
    /// The library was recognised, but the kernel refused a probe.
    Failed,
}

impl ProbeState {
    /// Its name in the metric.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeState::Probed => "probed",
            ProbeState::Failed => "failed",
        }
    }
}

/// Every library's plan for the binary at `path` (whose bytes are `data`), logged; `None`
/// when it holds none of them.
fn plans_of(path: &Path, data: &[u8]) -> Option<Offsets> {
    let mut plans = Vec::new();
    for lib in LIBRARIES {
        match (lib.plan)(data) {
            Ok(Some(plan)) => {
                info!(
                    "TLS: {}: {}: {}",
                    path.display(),
                    lib.library.as_str(),
                    plan.detail
                );
                debug!("TLS: {} probes {:?}", path.display(), plan.probes);
                plans.push(plan);
            }
            Ok(None) => {}
            Err(e) => debug!("TLS: cannot read {}: {e}", path.display()),
        }
    }
    (!plans.is_empty()).then(|| Rc::new(plans))
}

/// `path`, or the same file through this process's root when `path` (a `/proc/PID/root/...`
/// path of a process that is gone) no longer leads to it; `None` when neither is file `id`.
fn reachable(path: &Path, id: FileId) -> Option<PathBuf> {
    let is_it = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| {
            FileId {
                dev: m.dev(),
                ino: m.ino(),
            } == id
        })
    };
    if is_it(path) {
        return Some(path.to_path_buf());
    }
    let rest = path.strip_prefix("/proc").ok()?;
    let mut parts = rest.components();
    parts.next()?;
    let inside = parts.as_path().strip_prefix("root").ok()?;
    let ours = Path::new("/").join(inside);
    is_it(&ours).then_some(ours)
}

/// The probes attached to one file, by program.
type Links = Vec<(&'static str, UProbeLinkId)>;

/// Who a set of links was attached for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Owner {
    /// Every process (all-process mode).
    All,
    /// One process (`--comm`/`--pid`).
    Pid(u32),
}

/// The OpenSSL probes: which binaries have been looked at, and what is attached where.
pub struct Tls {
    per_pid: bool,
    /// Every file looked at, and its plans when it has a library read.
    examined: HashMap<FileId, Option<Offsets>>,
    /// The system libraries with TLS (probed for every watched process in per-pid mode).
    system: Vec<(FileId, PathBuf)>,
    /// Files attached, per owner, with their links (empty when attaching failed: not retried).
    links: HashMap<Owner, HashMap<FileId, Links>>,
    /// Files probed and attempts refused, for the start-up verdict.
    probed: usize,
    /// Every file probed since the start, and how (see [`Plan::mode`]): probes that are
    /// later taken off (a process exits, the agent stops) leave it here.
    probed_files: HashMap<(FileId, Library), &'static str>,
    /// Every file whose libraries were recognised, and how its probes fared, per library.
    outcomes: HashMap<(FileId, Library), ProbeState>,
    refused: Option<anyhow::Error>,
    /// When each process's mappings were last looked at because of a TLS socket: a busy
    /// HTTPS server opens many, and its libraries rarely change.
    rescanned: HashMap<u32, std::time::Instant>,
    /// The library found in each process.
    libraries: TlsLibraries,
    detacher: Detacher,
}

/// Processes whose TLS library is remembered.
const MAX_PROCESS_LIBRARIES: usize = 65_536;

/// How long a TLS socket does not bring another look at the same process's mappings.
const RESCAN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Load the TLS programs and fill their tail-call slot.
fn load_programs(ebpf: &mut Ebpf) -> Result<()> {
    let mut loaded = HashSet::new();
    for (_, prog, _) in LIBRARIES.iter().flat_map(|l| l.programs) {
        if loaded.insert(prog) {
            uprobe(ebpf, prog)?
                .load()
                .with_context(|| format!("the kernel's verifier rejected {prog}"))?;
        }
    }
    let more = uprobe(ebpf, names::PROG_SSL_SHIP_MORE)?;
    more.load()
        .context("the kernel's verifier rejected ssl_ship_more")?;
    let fd = more.fd()?.try_clone()?;
    let mut tails = ProgramArray::try_from(ebpf.map_mut(names::TLS_TAILS).context("TLS_TAILS")?)?;
    tails.set(TAIL_SHIP_MORE, &fd, 0)?;
    Ok(())
}

impl Tls {
    /// Load the TLS programs, fill their tail-call slot, and probe OpenSSL where the processes
    /// in scope have it. `per_pid` means `--comm`/`--pid` narrowed the scope: the watched
    /// processes are those the kernel's watch map marks.
    pub fn start(ebpf: &mut Ebpf, per_pid: bool) -> Result<Tls> {
        load_programs(ebpf)?;
        let mut tls = Tls {
            per_pid,
            examined: HashMap::new(),
            system: Vec::new(),
            links: HashMap::new(),
            probed: 0,
            probed_files: HashMap::new(),
            outcomes: HashMap::new(),
            refused: None,
            rescanned: HashMap::new(),
            libraries: TlsLibraries::default(),
            detacher: Detacher::start()?,
        };
        for path in LIBRARIES.iter().flat_map(|l| (l.system)()) {
            if let Some(id) = tls.examine(&path)
                && tls.examined[&id].is_some()
                && !tls.system.iter().any(|(s, _)| *s == id)
            {
                tls.system.push((id, path));
            }
        }
        tls.probe_running(ebpf)?;
        if let (0, Some(e)) = (tls.probed, tls.refused.take()) {
            // Nothing could be probed (perf_event_open of a uprobe wants CAP_SYS_ADMIN on
            // some kernels): say so once instead of at every process.
            tls.exit_all(ebpf);
            return Err(e.context(
                "the kernel refused every uprobe on a TLS library (perf_event_open of a uprobe \
                 may need CAP_SYS_ADMIN)",
            ));
        }
        info!(
            "TLS: libraries probed in {} binaries ({})",
            tls.probed,
            if per_pid {
                "per watched process"
            } else {
                "for every process"
            }
        );
        Ok(tls)
    }

    /// Probe the processes running now: those the watch map marks (per-pid scope), or every
    /// one, with the system's libraries probed once for all.
    fn probe_running(&mut self, ebpf: &mut Ebpf) -> Result<()> {
        let pids: Vec<u32> = std::fs::read_dir("/proc")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        if self.per_pid {
            let watch: Array<&MapData, u64> =
                Array::try_from(ebpf.map(names::WATCH).context("WATCH map")?)?;
            let watched: Vec<u32> = pids
                .into_iter()
                .filter(|&pid| {
                    let word = watch.get(&mcptap_abi::id_word(pid), 0).unwrap_or(0);
                    (word >> (mcptap_abi::id_byte(pid) * 8)) & 0xff != 0
                })
                .collect();
            for pid in watched {
                self.process(ebpf, pid);
            }
        } else {
            for (id, path) in self.system.clone() {
                self.attach(ebpf, Owner::All, id, &path);
            }
            let me = std::process::id();
            for pid in pids.into_iter().filter(|p| *p != me) {
                self.process(ebpf, pid);
            }
        }
        Ok(())
    }

    /// Identify `path` and look at its symbols once; returns its identity.
    fn examine(&mut self, path: &Path) -> Option<FileId> {
        let meta = std::fs::metadata(path).ok()?;
        let id = FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        self.examined
            .entry(id)
            .or_insert_with(|| match Mapped::open(path) {
                Ok(data) => plans_of(path, data.bytes()),
                Err(e) => {
                    debug!("TLS: cannot read {}: {e}", path.display());
                    None
                }
            });
        Some(id)
    }

    /// Probe the OpenSSL of process `pid` (its program and the libraries it maps now, plus
    /// the system's in per-pid mode) wherever that is not done yet.
    fn process(&mut self, ebpf: &mut Ebpf, pid: u32) {
        let mut files = Vec::new();
        // The program first: a library it links in is the one its connections use.
        let mut paths: Vec<PathBuf> = procs::program(pid).into_iter().collect();
        paths.extend(procs::mapped_libraries(pid, maybe_tls));
        for path in paths {
            if let Some(id) = self.examine(&path) {
                files.push((id, path));
            }
        }
        self.note_library(pid, &files);
        let owner = if self.per_pid {
            files.extend(self.system.iter().cloned());
            Owner::Pid(pid)
        } else {
            Owner::All
        };
        for (id, path) in files {
            self.attach(ebpf, owner, id, &path);
        }
    }

    /// Remember the first library found in `pid`'s own files, for the undecrypted count's
    /// label; at most [`MAX_PROCESS_LIBRARIES`] processes (the others stay `unknown`).
    fn note_library(&mut self, pid: u32, files: &[(FileId, PathBuf)]) {
        let found = files
            .iter()
            .filter_map(|(id, _)| self.examined.get(id)?.as_ref())
            .flat_map(|plans| plans.iter())
            .find(|plan| plan.carries_data)
            .map(|plan| plan.library);
        let mut known = self.libraries.borrow_mut();
        match found {
            Some(lib) if known.len() < MAX_PROCESS_LIBRARIES || known.contains_key(&pid) => {
                known.insert(pid, lib);
            }
            Some(_) => {}
            None => {
                known.remove(&pid);
            }
        }
    }

    /// What the probes found in each process (the live host answers from it).
    pub fn libraries(&self) -> TlsLibraries {
        self.libraries.clone()
    }

    /// Detach everything.
    fn exit_all(&mut self, ebpf: &mut Ebpf) {
        for links in std::mem::take(&mut self.links).into_values() {
            self.detach(ebpf, links.into_values().flatten());
        }
    }

    /// Attach the probes to file `id`, reached now at `path`, for `owner`, once.
    fn attach(&mut self, ebpf: &mut Ebpf, owner: Owner, id: FileId, path: &Path) {
        let Some(Some(offsets)) = self.examined.get(&id).cloned() else {
            return;
        };
        if self.links.get(&owner).is_some_and(|d| d.contains_key(&id)) {
            return;
        }
        let scope = match owner {
            Owner::All => UProbeScope::AllProcesses,
            Owner::Pid(pid) => match NonZeroU32::new(pid) {
                Some(p) => UProbeScope::OneProcess(p),
                None => return,
            },
        };
        // A process that exited while its binary was examined took its `/proc/PID/root`
        // path along: the file is reached through ours if it is the same one, and otherwise
        // left for the next process that runs it (not counted as refused).
        let Some(path) = reachable(path, id) else {
            debug!("TLS: {} is gone before its probes were set", path.display());
            return;
        };
        let path = path.as_path();
        let started = std::time::Instant::now();
        let mut links = Vec::new();
        for plan in offsets.iter() {
            let state = match self.attach_plan(ebpf, plan, owner, scope, path) {
                Ok(mut set) => {
                    links.append(&mut set);
                    self.probed_files.insert((id, plan.library), plan.mode);
                    ProbeState::Probed
                }
                Err(e) => {
                    if self.outcomes.get(&(id, plan.library)) != Some(&ProbeState::Failed) {
                        warn!(
                            "TLS: {} has {} but it could not be probed: {e:#}",
                            path.display(),
                            plan.library.as_str()
                        );
                    }
                    self.refused.get_or_insert(e);
                    ProbeState::Failed
                }
            };
            let seen = self.outcomes.entry((id, plan.library)).or_insert(state);
            // Probed once is probed: a refusal for one process does not undo another's.
            if state == ProbeState::Probed {
                *seen = state;
            }
        }
        debug!(
            "TLS: {} probes on {} for {owner:?} in {:?}",
            links.len(),
            path.display(),
            started.elapsed()
        );
        // Even empty: a refused attachment is not retried (the process is gone, or it is
        // not permitted).
        let any = !links.is_empty();
        self.links.entry(owner).or_default().insert(id, links);
        if any {
            self.probed += 1;
        }
    }

    /// Attach one library's probes to the file at `path`, all or nothing: an entry probe
    /// without its return probe would leave calls open.
    fn attach_plan(
        &mut self,
        ebpf: &mut Ebpf,
        plan: &Plan,
        owner: Owner,
        scope: UProbeScope,
        path: &Path,
    ) -> Result<Links> {
        if let Some(why) = &plan.blocked {
            anyhow::bail!("{why}");
        }
        let mut links = Vec::new();
        for &(prog, offset, symbol) in &plan.probes {
            let attached = uprobe(ebpf, prog).and_then(|p| {
                p.attach(UProbeAttachLocation::AbsoluteOffset(offset), path, scope)
                    .map_err(anyhow::Error::from)
            });
            match attached {
                Ok(link) => links.push((prog, link)),
                Err(e) => {
                    self.detach(ebpf, links);
                    let e = e.context(format!(
                        "probing {symbol} in {} for {owner:?}",
                        path.display()
                    ));
                    debug!("TLS: {e:#}");
                    return Err(e);
                }
            }
        }
        Ok(links)
    }

    /// The binaries with OpenSSL probed since the start (each once, whoever for), by
    /// `Plan::mode`: `internal` and `exported` always, the others when seen.
    pub fn probed_binaries(&self) -> BTreeMap<&'static str, u64> {
        let mut out: BTreeMap<&'static str, u64> = [("internal", 0), ("exported", 0)].into();
        for ((_, lib), mode) in &self.probed_files {
            if *lib == Library::OpenSsl {
                *out.entry(mode).or_default() += 1;
            }
        }
        out
    }

    /// The binaries whose TLS library was recognised, by library and how their probes fared
    /// (`mcptap_tls_probes`): every library and state, zero when none.
    pub fn probe_states(&self) -> BTreeMap<(&'static str, &'static str), u64> {
        let mut out = BTreeMap::new();
        for lib in LIBRARIES {
            for state in [ProbeState::Probed, ProbeState::Failed] {
                out.insert((lib.library.as_str(), state.as_str()), 0);
            }
        }
        for ((_, lib), state) in &self.outcomes {
            *out.entry((lib.as_str(), state.as_str())).or_default() += 1;
        }
        out
    }

    /// A watched process started a new program: probe it if it carries a TLS library.
    pub fn exec(&mut self, ebpf: &mut Ebpf, pid: u32) {
        self.process(ebpf, pid);
    }

    /// A TLS socket appeared in `pid`: its OpenSSL may be somewhere not probed yet.
    pub fn tls_socket(&mut self, ebpf: &mut Ebpf, pid: u32) {
        let now = std::time::Instant::now();
        if self
            .rescanned
            .get(&pid)
            .is_some_and(|t| now.duration_since(*t) < RESCAN_EVERY)
        {
            return;
        }
        self.rescanned.insert(pid, now);
        self.process(ebpf, pid);
    }

    /// A watched process exited: its own probes go (per-pid mode).
    pub fn exit(&mut self, ebpf: &mut Ebpf, pid: u32) {
        self.rescanned.remove(&pid);
        self.libraries.borrow_mut().remove(&pid);
        if let Some(files) = self.links.remove(&Owner::Pid(pid)) {
            self.detach(ebpf, files.into_values().flatten());
        }
    }

    /// Take links out of their programs and hand them to the detacher.
    fn detach(
        &self,
        ebpf: &mut Ebpf,
        links: impl IntoIterator<Item = (&'static str, UProbeLinkId)>,
    ) {
        let owned: Vec<UProbeLink> = links
            .into_iter()
            .filter_map(|(prog, link)| uprobe(ebpf, prog).ok()?.take_link(link).ok())
            .collect();
        self.detacher.send(owned);
    }

    /// Start detaching every probe: the detacher works while the agent finishes up.
    pub fn detach_all(&mut self, ebpf: &mut Ebpf) {
        let all: Vec<(&'static str, UProbeLinkId)> = std::mem::take(&mut self.links)
            .into_values()
            .flat_map(HashMap::into_values)
            .flatten()
            .collect();
        self.detach(ebpf, all);
    }

    /// The agent is stopping: hand the release of every probe to a child process that
    /// outlives the agent by the kernel's detach time, then start detaching them.
    pub fn stop(&mut self, ebpf: &mut Ebpf) {
        if !self.links.is_empty() {
            release_after_exit();
        }
        self.detach_all(ebpf);
    }

    /// Detach every probe and wait until they are all gone (before the programs are dropped,
    /// which would detach what is left one after the other).
    pub fn shutdown(&mut self, ebpf: &mut Ebpf) {
        self.detach_all(ebpf);
        self.detacher.finish();
    }

    /// Drop the probes of processes that are gone without an exit record (one that left the
    /// scope by exec).
    pub fn reap(&mut self, ebpf: &mut Ebpf) {
        self.rescanned.retain(|_, t| t.elapsed() < RESCAN_EVERY);
        self.libraries
            .borrow_mut()
            .retain(|pid, _| Path::new(&format!("/proc/{pid}")).exists());
        let gone: Vec<u32> = self
            .links
            .keys()
            .filter_map(|o| match o {
                Owner::Pid(pid) if !Path::new(&format!("/proc/{pid}")).exists() => Some(*pid),
                _ => None,
            })
            .collect();
        for pid in gone {
            self.exit(ebpf, pid);
        }
    }
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe> {
    ebpf.program_mut(name)
        .with_context(|| format!("{name} program missing"))?
        .try_into()
        .with_context(|| format!("{name} is not a uprobe program"))
}
