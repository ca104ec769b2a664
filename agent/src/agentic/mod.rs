//! Stage 6, the agentic layer: model calls joined to the MCP exchanges they caused.
//!
//! It sits above both MCP ([`crate::mcp`]) and the model APIs ([`crate::llm`]) and works on
//! what they report, as a transform of the signal stream: every [`LlmCall`] goes into a
//! conversation thread of its process ([`thread`]) and a task on it ([`task`]), with its turn
//! number; every tool call the model asks for waits for the MCP `tools/call` the same process
//! (or its child) makes for it ([`link`]), which then names the task and turn, and the
//! request that carries the result back to the model says whether it was an error and what
//! it cost in input tokens. A model call's record waits until what it names is known (its
//! tool calls became MCP calls, or their results went back to the model, or its task ended),
//! then goes on with its links filled in; a task is reported (`task_end`) after its last
//! call.
//!
//! Bounded: processes, threads per process, tool calls per process and held records each
//! have a cap, a gauge (`mcptap_table_entries`) and an eviction counter.

pub mod link;
pub mod task;
pub mod thread;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crate::bounded::TableStat;
use crate::capture::recording::ClockAnchor;
use crate::signal::process::Processes;
use crate::signal::{Event, Exchange, LlmCall, LlmStatus, Signal, What};
use link::{CallState, Unmatched};
use task::Task;
use thread::{Relation, Thread};

/// Settings of the layer.
#[derive(Clone, Debug)]
pub struct Config {
    /// A task with no model call for this long ends (`abandoned`, or how its last call ended).
    pub task_idle_ns: u64,
    /// How long a record waits for an MCP exchange once the tool call's result went back to
    /// the model (the exchange is reported after both its ends were seen).
    pub grace_ns: u64,
    /// No record is held longer than this.
    pub hold_max_ns: u64,
    /// Processes with agentic state at most.
    pub max_agents: usize,
    /// Conversation threads per process at most.
    pub max_threads: usize,
    /// Tool calls remembered per process at most.
    pub max_calls: usize,
    /// Model call records held at most.
    pub max_held: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            task_idle_ns: 300_000_000_000,
            grace_ns: 2_000_000_000,
            hold_max_ns: 600_000_000_000,
            max_agents: 4096,
            max_threads: 64,
            max_calls: 1024,
            max_held: 4096,
        }
    }
}

/// What the layer counted.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Model calls taken.
    pub calls: u64,
    /// Tasks started.
    pub tasks: u64,
    /// Tool calls linked to MCP exchanges.
    pub links: u64,
    /// MCP `tools/call` exchanges of a process with model calls that no tool call asked for.
    pub unrequested: u64,
    /// Processes forgotten to hold the cap.
    pub evicted_agents: u64,
    /// Threads forgotten to hold the cap (their tasks end `abandoned`).
    pub evicted_threads: u64,
    /// Tool calls forgotten to hold the cap.
    pub evicted_calls: u64,
    /// Records reported early to hold the cap.
    pub evicted_held: u64,
}

/// One process's agentic state.
struct Agent {
    threads: Vec<Thread>,
    next_task: u64,
    /// Tool calls by slot, and the slots oldest first.
    calls: crate::FastMap<u64, CallState>,
    order: VecDeque<u64>,
    next_slot: u64,
    /// MCP tool calls no model call has asked for (yet).
    recent: VecDeque<Unmatched>,
    last_ns: u64,
    /// When it exited.
    exited: Option<u64>,
}

impl Agent {
    fn new(now: u64) -> Self {
        Agent {
            threads: Vec::new(),
            next_task: 1,
            calls: Default::default(),
            order: VecDeque::new(),
            next_slot: 1,
            recent: VecDeque::new(),
            last_ns: now,
            exited: None,
        }
    }
}

/// A model call record waiting for what it names.
struct Held {
    call: Box<LlmCall>,
    pid: u32,
    /// The slots of its own tool calls, in order.
    own: Vec<u64>,
    /// Results it carries for the first time (indexes into its `tool_results`), with the
    /// slot of the tool call each answers, when known.
    answered: Vec<(usize, Option<u64>)>,
    arrived_ns: u64,
}

/// A task that ended, waiting for its records.
struct Ended {
    pid: u32,
    task: Task,
    outcome: &'static str,
}

/// The agentic layer.
pub struct Joiner {
    cfg: Config,
    clock: ClockAnchor,
    agents: crate::FastMap<u32, Agent>,
    held: BTreeMap<u64, Held>,
    next_held: u64,
    ended: Vec<Ended>,
    /// Records that went out early (past the cap of held ones), for the next release.
    spill: Vec<Signal>,
    /// Wall-clock ns, the latest seen.
    now: u64,
    /// When idle tasks were last looked for.
    last_expiry: u64,
    /// Counters.
    pub stats: Stats,
}

/// Idle tasks are looked for this often (ns).
const EXPIRE_EVERY_NS: u64 = 1_000_000_000;

impl Joiner {
    /// The layer with `cfg`; `clock` turns kernel times into wall-clock times.
    pub fn new(cfg: Config, clock: ClockAnchor) -> Self {
        Joiner {
            cfg,
            clock,
            agents: Default::default(),
            held: BTreeMap::new(),
            next_held: 1,
            ended: Vec::new(),
            spill: Vec::new(),
            now: 0,
            last_expiry: 0,
            stats: Stats::default(),
        }
    }

    /// Take the signals the stages below made, and pass them on to `out`: exchanges at once
    /// (named by task and turn when a model asked for them), model calls once what they name
    /// is known.
    pub fn take(&mut self, signals: &mut Vec<Signal>, out: &mut Vec<Signal>, procs: &Processes) {
        for s in signals.drain(..) {
            match s {
                Signal::LlmCall(call) => self.model_call(call),
                Signal::Exchange(mut x) => {
                    self.now = self.now.max(x.ts_ns);
                    self.exchange(&mut x, procs);
                    out.push(Signal::Exchange(x));
                }
                other => out.push(other),
            }
        }
        self.release(out, false);
    }

    /// Time passes (CLOCK_MONOTONIC ns): records whose links settled go out, idle tasks end
    /// (looked for once a second: a walk of every thread).
    pub fn tick(&mut self, now_mono: u64, out: &mut Vec<Signal>) {
        self.now = self.now.max(self.clock.wall_ns(now_mono));
        let due = self.now.saturating_sub(self.last_expiry) >= EXPIRE_EVERY_NS;
        if due {
            self.last_expiry = self.now;
            self.expire_tasks();
        }
        self.release(out, false);
        if due {
            self.forget_agents(false);
        }
    }

    /// A process exited: its tasks end; its tool calls settle after the grace.
    pub fn process_exit(&mut self, pid: u32, now_mono: u64) {
        let now = self.clock.wall_ns(now_mono);
        self.now = self.now.max(now);
        let Some(agent) = self.agents.get_mut(&pid) else {
            return;
        };
        agent.exited = Some(now);
        for t in &mut agent.threads {
            if let Some(task) = t.task.take() {
                let outcome = task.stopped_outcome();
                self.ended.push(Ended { pid, task, outcome });
            }
        }
        for c in agent.calls.values_mut() {
            c.settle_ns.get_or_insert(now);
        }
    }

    /// End of input: every task ends as its last call left it, every record goes out.
    pub fn finish(&mut self, out: &mut Vec<Signal>) {
        for (pid, agent) in self.agents.iter_mut() {
            for t in &mut agent.threads {
                if let Some(task) = t.task.take() {
                    let outcome = task.stopped_outcome();
                    self.ended.push(Ended {
                        pid: *pid,
                        task,
                        outcome,
                    });
                }
            }
            self.stats.unrequested += agent.recent.len() as u64;
            agent.recent.clear();
        }
        self.release(out, true);
    }

    /// The bounded tables: processes, threads, tool calls, held records.
    pub fn tables(&self) -> Vec<TableStat> {
        let threads: usize = self.agents.values().map(|a| a.threads.len()).sum();
        let calls: usize = self.agents.values().map(|a| a.calls.len()).sum();
        let c = &self.cfg;
        vec![
            TableStat::new(
                "agent_processes",
                self.agents.len(),
                c.max_agents,
                self.stats.evicted_agents,
            ),
            TableStat::new(
                "agent_threads",
                threads,
                c.max_threads.saturating_mul(c.max_agents),
                self.stats.evicted_threads,
            ),
            TableStat::new(
                "agent_tool_calls",
                calls,
                c.max_calls.saturating_mul(c.max_agents),
                self.stats.evicted_calls,
            ),
            TableStat::new(
                "agent_held_calls",
                self.held.len(),
                c.max_held,
                self.stats.evicted_held,
            ),
        ]
    }

    /// One model call: its thread, task and turn; the results it carries back; the tool
    /// calls it asks for. The record is held until they are linked.
    fn model_call(&mut self, mut call: Box<LlmCall>) {
        self.stats.calls += 1;
        let end_ns = call.ts_ns + (call.duration_ms * 1e6) as u64;
        self.now = self.now.max(end_ns);
        let Some(pid) = call.process.pid else {
            return;
        };
        self.hold_agents(pid);
        let now = self.now;
        let agent = self.agents.entry(pid).or_insert_with(|| Agent::new(now));
        agent.last_ns = now;
        let (ti, relation) = place(
            agent,
            &call,
            &self.cfg,
            &mut self.stats,
            &mut self.ended,
            pid,
        );
        let thread = &mut agent.threads[ti];
        let known = thread.messages.len();
        if thread.task.is_none() {
            thread.task = Some(Task::new(pid, agent.next_task, &call));
            agent.next_task += 1;
            self.stats.tasks += 1;
            thread.by_id.clear();
            thread.last_calls.clear();
        }
        let task = thread.task.as_mut().expect("made above");
        call.turn = Some(task.turn(&call, end_ns));
        call.task = Some(task.id.to_string());
        call.facts.trace = Some(task.trace);
        call.retry = relation == Some(Relation::Retry);
        task.held += 1;
        let new_results = thread::new_results(&call, known, relation);
        link::share_tokens(&mut call, &new_results, thread.last_usage);
        let answered = link::carried(agent, ti, &call, &new_results, end_ns);
        // The record names the results carried for the first time: a request carries the
        // whole conversation again, and the older ones were reported with their own turn.
        let all = std::mem::take(&mut call.tool_results);
        call.tool_results = new_results
            .iter()
            .filter_map(|i| all.get(*i).cloned())
            .collect();
        let answered: Vec<(usize, Option<u64>)> = answered
            .into_iter()
            .enumerate()
            .map(|(pos, (_, slot))| (pos, slot))
            .collect();
        let own = link::asked(
            agent,
            ti,
            &call,
            end_ns,
            self.cfg.max_calls,
            &mut self.stats,
        );
        remember(&mut agent.threads[ti], &call, end_ns);
        if let Some(outcome) = task::ends_task(&call) {
            let thread = &mut agent.threads[ti];
            let task = thread.task.take().expect("a task runs");
            settle_task_calls(agent, &task.id, end_ns);
            self.ended.push(Ended { pid, task, outcome });
        }
        let key = self.next_held;
        self.next_held += 1;
        self.held.insert(
            key,
            Held {
                call,
                pid,
                own,
                answered,
                arrived_ns: end_ns,
            },
        );
        self.hold_cap();
    }

    /// An exchange: a `tools/call` a model asked for is linked to its tool call.
    fn exchange(&mut self, x: &mut Exchange, procs: &Processes) {
        if x.method != "tools/call" || x.requester != crate::signal::Role::Client {
            return;
        }
        let Some(client) = x.client.pid else {
            return;
        };
        // The client, or the parent it was started by, is the process that talks to a model.
        let pid = if self.agents.contains_key(&client) {
            client
        } else {
            match procs.get(client).map(|p| p.ppid) {
                Some(pp) if self.agents.contains_key(&pp) => pp,
                _ => return,
            }
        };
        let agent = self.agents.get_mut(&pid).expect("checked");
        if !link::link_exchange(agent, x, &mut self.stats) {
            link::remember_unmatched(agent, x, self.cfg.grace_ns, &mut self.stats);
        }
    }

    /// Tasks whose thread went idle end.
    fn expire_tasks(&mut self) {
        let now = self.now;
        let idle = self.cfg.task_idle_ns;
        for (pid, agent) in self.agents.iter_mut() {
            let mut stopped = Vec::new();
            for t in &mut agent.threads {
                if t.task
                    .as_ref()
                    .is_some_and(|k| now.saturating_sub(k.last_ns) >= idle)
                {
                    stopped.push(t.task.take().expect("checked"));
                }
            }
            for task in stopped {
                settle_task_calls(agent, &task.id, now);
                let outcome = task.stopped_outcome();
                self.ended.push(Ended {
                    pid: *pid,
                    task,
                    outcome,
                });
            }
            link::age_unmatched(agent, now, self.cfg.grace_ns, &mut self.stats);
        }
    }

    /// Records whose links settled go out (all of them at the end), then the tasks that have
    /// none held any more, then the processes that are done.
    fn release(&mut self, out: &mut Vec<Signal>, all: bool) {
        out.append(&mut self.spill);
        let (now, grace, max) = (self.now, self.cfg.grace_ns, self.cfg.hold_max_ns);
        let ready: Vec<u64> = self
            .held
            .iter()
            .filter(|(_, h)| {
                all || now.saturating_sub(h.arrived_ns) >= max || {
                    let calls = self.agents.get(&h.pid).map(|a| &a.calls);
                    link::settled(h, calls, now, grace)
                }
            })
            .map(|(k, _)| *k)
            .collect();
        for k in ready {
            let h = self.held.remove(&k).expect("listed");
            self.emit(h, out);
        }
        self.emit_ended(out, all);
        if all {
            self.forget_agents(true);
        }
    }

    /// Processes that exited, or went idle with no task running, are forgotten once nothing
    /// held names them.
    fn forget_agents(&mut self, all: bool) {
        let (now, idle) = (self.now, self.cfg.task_idle_ns.saturating_mul(2));
        let held: crate::FastSet<u32> = self.held.values().map(|h| h.pid).collect();
        let ended: crate::FastSet<u32> = self.ended.iter().map(|e| e.pid).collect();
        self.agents.retain(|pid, a| {
            let running = a.threads.iter().any(|t| t.task.is_some());
            let done = a.exited.is_some() || (!running && now.saturating_sub(a.last_ns) >= idle);
            let named = held.contains(pid) || ended.contains(pid) || running;
            !(all || done && !named)
        });
    }

    /// One record out, with its links.
    fn emit(&mut self, h: Held, out: &mut Vec<Signal>) {
        let Held {
            mut call,
            pid,
            own,
            answered,
            ..
        } = h;
        let agent = self.agents.get(&pid);
        let totals = link::fill(&mut call, agent.map(|a| &a.calls), &own, &answered);
        let task_id = call.task.clone();
        let task = self.agents.get_mut(&pid).and_then(|a| {
            a.threads
                .iter_mut()
                .filter_map(|t| t.task.as_mut())
                .find(|t| Some(&*t.id) == task_id.as_deref())
        });
        let task = match task {
            Some(t) => Some(t),
            None => self
                .ended
                .iter_mut()
                .find(|e| Some(&*e.task.id) == task_id.as_deref())
                .map(|e| &mut e.task),
        };
        if let Some(t) = task {
            t.held = t.held.saturating_sub(1);
            t.totals.mcp_calls += totals.mcp_calls;
            t.totals.errors_fed_back += call.errors_fed_back;
            t.totals.self_corrections += call.self_corrections;
        }
        out.push(Signal::LlmCall(call));
    }

    /// Tasks that ended and have no records held go out as `task_end` events.
    fn emit_ended(&mut self, out: &mut Vec<Signal>, all: bool) {
        let (done, wait): (Vec<Ended>, Vec<Ended>) = std::mem::take(&mut self.ended)
            .into_iter()
            .partition(|e| all || e.task.held == 0);
        self.ended = wait;
        for e in done {
            let pid = e.pid;
            let end = e.task.end(e.outcome);
            let mut ev = Event::new(
                end.start_ns + (end.duration_ms * 1e6) as u64,
                What::TaskEnd(end),
            );
            ev.pid = Some(pid);
            out.push(Signal::Event(ev));
        }
    }

    /// Past the cap of processes, the least recently active goes: its tasks end, its records
    /// go out when next released.
    fn hold_agents(&mut self, pid: u32) {
        if self.agents.len() < self.cfg.max_agents || self.agents.contains_key(&pid) {
            return;
        }
        let Some((&victim, _)) = self.agents.iter().min_by_key(|(_, a)| a.last_ns) else {
            return;
        };
        if let Some(mut agent) = self.agents.remove(&victim) {
            self.stats.evicted_agents += 1;
            for t in &mut agent.threads {
                if let Some(task) = t.task.take() {
                    self.ended.push(Ended {
                        pid: victim,
                        task,
                        outcome: "abandoned",
                    });
                }
            }
        }
    }

    /// Past the cap of held records, the oldest go out now (their links as they stand).
    fn hold_cap(&mut self) {
        while self.held.len() > self.cfg.max_held {
            let Some((_, h)) = self.held.pop_first() else {
                break;
            };
            self.stats.evicted_held += 1;
            let mut out = std::mem::take(&mut self.spill);
            self.emit(h, &mut out);
            self.spill = out;
        }
    }
}

/// The thread `call` continues, made when it continues none (the least recently active
/// thread goes past the cap, its task ending `abandoned`).
fn place(
    agent: &mut Agent,
    call: &LlmCall,
    cfg: &Config,
    stats: &mut Stats,
    ended: &mut Vec<Ended>,
    pid: u32,
) -> (usize, Option<Relation>) {
    if let Some((i, r)) = thread::find(&agent.threads, call) {
        return (i, Some(r));
    }
    if agent.threads.len() >= cfg.max_threads
        && let Some(i) = (0..agent.threads.len()).min_by_key(|i| agent.threads[*i].last_ns)
    {
        let mut gone = agent.threads.swap_remove(i);
        stats.evicted_threads += 1;
        if let Some(task) = gone.task.take() {
            ended.push(Ended {
                pid,
                task,
                outcome: "abandoned",
            });
        }
    }
    agent.threads.push(Thread::new(call));
    (agent.threads.len() - 1, None)
}

/// What a thread remembers of its latest call.
fn remember(t: &mut Thread, call: &LlmCall, end_ns: u64) {
    t.messages = call.facts.messages.clone();
    t.system = call.facts.system;
    if call.response_id.is_some() {
        t.response_id = call.response_id.clone();
    }
    t.last_failed = call.status != LlmStatus::Ok;
    t.last_ns = end_ns;
    if let (Some(p), Some(out)) = (call.provider, call.usage.output)
        && let Some(input) = call.usage.total_input(p)
    {
        t.last_usage = Some((input, out));
    }
}

/// A task ended at `at`: its tool calls not run settle after the grace.
fn settle_task_calls(agent: &mut Agent, task: &Arc<str>, at: u64) {
    for c in agent.calls.values_mut().filter(|c| &c.task == task) {
        c.settle_ns.get_or_insert(at);
    }
}

#[cfg(test)]
mod tests;
