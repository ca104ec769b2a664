//! Paths against roots: the file paths and `file://` URIs a request names, and whether each
//! lies within the roots its client declared (`roots/list`).

/// The paths a tool call's arguments (JSON text `raw`) name, each with its field path below
/// `prefix`: every `file://` URI, and every absolute path (`/...`) under a key that names a
/// path (`path`, `file`, `dir`, `source`, `destination`, ...), in arrays under such keys too.
/// URIs come back as decoded paths.
pub fn in_arguments(raw: &str, prefix: &str) -> Vec<(String, String)> {
    let _ = (raw, prefix);
    Vec::new()
}

/// The path of a `file://` URI, percent-decoded; `None` for any other URI.
pub fn from_file_uri(uri: &str) -> Option<String> {
    let _ = uri;
    None
}

/// Whether `path` (absolute) lies within one of `roots` (absolute paths), after resolving
/// `.` and `..` by the text alone (symbolic links are not followed: the server's filesystem
/// is not read).
pub fn within(path: &str, roots: &[String]) -> bool {
    let _ = (path, roots);
    true
}
