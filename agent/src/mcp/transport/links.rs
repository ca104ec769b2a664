//! Which process is at each end of each link, and which session each link is in: a stdio
//! session is the pair of one-way links (two pipes, or two socketpairs) between one client and
//! one server, and the far end of a link is learned from the other side's own records when it
//! is watched, or from `/proc/*/fd` otherwise.

use super::route::{LinkEnd, SessionKey, View};
use crate::capture::FdKind;
use crate::capture::host::{HolderKind, Host};

/// Learns which process is at each end of each link, and which session each link is in.
#[derive(Default)]
pub struct Links {
    ends: crate::FastMap<LinkEnd, u32>,
    sessions: crate::FastMap<(FdKind, u64, u64), SessionKey>,
    /// Links resolved while their far end was unknown, with the session they were given.
    provisional: crate::FastMap<(FdKind, u64, u64), SessionKey>,
    /// Sessions given under a provisional key and now known by their real one: (old, new).
    renames: Vec<(SessionKey, SessionKey)>,
    scanned: crate::FastMap<LinkEnd, u32>,
    /// Entries forgotten because the cap was reached.
    pub evicted: u64,
}

impl Links {
    /// The session a view belongs to, and the side its process is on.
    pub fn resolve(&mut self, host: &mut dyn Host, v: &View) -> SessionKey {
        self.ends.insert(v.own_end(), v.tgid);
        let link = v.link();
        if let Some(key) = self.sessions.get(&link) {
            return key.clone();
        }
        let peer = v
            .far_end()
            .and_then(|far| self.process_at(host, far, v.tgid));
        let p = peer.unwrap_or(0);
        let key = SessionKey::Procs {
            lo: v.tgid.min(p),
            hi: v.tgid.max(p),
        };
        // Pin the link to the session only once its peer is known; until then a later
        // message may still find it, and the session then moves to its real key.
        if peer.is_some() {
            // Every link of this process filed without its far end moves with it.
            let temp = SessionKey::Procs { lo: 0, hi: v.tgid };
            let before = self.provisional.len();
            if before > 0 {
                self.provisional.retain(|_, k| *k != temp);
                if self.provisional.len() < before {
                    self.renames.push((temp, key.clone()));
                }
            }
            self.sessions.insert(link, key.clone());
        } else {
            self.provisional.insert(link, key.clone());
        }
        key
    }

    /// Sessions that were given a provisional key (the far end unknown) and are now known by
    /// their real one, since the last call: (old, new).
    pub fn take_renames(&mut self) -> Vec<(SessionKey, SessionKey)> {
        std::mem::take(&mut self.renames)
    }

    fn process_at(&mut self, host: &mut dyn Host, end: LinkEnd, not: u32) -> Option<u32> {
        if let Some(&p) = self.ends.get(&end)
            && p != not
        {
            return Some(p);
        }
        if let Some(&p) = self.scanned.get(&end) {
            return Some(p);
        }
        let (kind, inode, writes) = match end {
            LinkEnd::PipeRead(i) => (HolderKind::Pipe, i, Some(false)),
            LinkEnd::PipeWrite(i) => (HolderKind::Pipe, i, Some(true)),
            LinkEnd::Socket(i) => (HolderKind::Socket, i, None),
        };
        let found = host
            .holders(kind, inode)
            .into_iter()
            .filter(|h| h.pid != not && writes.is_none_or(|w| h.writes == w))
            .map(|h| h.pid)
            .min();
        if let Some(p) = found {
            self.scanned.insert(end, p);
        }
        found
    }

    /// Forget what involves `pid`.
    pub fn forget_process(&mut self, pid: u32) {
        self.ends.retain(|_, p| *p != pid);
        self.scanned.retain(|_, p| *p != pid);
        let other =
            |k: &SessionKey| !matches!(k, SessionKey::Procs { lo, hi } if *lo == pid || *hi == pid);
        self.sessions.retain(|_, k| other(k));
        self.provisional.retain(|_, k| other(k));
    }

    /// Keep only what involves processes `named` says are in a session (counted).
    pub fn retain_processes(&mut self, named: impl Fn(u32) -> bool) {
        let before = self.len();
        self.ends.retain(|_, p| named(*p));
        self.scanned.retain(|_, p| named(*p));
        let needed = |k: &SessionKey| !matches!(k, SessionKey::Procs { lo, hi } if !named(*lo) && !named(*hi));
        self.sessions.retain(|_, k| needed(k));
        self.provisional.retain(|_, k| needed(k));
        self.evicted += (before - self.len()) as u64;
    }

    /// Hold the table to `cap`: first what involves no process in a session (`named`), then,
    /// if that is not enough, everything (both counted).
    pub fn collect(&mut self, named: impl Fn(u32) -> bool, cap: usize) {
        if self.len() <= cap {
            return;
        }
        self.retain_processes(named);
        if self.len() > cap {
            log::warn!(
                "{} link entries held (cap {cap}): forgetting them all; links are learned again",
                self.len()
            );
            self.clear();
        }
    }

    /// Forget everything (counted): links are learned again from the next views.
    pub fn clear(&mut self) {
        self.evicted += self.len() as u64;
        self.ends.clear();
        self.sessions.clear();
        self.provisional.clear();
        self.scanned.clear();
    }

    /// Entries held (for memory accounting).
    pub fn len(&self) -> usize {
        self.ends.len() + self.sessions.len() + self.provisional.len() + self.scanned.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
