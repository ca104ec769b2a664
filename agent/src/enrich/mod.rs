//! Stage 7, enrichment: what the signals' processes are, beyond what the host said of them
//! when they were first seen: their pods and containers, from the Kubernetes API server.
//!
//! An [`Enricher`] is a value the agent makes (live: with the pod watcher when it runs in a
//! pod; replay and tests: from what they were given) and hands to the outputs, which pass
//! every signal through it.

pub mod k8s;

use crate::signal::Signal;

/// Adds what is learned after a process was first named to every signal that names it.
#[derive(Default)]
pub struct Enricher {
    k8s: k8s::Resolver,
}

impl Enricher {
    /// Names from the Kubernetes pod store behind `k8s`.
    pub fn new(k8s: k8s::Resolver) -> Self {
        Enricher { k8s }
    }

    /// Fill in what is known of both ends of `s`.
    pub fn enrich(&self, s: &mut Signal) {
        self.k8s.enrich(s);
    }
}
