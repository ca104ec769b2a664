//! What the processes run: their programs and the libraries they map, seen through
//! `/proc` (and each process's own root, right inside a container).

use std::path::{Path, PathBuf};

/// The executable mappings of `pid` that may hold a TLS library (`wanted` says, by path), as paths through the process's own
/// root (right inside a container too).
pub fn mapped_libraries(pid: u32, wanted: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode path
        let mut f = line.split_whitespace();
        let perms = f.nth(1).unwrap_or("");
        let path = f.nth(3).unwrap_or("");
        if !perms.contains('x') || !path.starts_with('/') || line.ends_with("(deleted)") {
            continue;
        }
        if wanted(path) {
            let p = PathBuf::from(format!("/proc/{pid}/root{path}"));
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// The program `pid` runs, through its own root (right inside a container too), or through
/// ours if the process has gone meanwhile (its binary is still worth probing for the next run).
pub fn program(pid: u32) -> Option<PathBuf> {
    let target = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let own = PathBuf::from(format!("/proc/{pid}/root{}", target.display()));
    if own.exists() {
        Some(own)
    } else {
        target.exists().then_some(target)
    }
}

/// The files in the usual library directories whose names start with one of `prefixes`
/// (`libssl.so`: every version of it).
pub fn system_files(prefixes: &[&str]) -> Vec<PathBuf> {
    let triplet = format!("{}-linux-gnu", std::env::consts::ARCH);
    let mut dirs = vec![
        PathBuf::from("/lib"),
        PathBuf::from("/lib64"),
        PathBuf::from("/usr/lib"),
        PathBuf::from("/usr/lib64"),
        PathBuf::from("/usr/local/lib"),
        PathBuf::from("/usr/local/lib64"),
    ];
    dirs.push(Path::new("/lib").join(&triplet));
    dirs.push(Path::new("/usr/lib").join(&triplet));
    let mut out = Vec::new();
    for d in dirs {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if prefixes.iter().any(|p| name.starts_with(p)) && e.path().is_file() {
                out.push(e.path());
            }
        }
    }
    out
}
