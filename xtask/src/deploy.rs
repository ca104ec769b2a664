//! Checks of the deployment files under `deploy/` that need no cluster, no Grafana and no
//! Docker engine: the alerting rules compile and their unit tests pass (promtool), every
//! Kubernetes manifest validates strictly against the Kubernetes API schemas
//! (kubernetes-validate, pinned, installed into `target/peers/kvalidate`), the kustomization
//! lists exactly the manifests there, the NetworkPolicy admits the metrics port from one
//! named namespace and can apply (no hostNetwork), the Grafana dashboard has its rows and
//! variables, the collector config and the Dockerfile are there, and `systemd-analyze
//! verify` accepts the unit (Debian's systemd package is installed for it when missing).
//! When kubectl is installed, `kubectl kustomize` renders the kustomization and the overlay
//! that networkpolicy.yaml documents; kubectl is not in Debian's archive, so without it that
//! is reported as skipped, never as ok. The end-to-end test `tests/tests/deploy.rs` runs the
//! dashboard's and the rules' queries against a real mcptap.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

use crate::{root, run, step};

/// The Kubernetes manifest validator (PyPI), pinned like the test peers.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

/// The dashboard's rows and template variables that the README and the e2e test rely on.
const DASHBOARD_ROWS: &[&str] = &[
    "Service health",
    "Tool performance",
    "Agent behaviour",
    "Security",
];
const DASHBOARD_VARIABLES: &[&str] = &["datasource", "server", "client"];

/// Every check, in order.
pub fn check() -> Result<()> {
    let deploy = root().join("deploy");
    prometheus(&deploy.join("prometheus"))?;
    kubernetes(&deploy.join("kubernetes"))?;
    grafana(&deploy.join("grafana").join("mcptap.json"))?;
    let collector = non_empty(&deploy.join("otel-collector").join("config.yaml"))?;
    ensure!(
        collector.contains("receivers:") && collector.contains("pipelines:"),
        "deploy/otel-collector/config.yaml has no receivers or pipelines"
    );
    step("ok: deploy/otel-collector/config.yaml");
    systemd(&deploy.join("systemd").join("mcptap.service"))?;
    non_empty(&deploy.join("docker").join("Dockerfile"))?;
    step("ok: deploy/docker/Dockerfile is there (not built: that needs a Docker engine)");
    Ok(())
}

fn non_empty(path: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(!text.trim().is_empty(), "{} is empty", path.display());
    Ok(text)
}

/// `promtool check rules` and `promtool test rules` (the tests name alerts.yml relative to
/// their own directory).
fn prometheus(dir: &Path) -> Result<()> {
    step("checking the Prometheus alerting rules and their unit tests (promtool)");
    run(Command::new("promtool")
        .current_dir(dir)
        .args(["check", "rules", "alerts.yml"]))
    .context("promtool check rules (promtool comes with `cargo xtask peers`)")?;
    run(Command::new("promtool")
        .current_dir(dir)
        .args(["test", "rules", "alerts_test.yml"]))
    .context("promtool test rules")?;
    Ok(())
}

/// The validator's virtualenv, installed once per pinned version (a stamp file records it).
fn kubernetes_validate() -> Result<PathBuf> {
    let dir = root().join("target").join("peers").join("kvalidate");
    let bin = dir.join("bin").join("kubernetes-validate");
    if crate::peers::stamped(&dir, KUBERNETES_VALIDATE) && bin.exists() {
        step(&format!("ok: {KUBERNETES_VALIDATE} in {}", dir.display()));
        return Ok(bin);
    }
    crate::peers::python_venv(&dir, KUBERNETES_VALIDATE)?;
    Ok(bin)
}

/// The `resources:` list of a kustomization.yaml (block style, one `- item` a line).
fn kustomization_resources(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if !line.starts_with([' ', '-']) {
            inside = t == "resources:";
            continue;
        }
        if inside && let Some(item) = t.strip_prefix("- ") {
            out.push(item.trim().trim_matches(['"', '\'']).to_string());
        }
    }
    out
}

fn kubernetes(dir: &Path) -> Result<()> {
    step("checking the Kubernetes manifests (kubernetes-validate --strict)");
    let kustomization = non_empty(&dir.join("kustomization.yaml"))?;
    let listed = kustomization_resources(&kustomization);
    ensure!(
        !listed.is_empty(),
        "deploy/kubernetes/kustomization.yaml lists no resources"
    );
    for r in &listed {
        ensure!(
            dir.join(r).is_file(),
            "kustomization.yaml lists {r}, which is not in deploy/kubernetes"
        );
    }
    let mut manifests: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| (n.ends_with(".yaml") || n.ends_with(".yml")) && n != "kustomization.yaml")
        .collect();
    manifests.sort();
    for m in &manifests {
        ensure!(
            listed.contains(m),
            "deploy/kubernetes/{m} is not listed in kustomization.yaml's resources"
        );
    }
    let validate = kubernetes_validate()?;
    run(Command::new(&validate)
        .current_dir(dir)
        .args(["--strict", "--quiet"])
        .args(&manifests))
    .context("a Kubernetes manifest does not validate")?;
    step(&format!(
        "ok: {} manifests validate, all listed in kustomization.yaml",
        manifests.len()
    ));
    network_policy(dir)?;
    // Render the kustomization too when a kubectl is at hand (its built-in kustomize works
    // offline), and validate what it renders. kubectl is not in Debian's archive, so a machine
    // may well lack it: then say plainly what was not checked.
    match Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => bail!(
            "kubectl version --client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            step("skipped: kubectl not installed (kustomize rendering not checked)");
            return Ok(());
        }
        Err(e) => bail!("cannot run kubectl: {e}"),
    }
    let rendered = kustomize(dir)?;
    let out_file = root().join("target").join("deploy-kustomize.yaml");
    std::fs::write(&out_file, &rendered)?;
    run(Command::new(&validate)
        .args(["--strict", "--quiet"])
        .arg(&out_file))
    .context("the rendered kustomization does not validate")?;
    let objects = rendered.lines().filter(|l| l.starts_with("kind: ")).count();
    ensure!(
        objects == manifests.len(),
        "`kubectl kustomize deploy/kubernetes` rendered {objects} objects for {} manifests",
        manifests.len()
    );
    step(&format!(
        "ok: `kubectl kustomize deploy/kubernetes` renders {objects} valid objects"
    ));
    overlay(dir)?;
    Ok(())
}

/// `kubectl kustomize DIR`'s output.
fn kustomize(dir: &Path) -> Result<String> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .context("running kubectl kustomize")?;
    ensure!(
        out.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// The label Kubernetes puts on every namespace, which the NetworkPolicy selects on.
const NAMESPACE_LABEL: &str = "kubernetes.io/metadata.name: ";

/// The NetworkPolicy admits the metrics port from one named namespace, selects the
/// DaemonSet's pods by the label they carry, names the port the DaemonSet declares, and can
/// apply at all: a NetworkPolicy does not govern hostNetwork pods.
fn network_policy(dir: &Path) -> Result<()> {
    let policy = non_empty(&dir.join("networkpolicy.yaml"))?;
    let daemonset = non_empty(&dir.join("daemonset.yaml"))?;
    ensure!(
        policy.contains("kind: NetworkPolicy") && policy.contains("- Ingress"),
        "networkpolicy.yaml is not an ingress NetworkPolicy"
    );
    let namespaces: Vec<&str> = policy
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.trim().strip_prefix(NAMESPACE_LABEL))
        .collect();
    ensure!(
        namespaces == ["monitoring"],
        "networkpolicy.yaml must admit exactly one namespace by {NAMESPACE_LABEL}NAME (monitoring): found {namespaces:?}"
    );
    ensure!(
        policy.contains("app.kubernetes.io/name: mcptap")
            && daemonset.contains("app.kubernetes.io/name: mcptap"),
        "the NetworkPolicy does not select the DaemonSet's pods by app.kubernetes.io/name: mcptap"
    );
    ensure!(
        policy.contains("port: metrics")
            && daemonset.contains("- name: metrics")
            && daemonset.contains("containerPort: 9464"),
        "the NetworkPolicy must admit the DaemonSet's port named metrics (9464)"
    );
    ensure!(
        !daemonset
            .lines()
            .any(|l| l.trim().starts_with("hostNetwork:") && l.contains("true")),
        "the DaemonSet uses hostNetwork, which no NetworkPolicy governs: networkpolicy.yaml would protect nothing"
    );
    step(
        "ok: the NetworkPolicy admits port metrics of the mcptap pods from namespace monitoring only (no hostNetwork)",
    );
    Ok(())
}

/// The overlay that networkpolicy.yaml's comment documents (its lines indented under `#   `),
/// rendered from `target/`: the patch it shows must really change the admitted namespace.
fn overlay(dir: &Path) -> Result<()> {
    let policy = non_empty(&dir.join("networkpolicy.yaml"))?;
    let example: String = policy
        .lines()
        .take_while(|l| l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("#   "))
        .map(|l| format!("{}\n", l.split(" # ").next().unwrap_or(l).trim_end()))
        .collect();
    let value = example
        .lines()
        .find_map(|l| l.trim().strip_prefix("value: "))
        .context("networkpolicy.yaml's overlay example sets no value")?
        .to_string();
    ensure!(
        example.contains("resources:") && example.contains("patches:") && value != "monitoring",
        "networkpolicy.yaml's comment shows no overlay that renames the namespace:\n{example}"
    );
    let ov = root().join("target").join("deploy-overlay");
    std::fs::create_dir_all(&ov)?;
    // The example names this directory from an overlay two levels down, as target/deploy-overlay is.
    std::fs::write(ov.join("kustomization.yaml"), &example)?;
    let rendered = kustomize(&ov)?;
    let admitted: Vec<&str> = rendered
        .lines()
        .filter_map(|l| l.trim().strip_prefix(NAMESPACE_LABEL))
        .collect();
    ensure!(
        admitted == [value.as_str()],
        "the overlay documented in networkpolicy.yaml admits {admitted:?}, not [{value:?}]"
    );
    step(&format!(
        "ok: the overlay documented in networkpolicy.yaml renders a policy admitting namespace {value}"
    ));
    Ok(())
}

fn grafana(path: &Path) -> Result<()> {
    let dash: Value = serde_json::from_str(&non_empty(path)?)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    ensure!(
        dash["schemaVersion"].as_u64().is_some(),
        "the dashboard has no schemaVersion"
    );
    let panels = dash["panels"]
        .as_array()
        .context("the dashboard has no panels")?;
    let rows: Vec<&str> = panels
        .iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .collect();
    for want in DASHBOARD_ROWS {
        ensure!(
            rows.contains(want),
            "the dashboard has no row {want:?} (rows: {rows:?})"
        );
    }
    let vars = dash["templating"]["list"]
        .as_array()
        .context("the dashboard has no template variables")?;
    for want in DASHBOARD_VARIABLES {
        ensure!(
            vars.iter().any(|v| v["name"] == *want),
            "the dashboard has no variable {want:?}"
        );
    }
    ensure!(
        vars.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "the datasource variable must be of type datasource, query prometheus"
    );
    // Every query panel, rows' nested panels included, reads the variable's data source and
    // has an expression; panel ids are unique.
    let mut ids = std::collections::BTreeSet::new();
    let mut queries = 0;
    let mut stack: Vec<&Value> = panels.iter().collect();
    while let Some(p) = stack.pop() {
        let title = p["title"].as_str().unwrap_or("?");
        let id = p["id"]
            .as_u64()
            .with_context(|| format!("panel {title:?} has no id"))?;
        ensure!(ids.insert(id), "panel id {id} is used twice");
        stack.extend(p["panels"].as_array().into_iter().flatten());
        if p["type"] == "row" {
            continue;
        }
        ensure!(
            p["datasource"]["uid"] == "${datasource}",
            "panel {title:?} does not use the ${{datasource}} variable"
        );
        let targets = p["targets"]
            .as_array()
            .filter(|t| !t.is_empty())
            .with_context(|| format!("panel {title:?} has no query"))?;
        for t in targets {
            ensure!(
                t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "panel {title:?} has a query without expr"
            );
            queries += 1;
        }
    }
    step(&format!(
        "ok: the Grafana dashboard has rows {DASHBOARD_ROWS:?}, variables {DASHBOARD_VARIABLES:?}, {queries} queries"
    ));
    Ok(())
}

/// The unit file, and `systemd-analyze verify` on a copy whose ExecStart names a binary that
/// exists here (verify insists on it; systemd itself need not be running).
fn systemd(unit: &Path) -> Result<()> {
    let text = non_empty(unit)?;
    ensure!(
        text.contains("ExecStart=/usr/local/bin/mcptap "),
        "the unit must start /usr/local/bin/mcptap"
    );
    systemd_analyze()?;
    let dir = root().join("target").join("deploy-systemd");
    std::fs::create_dir_all(&dir)?;
    let copy = dir.join("mcptap.service");
    std::fs::write(
        &copy,
        text.replace("ExecStart=/usr/local/bin/mcptap ", "ExecStart=/bin/true "),
    )?;
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .context("running systemd-analyze verify")?;
    // A misspelt key is only a warning ("Unknown key ..., ignoring"): treat any output as a
    // failure.
    if !out.status.success() || !out.stderr.is_empty() || !out.stdout.is_empty() {
        bail!(
            "systemd-analyze verify deploy/systemd/mcptap.service: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    step("ok: deploy/systemd/mcptap.service (systemd-analyze verify)");
    Ok(())
}

fn have_systemd_analyze() -> bool {
    Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// systemd-analyze, from Debian's `systemd` package (installing it does not make systemd the
/// init: that is `systemd-sysv`), installed with apt-get when missing, so that the unit is
/// really verified; without it the check fails rather than pass unverified.
fn systemd_analyze() -> Result<()> {
    if have_systemd_analyze() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "systemd-analyze is missing, so deploy/systemd/mcptap.service cannot be verified: \
             `sudo apt-get install -y systemd` (Debian's package), or rerun as root to have it installed"
        );
    }
    step("installing Debian's systemd package (systemd-analyze, to verify the unit)");
    let install = || {
        run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "systemd"])
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    if install().is_err() {
        // A fresh machine has stale or no package lists.
        run(Command::new("apt-get").arg("update"))?;
        install().context("apt-get could not install systemd (for systemd-analyze)")?;
    }
    ensure!(
        have_systemd_analyze(),
        "Debian's systemd package is installed but systemd-analyze does not run"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::kustomization_resources;

    #[test]
    fn kustomization_resources_are_the_resources_list() {
        let k = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - a.yaml\n  # a comment\n  - \"b.yaml\"\nimages:\n  - name: x\n    newTag: y\n";
        assert_eq!(kustomization_resources(k), ["a.yaml", "b.yaml"]);
    }
}
