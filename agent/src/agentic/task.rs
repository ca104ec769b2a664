//! Tasks: one conversation thread's run from its first model call to the answer, or to what
//! stopped it.

use std::sync::Arc;

use crate::llm::{ErrorKind, Stop};
use crate::signal::{LlmCall, LlmStatus, TaskEnd};

/// The most model names a task keeps (a task rarely calls more than two).
const MAX_MODELS: usize = 8;

/// A task running on a thread, or ended and waiting for its last records.
pub(super) struct Task {
    /// `PID-N`: the process and its N-th task.
    pub id: Arc<str>,
    /// Its trace.
    pub trace: u128,
    /// Its first request (wall-clock ns).
    pub start_ns: u64,
    /// The end of its last call.
    pub last_ns: u64,
    /// Model calls so far.
    pub turns: u32,
    /// How its last call ended.
    pub last_status: LlmStatus,
    /// Its last call's API error.
    pub last_error: Option<ErrorKind>,
    /// Its records not reported yet: it is reported after them.
    pub held: u32,
    /// What is reported when it ends.
    pub totals: TaskEnd,
}

impl Task {
    /// A task whose first call is `call`, the `n`-th task of process `pid`.
    pub fn new(pid: u32, n: u64, call: &LlmCall) -> Self {
        let id: Arc<str> = Arc::from(format!("{pid}-{n}"));
        let trace = crate::signal::trace_ids::task_trace(&id, call.ts_ns);
        Task {
            totals: TaskEnd {
                task: id.to_string(),
                process: call.process.clone(),
                start_ns: call.ts_ns,
                trace,
                ..TaskEnd::default()
            },
            id,
            trace,
            start_ns: call.ts_ns,
            last_ns: call.ts_ns,
            turns: 0,
            last_status: LlmStatus::Ok,
            last_error: None,
            held: 0,
        }
    }

    /// One more call: its turn number.
    pub fn turn(&mut self, call: &LlmCall, end_ns: u64) -> u32 {
        self.turns += 1;
        self.last_ns = end_ns;
        self.last_status = call.status;
        self.last_error = call.error_type;
        let t = &mut self.totals;
        t.turns = self.turns;
        t.tool_calls += call.tool_calls.len() as u32;
        t.hallucinations += call.tool_calls.iter().filter(|c| c.hallucinated).count() as u32;
        if let Some(p) = call.provider {
            let input = call.usage.total_input(p).unwrap_or(0);
            t.input_tokens = t.input_tokens.saturating_add(input);
        }
        t.output_tokens = t
            .output_tokens
            .saturating_add(call.usage.output.unwrap_or(0));
        let model = call.response_model.as_ref().or(call.model.as_ref());
        if let Some(m) = model
            && !t.models.contains(m)
            && t.models.len() < MAX_MODELS
        {
            t.models.push(m.clone());
        }
        self.turns
    }

    /// What the task's last call says of how it ended, when the task stops without an
    /// answer (its process exited, or it went idle).
    pub fn stopped_outcome(&self) -> &'static str {
        match (self.last_status, self.last_error) {
            (LlmStatus::CutOff, _) => "cut_off",
            (LlmStatus::Error, Some(ErrorKind::ContextOverflow)) => "context_overflow",
            (LlmStatus::Error, _) => "error",
            (LlmStatus::Ok, _) => "abandoned",
        }
    }

    /// The report of the ended task.
    pub fn end(mut self, outcome: &'static str) -> TaskEnd {
        self.totals.outcome = outcome;
        self.totals.duration_ms = self.last_ns.saturating_sub(self.start_ns) as f64 / 1e6;
        self.totals
    }
}

/// Whether `call` ends its task, and how: a final answer (no tool calls), a stop at the token
/// limit, or a context that no longer fits.
pub(super) fn ends_task(call: &LlmCall) -> Option<&'static str> {
    match call.status {
        LlmStatus::Ok if call.tool_calls.is_empty() => Some(match call.facts.stop {
            Stop::MaxTokens => "max_tokens",
            Stop::ContextOverflow => "context_overflow",
            _ => "completed",
        }),
        LlmStatus::Error if call.error_type == Some(ErrorKind::ContextOverflow) => {
            Some("context_overflow")
        }
        _ => None,
    }
}
