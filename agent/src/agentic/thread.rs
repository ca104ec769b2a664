//! Conversation threads: which earlier model call of the same process a new one continues.
//!
//! A model API is stateless (but for the Responses API's `previous_response_id`): each call
//! sends the whole conversation again. A call continues a thread when it answers a tool call
//! the thread's model asked for (by call id), when it names the thread's last response as its
//! previous one, or when its messages begin with the thread's last call's messages (compared
//! by fingerprint, message by message). The same messages again, after a call that failed,
//! are a retry. Anything else starts a thread: another task of the same process, or a side
//! request (a title, a summary).

use super::task::Task;
use crate::signal::LlmCall;

/// One conversation thread of one process.
pub(super) struct Thread {
    /// Fingerprint of its system prompt.
    pub system: u64,
    /// Fingerprints of its last call's messages.
    pub messages: Vec<u64>,
    /// Its last reply's id (the Responses API continues a thread by it).
    pub response_id: Option<String>,
    /// Its last call failed or was cut off: the same messages again are a retry.
    pub last_failed: bool,
    /// When its last call ended (wall-clock ns).
    pub last_ns: u64,
    /// The task running on it, if any (a thread whose task ended starts another when it is
    /// continued).
    pub task: Option<Task>,
    /// All input (cached included) and the output of its last call that reported usage.
    pub last_usage: Option<(u64, u64)>,
    /// Tool calls of its current task by call id: slot numbers in the process's table.
    pub by_id: crate::FastMap<String, u64>,
    /// The slots of the last reply that asked for tools, in order (results without ids are
    /// matched to them by name).
    pub last_calls: Vec<u64>,
}

impl Thread {
    /// A thread started by `call`.
    pub fn new(call: &LlmCall) -> Self {
        Thread {
            system: call.facts.system,
            messages: Vec::new(),
            response_id: None,
            last_failed: false,
            last_ns: call.ts_ns,
            task: None,
            last_usage: None,
            by_id: Default::default(),
            last_calls: Vec::new(),
        }
    }
}

/// How a call relates to a thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Relation {
    /// It continues the thread.
    Extends,
    /// It repeats the thread's last call, which failed.
    Retry,
}

/// The thread `call` continues, if any: by a tool call id it answers, by the response it
/// names as previous, then by the longest thread whose messages begin its own.
pub(super) fn find(threads: &[Thread], call: &LlmCall) -> Option<(usize, Relation)> {
    let facts = &call.facts;
    let by_result = facts.results.iter().filter_map(|r| r.call_id.as_deref());
    for id in by_result {
        // A side request that quotes the conversation under another system prompt (a
        // summary) is not the thread's next turn.
        if let Some(i) = threads
            .iter()
            .position(|t| t.system == facts.system && t.by_id.contains_key(id))
        {
            return Some((i, relation(&threads[i], call)));
        }
    }
    if let Some(prev) = facts.previous_response_id.as_deref()
        && let Some(i) = threads
            .iter()
            .position(|t| t.response_id.as_deref() == Some(prev))
    {
        return Some((i, Relation::Extends));
    }
    let mut best: Option<(usize, usize, u64)> = None;
    for (i, t) in threads.iter().enumerate() {
        let n = t.messages.len();
        let prefix = n > 0
            && t.system == facts.system
            && n <= facts.messages.len()
            && facts.messages[..n] == t.messages[..];
        // The longest prefix is the most specific; among equals, the most recent.
        if prefix && best.is_none_or(|(_, bn, bt)| (n, t.last_ns) > (bn, bt)) {
            best = Some((i, n, t.last_ns));
        }
    }
    best.map(|(i, ..)| (i, relation(&threads[i], call)))
}

fn relation(t: &Thread, call: &LlmCall) -> Relation {
    if t.last_failed
        && t.messages == call.facts.messages
        && call.facts.previous_response_id.is_none()
    {
        Relation::Retry
    } else {
        Relation::Extends
    }
}

/// The results `call` carries back for the first time on a thread whose last call had
/// `known` messages: those past them (all of them with `previous_response_id`, where the
/// request holds only what is new), none for a retry.
pub(super) fn new_results(call: &LlmCall, known: usize, relation: Option<Relation>) -> Vec<usize> {
    let facts = &call.facts;
    match relation {
        Some(Relation::Retry) => Vec::new(),
        Some(Relation::Extends) if facts.previous_response_id.is_none() => facts
            .results
            .iter()
            .enumerate()
            .filter(|(_, r)| r.message >= known)
            .map(|(i, _)| i)
            .collect(),
        _ => (0..facts.results.len()).collect(),
    }
}
