//! Stage 7, enrichment: what the signals' processes are, beyond what the host said of them
//! when they were first seen: their pods and containers, from the Kubernetes API server.

pub mod k8s;
