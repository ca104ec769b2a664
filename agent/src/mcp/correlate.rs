//! Correlation: requests meet their responses by id within a session, and the two views of
//! each message (the sender's write and the receiver's read) meet each other.
//!
//! When both processes are watched every message is seen twice. The two views are matched by
//! a hash of the message bytes, so that one exchange yields one record carrying both sides'
//! timings: the client's (request sent → response received) and the server's (request received
//! → response sent). A record is emitted once every view that can arrive has arrived, or after
//! a grace period; a view arriving after its exchange was emitted is recognised and dropped,
//! never turned into a second exchange.

use std::borrow::Borrow;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};

use super::message::{Id, Kind, Message, Target};
use super::transport::route::{Addrs, Side, other};

/// One view's slot in an exchange: when that side sent or received the message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Times {
    /// The sender's time (entry of its first write).
    pub sent: Option<u64>,
    /// The receiver's time (exit of its last read).
    pub received: Option<u64>,
}

impl Times {
    fn get(&self, viewer_is_sender: bool) -> Option<u64> {
        if viewer_is_sender {
            self.sent
        } else {
            self.received
        }
    }

    fn slot(&mut self, viewer_is_sender: bool) -> &mut Option<u64> {
        if viewer_is_sender {
            &mut self.sent
        } else {
            &mut self.received
        }
    }
}

/// What the response said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Result or error.
    pub kind: Kind,
    /// `isError` of a result.
    pub is_error: bool,
    /// Error code.
    pub error_code: Option<i64>,
    /// Hash of its bytes.
    pub hash: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// Status of the HTTP response that carried it.
    pub http_status: Option<u16>,
    /// JSON-encoded size of a tool result's text (token estimate).
    pub text_bytes: Option<u64>,
    /// JSON-encoded size of a resource read's contents.
    pub contents_bytes: Option<u64>,
    /// The result, with `--payloads`.
    pub result: Option<String>,
}

/// What is worked out about a request when it is first seen.
#[derive(Clone, Debug, Default)]
pub struct Derived {
    /// Argument checks against the advertised tools.
    pub check: super::derive::ArgCheck,
    /// Id of the latest identical earlier call (or read) in the session.
    pub repeat_of: Option<String>,
    /// Arguments, with `--payloads`.
    pub arguments: Option<String>,
    /// Canonical hash of a tool call's arguments (what a model's tool call is matched by).
    pub args_hash: Option<u64>,
    /// Trace context from `_meta`.
    pub traceparent: Option<String>,
    /// Trace state from `_meta`.
    pub tracestate: Option<String>,
    /// A `call_timeout` event was emitted for it.
    pub timeout_reported: bool,
    /// What the security rules found in the request and its response, their session,
    /// server, method and process filled in when the exchange is reported.
    pub findings: Vec<Found>,
}

/// A finding in a request or its response.
#[derive(Clone, Debug)]
pub struct Found {
    /// The finding, as far as the message alone says.
    pub finding: crate::signal::security::Finding,
    /// It is in the response (sent by the side that did not send the request).
    pub in_response: bool,
}

/// A request on its way to a record.
#[derive(Clone, Debug)]
pub struct Pending {
    /// Id.
    pub id: Id,
    /// Method.
    pub method: String,
    /// What it is about.
    pub target: Target<'static>,
    /// Side that sent the request.
    pub requester: Side,
    /// Hash of the request bytes.
    pub req_hash: u64,
    /// Size of the request.
    pub req_bytes: u64,
    /// Request views.
    pub req: Times,
    /// Response views.
    pub resp: Times,
    /// The response, once seen.
    pub response: Option<Response>,
    /// When the requester cancelled it.
    pub cancelled_ns: Option<u64>,
    /// When a side of the session exited with this still open.
    pub abandoned_ns: Option<u64>,
    /// When the response was first seen.
    pub response_seen_ns: Option<u64>,
    /// Addresses of the connection that carried the request (network transports).
    pub addrs: Option<Addrs>,
    /// What was worked out about it.
    pub derived: Derived,
}

impl Pending {
    /// Earliest time the request was seen by anyone.
    pub fn first_seen(&self) -> u64 {
        match (self.req.sent, self.req.received) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(0),
        }
    }
}

/// What [`Correlator::request`] and [`Correlator::response`] made of a view.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new exchange.
    New,
    /// The other view of a message already known.
    Twin,
    /// A view of a message whose exchange was already reported.
    Late,
    /// A new request reusing the id of one still open.
    DuplicateId,
    /// A response no request is known for (held a while in case its request is late).
    Orphan,
}

#[derive(Clone, Debug)]
struct Done {
    requester: Side,
    id: Id,
    req_hash: u64,
    resp_hash: Option<u64>,
    /// Views of the request and response still allowed to arrive late.
    req: Times,
    resp: Times,
}

/// One view of one message, as correlation needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sighting {
    /// Side that sent the message.
    pub sender: Side,
    /// Whether the view is the sender's own (its write) rather than the receiver's read.
    pub viewer_is_sender: bool,
    /// When that side sent or received it (monotonic ns).
    pub ts: u64,
    /// Hash of the message bytes: what pairs the two views.
    pub hash: u64,
    /// Bytes it took on the wire.
    pub bytes: u64,
}

/// A response waiting for its request.
#[derive(Clone, Debug)]
pub struct Orphan {
    /// How it was seen (its sender is the responder).
    pub seen: Sighting,
    /// The response.
    pub msg: Message<'static>,
    /// When it arrived.
    pub since: u64,
    /// Status of the HTTP response that carried it.
    pub http_status: Option<u16>,
}

/// An exchange's key, (requester, id), with the id borrowed from a view's frame: the maps,
/// keyed by `(Side, Id)`, are searched with it without copying the id (most views look an
/// exchange up and keep nothing).
pub type KeyRef<'a> = (Side, &'a str);

/// A key the maps can be searched by: theirs, or a [`KeyRef`].
trait AsKey {
    fn key(&self) -> KeyRef<'_>;
}

impl AsKey for (Side, Id) {
    fn key(&self) -> KeyRef<'_> {
        (self.0, &self.1.0)
    }
}

impl AsKey for KeyRef<'_> {
    fn key(&self) -> KeyRef<'_> {
        *self
    }
}

// Hashes and compares as the owned key does (an `Arc<str>` hashes as its `str`).
impl<'a> Borrow<dyn AsKey + 'a> for (Side, Id) {
    fn borrow(&self) -> &(dyn AsKey + 'a) {
        self
    }
}

impl Hash for dyn AsKey + '_ {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.key().hash(h)
    }
}

impl PartialEq for dyn AsKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for dyn AsKey + '_ {}

/// `key` as the maps are searched by.
fn by<'a>(key: &'a KeyRef<'a>) -> &'a (dyn AsKey + 'a) {
    key
}

/// Completed exchanges remembered per session to absorb late views.
const RECENT: usize = 512;
/// Open requests reusing one id at most (a correct client reuses none): past it the oldest
/// ends at once as `no_response`, so that a flood of one id costs no more per message.
pub const MAX_SAME_ID: usize = 64;
/// Responses held per session waiting for their request; past it the oldest is reported as an
/// orphan at once.
pub const MAX_ORPHANS: usize = 1024;

/// Request/response state of one session.
#[derive(Default, Debug)]
pub struct Correlator {
    /// Open exchanges by (requester side, id), oldest first.
    pub open: crate::FastMap<(Side, Id), VecDeque<Pending>>,
    recent: VecDeque<Done>,
    /// How many entries of `recent` each (requester, id) has: most views have none and skip
    /// the scan of `recent`.
    recent_keys: crate::FastMap<(Side, Id), u32>,
    /// Responses waiting for a late request view, by (responder, id).
    orphans: crate::FastMap<(Side, Id), VecDeque<Orphan>>,
    /// Orphans in arrival order, for expiry and the cap (adopted ones leave their keys
    /// behind, skipped and compacted).
    orphan_order: VecDeque<(Side, Id)>,
    /// Orphans held.
    orphans_held: usize,
    /// Orphans pushed out by [`MAX_ORPHANS`], to report now.
    orphans_over: Vec<Orphan>,
    /// Exchanges pushed out by [`MAX_SAME_ID`], to report now.
    evicted: Vec<Pending>,
}

impl Correlator {
    /// A request view.
    pub fn request(&mut self, seen: Sighting, msg: &Message<'_>, addrs: Option<&Addrs>) -> Outcome {
        let Sighting {
            sender,
            viewer_is_sender,
            ts,
            hash,
            bytes,
        } = seen;
        let id = msg.id.as_deref().expect("requests have ids");
        let found = (sender, id);
        // The second view of a request, the commonest case, costs no copy of its id.
        if let Some(p) = self.open.get_mut(by(&found)).and_then(|list| {
            list.iter_mut()
                .find(|p| p.req_hash == hash && p.req.get(viewer_is_sender).is_none())
        }) {
            *p.req.slot(viewer_is_sender) = Some(ts);
            return Outcome::Twin;
        }
        if self.recent_keys.contains_key(by(&found))
            && let Some(d) = self.recent.iter_mut().find(|d| {
                d.requester == sender
                    && *d.id.0 == *id
                    && d.req_hash == hash
                    && d.req.get(viewer_is_sender).is_none()
            })
        {
            *d.req.slot(viewer_is_sender) = Some(ts);
            return Outcome::Late;
        }
        let id = Id::from(id);
        // Nearly every id has one exchange: room for one, not the default four.
        let list = self
            .open
            .entry((sender, id.clone()))
            .or_insert_with(|| VecDeque::with_capacity(1));
        let outcome = if list.is_empty() {
            Outcome::New
        } else {
            Outcome::DuplicateId
        };
        if list.len() >= MAX_SAME_ID
            && let Some(oldest) = list.pop_front()
        {
            self.evicted.push(oldest);
        }
        let mut p = Pending {
            id: id.clone(),
            method: String::from(msg.method.as_deref().unwrap_or_default()),
            target: msg.target.to_owned(),
            requester: sender,
            req_hash: hash,
            req_bytes: bytes,
            req: Times::default(),
            resp: Times::default(),
            response: None,
            cancelled_ns: None,
            abandoned_ns: None,
            response_seen_ns: None,
            addrs: addrs.cloned(),
            derived: Derived::default(),
        };
        *p.req.slot(viewer_is_sender) = Some(ts);
        list.push_back(p);
        // A response that arrived before this request view belongs to it.
        let adopted = self
            .orphans
            .remove(by(&(other(sender), &*id.0)))
            .unwrap_or_default();
        self.orphans_held -= adopted.len();
        for o in adopted {
            self.response(o.seen, &o.msg, o.since, o.http_status);
        }
        outcome
    }

    /// A response (result or error) view, arriving at `now`; `http_status` is that of the
    /// HTTP response that carried it.
    pub fn response(
        &mut self,
        seen: Sighting,
        msg: &Message<'_>,
        now: u64,
        http_status: Option<u16>,
    ) -> Outcome {
        let Sighting {
            sender,
            viewer_is_sender,
            ts,
            hash,
            bytes,
        } = seen;
        let Some(id) = msg.id.as_deref() else {
            return Outcome::Orphan;
        };
        let requester = other(sender);
        let found = (requester, id);
        if let Some(list) = self.open.get_mut(by(&found))
            && let Some(p) = list.iter_mut().find(|p| {
                p.resp.get(viewer_is_sender).is_none()
                    && p.response.as_ref().is_none_or(|r| r.hash == hash)
            })
        {
            let outcome = if p.response.is_some() {
                Outcome::Twin
            } else {
                Outcome::New
            };
            *p.resp.slot(viewer_is_sender) = Some(ts);
            if p.response.is_none() {
                p.response = Some(Response {
                    kind: msg.kind,
                    is_error: msg.is_error,
                    error_code: msg.error_code,
                    hash,
                    bytes,
                    http_status,
                    text_bytes: msg.result_text_bytes,
                    contents_bytes: msg.contents_bytes,
                    result: msg.result.as_deref().map(String::from),
                });
                p.response_seen_ns = Some(now);
            }
            return outcome;
        }
        if self.recent_keys.contains_key(by(&found))
            && let Some(d) = self.recent.iter_mut().find(|d| {
                d.requester == requester
                    && *d.id.0 == *id
                    && d.resp_hash.is_none_or(|h| h == hash)
                    && d.resp.get(viewer_is_sender).is_none()
            })
        {
            *d.resp.slot(viewer_is_sender) = Some(ts);
            return Outcome::Late;
        }
        self.hold_orphan(Orphan {
            seen,
            msg: msg.clone().into_owned(),
            since: now,
            http_status,
        });
        Outcome::Orphan
    }

    fn hold_orphan(&mut self, o: Orphan) {
        let key = (o.seen.sender, o.msg.id().expect("responses with ids only"));
        if self.orphans_held >= MAX_ORPHANS
            && let Some(oldest) = self.pop_oldest_orphan()
        {
            self.orphans_over.push(oldest);
        }
        if self.orphan_order.len() > 2 * MAX_ORPHANS {
            // Mostly keys of adopted orphans: rebuild the order from what is held.
            let mut held: Vec<(u64, (Side, Id))> = self
                .orphans
                .iter()
                .flat_map(|(k, l)| l.iter().map(move |o| (o.since, k.clone())))
                .collect();
            held.sort_by_key(|(t, _)| *t);
            self.orphan_order = held.into_iter().map(|(_, k)| k).collect();
        }
        (self.orphans.entry(key.clone()))
            .or_insert_with(|| VecDeque::with_capacity(1))
            .push_back(o);
        self.orphan_order.push_back(key);
        self.orphans_held += 1;
    }

    /// The oldest orphan still held (adopted ones leave stale keys in the order, skipped).
    fn pop_oldest_orphan(&mut self) -> Option<Orphan> {
        while let Some(key) = self.orphan_order.pop_front() {
            let Some(list) = self.orphans.get_mut(&key) else {
                continue;
            };
            let o = list.pop_front();
            if list.is_empty() {
                self.orphans.remove(&key);
            }
            if o.is_some() {
                self.orphans_held -= 1;
                return o;
            }
        }
        None
    }

    /// Orphans held.
    pub fn orphan_count(&self) -> usize {
        self.orphans_held
    }

    /// Exchanges pushed out by [`MAX_SAME_ID`] since the last call: they end as
    /// `no_response`.
    pub fn take_evicted(&mut self) -> Vec<Pending> {
        std::mem::take(&mut self.evicted)
    }

    /// The requester cancelled `id`.
    pub fn cancel(&mut self, requester: Side, id: &str, ts: u64) {
        if let Some(list) = self.open.get_mut(by(&(requester, id)))
            && let Some(p) = list.iter_mut().find(|p| p.cancelled_ns.is_none())
        {
            p.cancelled_ns = Some(ts);
        }
    }

    /// The newest open exchange for (`requester`, `id`): the one a request just created.
    pub fn newest_mut(&mut self, requester: Side, id: &str) -> Option<&mut Pending> {
        self.open.get_mut(by(&(requester, id)))?.back_mut()
    }

    /// The open exchange whose response (sent by the side opposite `requester`) hashed
    /// `hash`: the one a response view just answered.
    pub fn answered_mut(&mut self, requester: Side, id: &str, hash: u64) -> Option<&mut Pending> {
        self.open
            .get_mut(by(&(requester, id)))?
            .iter_mut()
            .find(|p| p.response.as_ref().is_some_and(|r| r.hash == hash))
    }

    /// Every open exchange.
    pub fn open_iter(&self) -> impl Iterator<Item = &Pending> {
        self.open.values().flatten()
    }

    /// Every open exchange, mutably.
    pub fn open_iter_mut(&mut self) -> impl Iterator<Item = &mut Pending> {
        self.open.values_mut().flatten()
    }

    /// Mark every open exchange abandoned (a side exited).
    pub fn abandon_all(&mut self, now: u64) {
        for list in self.open.values_mut() {
            for p in list.iter_mut() {
                p.abandoned_ns.get_or_insert(now);
            }
        }
    }

    /// Remove and return the exchanges `ready` says are done, remembering them as recent:
    /// among all the open ones, or `only` those of one (requester, id).
    pub fn take_ready(
        &mut self,
        only: Option<KeyRef<'_>>,
        mut ready: impl FnMut(&Pending) -> bool,
    ) -> Vec<Pending> {
        let mut out = Vec::new();
        let mut take = |list: &mut VecDeque<Pending>| {
            let mut i = 0;
            while i < list.len() {
                if ready(&list[i]) {
                    // Room for one at first, not the four a first push makes: nearly always
                    // one exchange is ready, and four `Pending`s are an allocation too large
                    // for the allocator's fast path.
                    if out.is_empty() {
                        out.reserve_exact(1);
                    }
                    out.push(list.remove(i).expect("index in range"));
                } else {
                    i += 1;
                }
            }
            !list.is_empty()
        };
        match only {
            None => self.open.retain(|_, list| take(list)),
            Some(k) => {
                if let Some(list) = self.open.get_mut(by(&k))
                    && !take(list)
                {
                    self.open.remove(by(&k));
                }
            }
        }
        for p in &out {
            if self.recent.len() == RECENT
                && let Some(d) = self.recent.pop_front()
                && let Some(n) = self.recent_keys.get_mut(&(d.requester, d.id.clone()))
            {
                *n -= 1;
                if *n == 0 {
                    self.recent_keys.remove(&(d.requester, d.id));
                }
            }
            *self
                .recent_keys
                .entry((p.requester, p.id.clone()))
                .or_default() += 1;
            // Most sessions have one exchange: room for one, not the four a first push makes
            // (the ring grows on demand, to `RECENT`).
            if self.recent.capacity() == 0 {
                self.recent.reserve_exact(1);
            }
            self.recent.push_back(Done {
                requester: p.requester,
                id: p.id.clone(),
                req_hash: p.req_hash,
                resp_hash: p.response.as_ref().map(|r| r.hash),
                req: p.req,
                resp: p.resp,
            });
        }
        out.sort_by_key(|p| p.first_seen());
        out
    }

    /// Remove orphans older than `grace` before `now`, and those pushed out by the cap, and
    /// return them.
    pub fn expire_orphans(&mut self, now: u64, grace: u64) -> Vec<Orphan> {
        let mut gone = std::mem::take(&mut self.orphans_over);
        while let Some(key) = self.orphan_order.front() {
            let Some(list) = self.orphans.get(key) else {
                self.orphan_order.pop_front();
                continue;
            };
            if list
                .front()
                .is_some_and(|o| now.saturating_sub(o.since) < grace)
            {
                break;
            }
            gone.extend(self.pop_oldest_orphan());
        }
        gone
    }

    /// Open exchanges.
    pub fn open_count(&self) -> usize {
        self.open.values().map(VecDeque::len).sum()
    }

    /// Give back the tables' room when they are empty: an idle session holds no space for
    /// the exchanges, orphans and evictions it had. (On a tick, not when a table empties, so
    /// that a busy session does not allocate its tables again for every exchange.)
    pub fn release_spare(&mut self) {
        if self.open.is_empty() {
            self.open.shrink_to_fit();
        }
        if self.orphans.is_empty() {
            self.orphans.shrink_to_fit();
        }
        if self.orphan_order.is_empty() {
            self.orphan_order.shrink_to_fit();
        }
        if self.orphans_over.is_empty() {
            self.orphans_over.shrink_to_fit();
        }
        if self.evicted.is_empty() {
            self.evicted.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::message::{Parsed, parse};

    fn msg(s: &str) -> Message<'_> {
        match parse(s.as_bytes()).unwrap() {
            Parsed::One(m) => m,
            _ => unreachable!(),
        }
    }

    fn at(sender: Side, viewer_is_sender: bool, ts: u64, hash: u64, bytes: u64) -> Sighting {
        Sighting {
            sender,
            viewer_is_sender,
            ts,
            hash,
            bytes,
        }
    }

    const REQ: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#;
    const RESP: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#;

    #[test]
    fn four_views_make_one_exchange_with_both_timings() {
        let mut c = Correlator::default();
        let (req, resp) = (msg(REQ), msg(RESP));
        assert_eq!(c.request(at(0, true, 100, 7, 70), &req, None), Outcome::New);
        assert_eq!(
            c.request(at(0, false, 110, 7, 70), &req, None),
            Outcome::Twin
        );
        assert_eq!(
            c.response(at(1, true, 150, 9, 40), &resp, 150, None),
            Outcome::New
        );
        assert_eq!(
            c.response(at(1, false, 160, 9, 40), &resp, 160, None),
            Outcome::Twin
        );
        let done = c.take_ready(None, |_| true);
        assert_eq!(done.len(), 1);
        let p = &done[0];
        assert_eq!(
            (p.req.sent, p.req.received, p.resp.sent, p.resp.received),
            (Some(100), Some(110), Some(150), Some(160))
        );
        // A straggler of an emitted exchange is late, not a new exchange.
        assert_eq!(c.open_count(), 0);
    }

    #[test]
    fn late_views_after_emission_are_absorbed() {
        let mut c = Correlator::default();
        let (req, resp) = (msg(REQ), msg(RESP));
        c.request(at(0, false, 110, 7, 70), &req, None);
        c.response(at(1, true, 150, 9, 40), &resp, 150, None);
        assert_eq!(c.take_ready(None, |_| true).len(), 1);
        assert_eq!(
            c.request(at(0, true, 100, 7, 70), &req, None),
            Outcome::Late
        );
        assert_eq!(
            c.response(at(1, false, 160, 9, 40), &resp, 200, None),
            Outcome::Late
        );
        assert_eq!(c.open_count(), 0);
        // The same id with new content is a new exchange.
        assert_eq!(c.request(at(0, true, 300, 8, 70), &req, None), Outcome::New);
    }

    #[test]
    fn orphan_response_is_adopted_by_a_late_request() {
        let mut c = Correlator::default();
        let (req, resp) = (msg(REQ), msg(RESP));
        assert_eq!(
            c.response(at(1, false, 160, 9, 40), &resp, 160, None),
            Outcome::Orphan
        );
        assert_eq!(c.request(at(0, true, 100, 7, 70), &req, None), Outcome::New);
        let done = c.take_ready(None, |p| p.response.is_some());
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].resp.received, Some(160));
        assert_eq!(c.orphan_count(), 0);
        // The responder's own view of it arrives after the exchange was reported: late.
        assert_eq!(
            c.response(at(1, true, 155, 9, 40), &resp, 400, None),
            Outcome::Late
        );
        // A different response nobody asked for is an orphan, and expires.
        assert_eq!(
            c.response(at(1, true, 400, 10, 40), &resp, 400, None),
            Outcome::Orphan
        );
        assert!(c.expire_orphans(500, 1000).is_empty());
        assert_eq!(c.expire_orphans(1400, 1000).len(), 1);
    }

    #[test]
    fn floods_of_one_id_and_of_orphans_stay_bounded() {
        let mut c = Correlator::default();
        let req = msg(REQ);
        for i in 0..(MAX_SAME_ID as u64 + 10) {
            c.request(at(0, true, 100 + i, 1000 + i, 70), &req, None);
        }
        assert_eq!(c.open_count(), MAX_SAME_ID);
        let gone = c.take_evicted();
        assert_eq!(gone.len(), 10);
        assert_eq!(gone[0].req_hash, 1000, "the oldest go first");
        assert!(c.take_evicted().is_empty());

        let mut c = Correlator::default();
        let resp = msg(RESP);
        for i in 0..(MAX_ORPHANS as u64 + 5) {
            c.response(at(1, true, i, 2000 + i, 40), &resp, i, None);
        }
        assert_eq!(c.orphan_count(), MAX_ORPHANS);
        // The five pushed out are reported at once; the rest when they expire.
        assert_eq!(c.expire_orphans(10, 1_000_000).len(), 5);
        assert_eq!(c.expire_orphans(u64::MAX, 1_000_000).len(), MAX_ORPHANS);
        assert_eq!(c.orphan_count(), 0);
    }

    #[test]
    fn duplicate_ids_are_both_kept_and_answered_in_order() {
        let mut c = Correlator::default();
        let req = msg(REQ);
        assert_eq!(c.request(at(0, true, 100, 7, 70), &req, None), Outcome::New);
        assert_eq!(
            c.request(at(0, true, 101, 8, 71), &req, None),
            Outcome::DuplicateId
        );
        c.response(at(1, true, 150, 9, 40), &msg(RESP), 150, None);
        let done = c.take_ready(None, |p| p.response.is_some());
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].req_hash, 7);
        assert_eq!(c.open_count(), 1);
    }
}
