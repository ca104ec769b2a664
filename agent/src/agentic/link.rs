//! The link: a tool call a model asked for → the MCP `tools/call` its process made for it →
//! the request that carried the result back to the model.
//!
//! An MCP call is matched to the oldest unlinked tool call of its process whose name is the
//! MCP tool's, allowing the hosts' naming (`mcp__SERVER__TOOL`, `SERVER__TOOL`, the Responses
//! API's namespaces), and preferring one whose canonical arguments are the same; a looser
//! suffix (`SERVER_TOOL`, `SERVER.TOOL`, `SERVER-TOOL`, `SERVER/TOOL`) is taken only with the
//! same arguments. A result goes back to the tool call by its id (by name and order where the
//! API has no ids). Nothing is forced: a tool call no MCP call matched was served by the host
//! itself, and an MCP call no tool call asked for is counted as such.

use std::collections::VecDeque;
use std::sync::Arc;

use super::{Agent, Held, Stats};
use crate::signal::trace_ids;
use crate::signal::{Exchange, ExchangeRef, LlmCall, RawJson, Status};

/// MCP tool calls remembered per process while no model call has asked for them.
const MAX_UNMATCHED: usize = 64;

/// What became of a tool call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not known (yet).
    Unknown,
    /// It succeeded.
    Ok,
    /// It failed (an error, a tool error, no answer, or a hallucinated tool).
    Failed,
}

/// The MCP exchange a tool call became.
#[derive(Clone, Debug)]
pub struct Link {
    session: Option<String>,
    id: String,
    /// The MCP tool's own name.
    tool: String,
    /// The MCP server's name (or process).
    server: String,
    /// When the exchange ended (wall-clock ns).
    end_ns: u64,
}

/// One tool call a model asked for.
pub struct CallState {
    /// The task it belongs to.
    pub task: Arc<str>,
    trace: u128,
    turn: u32,
    /// Its place among the reply's tool calls.
    index: usize,
    /// The name the model wrote (a Responses API namespace names the server apart, so the
    /// name is the MCP tool's own).
    name: String,
    args_hash: Option<u64>,
    /// The start of the model call that asked for it (wall-clock ns).
    asked_ns: u64,
    /// The end of that call's reply.
    reply_end_ns: u64,
    hallucinated: bool,
    outcome: Outcome,
    link: Option<Link>,
    /// When a request first carried its result back.
    carried_ns: Option<u64>,
    /// When its task ended or its process exited: it will not run after that.
    pub settle_ns: Option<u64>,
}

impl CallState {
    fn failed(&self) -> bool {
        self.hallucinated || self.outcome == Outcome::Failed
    }

    /// Whether nothing more is to be learned of it by `now`.
    fn settled(&self, now: u64, grace: u64) -> bool {
        let after = |t: Option<u64>| t.is_some_and(|t| now >= t.saturating_add(grace));
        self.link.is_some() || self.hallucinated || after(self.carried_ns) || after(self.settle_ns)
    }
}

/// An MCP tool call no model call asked for (yet): a model's reply may still be in flight
/// when a host runs a tool it streamed.
pub struct Unmatched {
    tool: String,
    args_hash: Option<u64>,
    link: Link,
    outcome: Outcome,
    /// When it was seen (wall-clock ns).
    seen_ns: u64,
}

/// How well a tool call's name (and arguments) match an MCP call of `tool`: lower is better;
/// `None` when they do not match.
fn name_match(c: &CallState, tool: &str, args: Option<u64>) -> Option<u8> {
    let same_args = c.args_hash.is_some() && c.args_hash == args;
    let suffixed = |sep: &str| {
        c.name.len() > tool.len() + sep.len()
            && c.name.ends_with(tool)
            && c.name[..c.name.len() - tool.len()].ends_with(sep)
    };
    let score = if c.name == tool {
        0
    } else if suffixed("__") {
        2
    } else if same_args && ["_", ".", "-", "/"].iter().any(|s| suffixed(s)) {
        4
    } else {
        return None;
    };
    Some(score + u8::from(!same_args))
}

fn outcome_of(x: &Exchange) -> Outcome {
    if x.status == Status::Ok {
        Outcome::Ok
    } else {
        Outcome::Failed
    }
}

fn link_of(x: &Exchange) -> Link {
    let server = x
        .server
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| x.server.comm.clone());
    let end_ns = x.ts_ns + x.timing.duration_ms.map_or(0, |d| (d * 1e6) as u64);
    Link {
        session: x.session.clone(),
        id: x.id.clone(),
        tool: x.tool.clone().unwrap_or_default(),
        server,
        end_ns,
    }
}

/// Link `x` to the best tool call of `agent` waiting for one; false when none matches.
pub(super) fn link_exchange(agent: &mut Agent, x: &mut Exchange, stats: &mut Stats) -> bool {
    let tool = x.tool.as_deref().unwrap_or("");
    let best = agent
        .calls
        .iter()
        .filter(|(_, c)| c.link.is_none() && !c.hallucinated && c.asked_ns <= x.ts_ns)
        .filter_map(|(slot, c)| {
            name_match(c, tool, x.trace.args_hash).map(|s| (s, c.asked_ns, *slot))
        })
        .min();
    let Some((_, _, slot)) = best else {
        return false;
    };
    let c = agent.calls.get_mut(&slot).expect("found");
    c.outcome = outcome_of(x);
    c.link = Some(link_of(x));
    x.agent.task = Some(c.task.to_string());
    x.agent.turn = Some(c.turn);
    let span = trace_ids::span(c.trace, trace_ids::tool_part(c.turn, c.index));
    x.trace.agent_parent = Some(trace_ids::traceparent(c.trace, span));
    stats.links += 1;
    true
}

/// Keep an MCP call no tool call matched, in case the model call that asked for it is still
/// on its way; past the cap the oldest counts as unrequested.
pub(super) fn remember_unmatched(agent: &mut Agent, x: &Exchange, grace: u64, stats: &mut Stats) {
    agent.recent.push_back(Unmatched {
        tool: x.tool.clone().unwrap_or_default(),
        args_hash: x.trace.args_hash,
        link: link_of(x),
        outcome: outcome_of(x),
        seen_ns: x.ts_ns,
    });
    if agent.recent.len() > MAX_UNMATCHED {
        agent.recent.pop_front();
        stats.unrequested += 1;
    }
    age_unmatched(agent, x.ts_ns, grace, stats);
}

/// MCP calls that waited past the grace for a model call to ask for them were not asked
/// for.
pub(super) fn age_unmatched(agent: &mut Agent, now: u64, grace: u64, stats: &mut Stats) {
    while agent
        .recent
        .front()
        .is_some_and(|u| now.saturating_sub(u.seen_ns) > grace)
    {
        agent.recent.pop_front();
        stats.unrequested += 1;
    }
}

/// Make room for one more tool call in `agent`'s table.
fn make_room(agent: &mut Agent, max: usize, stats: &mut Stats) {
    while agent.calls.len() >= max.max(1) {
        let Some(old) = agent.order.pop_front() else {
            break;
        };
        if agent.calls.remove(&old).is_some() {
            stats.evicted_calls += 1;
        }
    }
}

/// The tool calls `call` asks for, in thread `ti` of `agent`: remembered for their MCP
/// calls; returns their slots. MCP calls seen just before (a host that ran a streamed tool
/// call early) are linked at once.
pub(super) fn asked(
    agent: &mut Agent,
    ti: usize,
    call: &LlmCall,
    reply_end_ns: u64,
    max: usize,
    stats: &mut Stats,
) -> Vec<u64> {
    let task = agent.threads[ti].task.as_ref().expect("a task runs");
    let (task_id, trace, turn) = (task.id.clone(), task.trace, call.turn.unwrap_or(0));
    let mut slots = Vec::with_capacity(call.tool_calls.len());
    if !call.tool_calls.is_empty() {
        agent.threads[ti].last_calls.clear();
    }
    for (index, tc) in call.tool_calls.iter().enumerate() {
        make_room(agent, max, stats);
        let slot = agent.next_slot;
        agent.next_slot += 1;
        let mut c = CallState {
            task: task_id.clone(),
            trace,
            turn,
            index,
            name: tc.name.clone(),
            args_hash: tc.args_hash,
            asked_ns: call.ts_ns,
            reply_end_ns,
            hallucinated: tc.hallucinated,
            outcome: if tc.hallucinated {
                Outcome::Failed
            } else {
                Outcome::Unknown
            },
            link: None,
            carried_ns: None,
            settle_ns: None,
        };
        if !c.hallucinated {
            early_link(&mut agent.recent, &mut c, stats);
        }
        let thread = &mut agent.threads[ti];
        if let Some(id) = &tc.id {
            // Held to the process's cap of calls: past it the oldest calls are gone anyway.
            if thread.by_id.len() >= max {
                thread.by_id.retain(|_, s| *s + max as u64 > slot);
            }
            thread.by_id.insert(id.clone(), slot);
        }
        thread.last_calls.push(slot);
        agent.calls.insert(slot, c);
        agent.order.push_back(slot);
        slots.push(slot);
    }
    slots
}

/// A tool call matched to an MCP call already seen (whose record went out without it).
fn early_link(recent: &mut VecDeque<Unmatched>, c: &mut CallState, stats: &mut Stats) {
    let best = recent
        .iter()
        .enumerate()
        .filter(|(_, u)| u.seen_ns >= c.asked_ns)
        .filter_map(|(i, u)| name_match(c, &u.tool, u.args_hash).map(|s| (s, i)))
        .min();
    if let Some((_, i)) = best {
        let u = recent.remove(i).expect("found");
        c.outcome = u.outcome;
        c.link = Some(u.link);
        stats.links += 1;
    }
}

/// The results `call` carries back for the first time (`new`, indexes into its results):
/// each matched to the tool call it answers in thread `ti`, by id, or by name and order;
/// returns the pairs. What the API's flag says is learned.
pub(super) fn carried(
    agent: &mut Agent,
    ti: usize,
    call: &LlmCall,
    new: &[usize],
    at: u64,
) -> Vec<(usize, Option<u64>)> {
    let mut taken: Vec<u64> = Vec::new();
    let mut out = Vec::with_capacity(new.len());
    for &ri in new {
        let r = &call.facts.results[ri];
        let thread = &agent.threads[ti];
        let slot = match &r.call_id {
            Some(id) => thread.by_id.get(id).copied(),
            None => thread.last_calls.iter().copied().find(|s| {
                !taken.contains(s)
                    && agent
                        .calls
                        .get(s)
                        .is_some_and(|c| Some(&c.name) == r.name.as_ref())
            }),
        };
        if let Some(s) = slot
            && let Some(c) = agent.calls.get_mut(&s)
        {
            taken.push(s);
            c.carried_ns.get_or_insert(at);
            if c.outcome == Outcome::Unknown {
                c.outcome = match r.is_error {
                    Some(true) => Outcome::Failed,
                    Some(false) => Outcome::Ok,
                    None => Outcome::Unknown,
                };
            }
        }
        out.push((ri, slot));
    }
    out
}

/// Tokens per tool: the growth of the prompt's input from the call that asked for the tools
/// (`before`: its input, cached included, and its output) to `call`, less what the model
/// wrote itself, shared among the results `call` carries for the first time by their size.
pub(super) fn share_tokens(call: &mut LlmCall, new: &[usize], before: Option<(u64, u64)>) {
    let (Some((input0, output0)), Some(p)) = (before, call.provider) else {
        return;
    };
    let Some(input) = call.usage.total_input(p) else {
        return;
    };
    let growth = input.saturating_sub(input0).saturating_sub(output0);
    let bytes = new
        .iter()
        .map(|i| call.facts.results[*i].bytes)
        .fold(0u64, u64::saturating_add);
    if growth == 0 || bytes == 0 {
        return;
    }
    let mut left = growth;
    for (n, &i) in new.iter().enumerate() {
        let share = if n + 1 == new.len() {
            left
        } else {
            (u128::from(growth) * u128::from(call.facts.results[i].bytes) / u128::from(bytes))
                as u64
        };
        left -= share;
        if let Some(r) = call.tool_results.get_mut(i) {
            r.tokens = Some(share);
        }
    }
}

/// Whether a held record may go out at `now`: its own tool calls and those whose results it
/// carries have nothing more to learn.
pub(super) fn settled(
    h: &Held,
    calls: Option<&crate::FastMap<u64, CallState>>,
    now: u64,
    grace: u64,
) -> bool {
    let Some(calls) = calls else {
        return true;
    };
    let slots = h
        .own
        .iter()
        .chain(h.answered.iter().filter_map(|(_, s)| s.as_ref()));
    slots
        .filter_map(|s| calls.get(s))
        .all(|c| c.settled(now, grace))
}

/// What filling a record in found.
pub(super) struct Filled {
    /// Its tool calls that became MCP calls.
    pub mcp_calls: u32,
}

/// Fill a record in with what is known of its tool calls and the results it carries.
pub(super) fn fill(
    call: &mut LlmCall,
    calls: Option<&crate::FastMap<u64, CallState>>,
    own: &[u64],
    answered: &[(usize, Option<u64>)],
) -> Filled {
    let get = |s: &u64| calls.and_then(|m| m.get(s));
    let mut mcp_calls = 0;
    for (tc, c) in call.tool_calls.iter_mut().zip(own.iter().map(get)) {
        let Some(c) = c else { continue };
        let end = c
            .link
            .as_ref()
            .map(|l| l.end_ns)
            .or(c.carried_ns)
            .unwrap_or(c.reply_end_ns);
        tc.window = Some((c.reply_end_ns, end.max(c.reply_end_ns)));
        if let Some(l) = &c.link {
            mcp_calls += 1;
            tc.exchange = Some(ExchangeRef {
                session: l.session.clone(),
                id: RawJson(l.id.clone()),
            });
        }
    }
    let mut errors = 0;
    for &(ri, slot) in answered {
        let c = slot.as_ref().and_then(get);
        let Some(r) = call.tool_results.get_mut(ri) else {
            continue;
        };
        r.failed = r.is_error == Some(true) || c.is_some_and(CallState::failed);
        match c.map(|c| (c, c.link.as_ref())) {
            Some((_, Some(l))) => {
                r.tool = Some(l.tool.clone());
                r.server = Some(l.server.clone());
            }
            Some((c, None)) => r.tool = Some(c.name.clone()),
            None => {}
        }
        errors += u32::from(r.failed);
    }
    call.errors_fed_back = errors;
    let first_ok = own
        .first()
        .and_then(get)
        .is_some_and(|c| !c.hallucinated && c.outcome == Outcome::Ok);
    call.self_corrections = if first_ok { errors } else { 0 };
    Filled { mcp_calls }
}
