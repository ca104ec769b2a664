//! Turn `--record` captures of real MCP traffic into seed inputs for the fuzz targets.
//!
//! ```text
//! cargo run --example fuzz_seeds -- OUT_DIR CAPTURE.mcptap...
//! ```
//!
//! Writes `OUT_DIR/<target>/<name>` for the targets in `agent/fuzz`: `ndjson` (the bytes of
//! each stdio stream), `http` (each TCP client's requests and responses), `sse` (the event
//! streams inside those responses), `mcp` (each stdio session replayed as a script of
//! syscalls, in the order the kernel saw them) and `record` (small capture files cut from the
//! inputs). Each input's layout is the one its target in `mcptap::fuzz` documents.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use mcptap::capture::Record;
use mcptap::capture::recording::{Frame, Reader, Writer};
use mcptap_abi::{DIR_IN, DIR_OUT, FD_PIPE, FD_TCP, FD_UNIX, RECORD_DATA};

/// Seeds stay small: libFuzzer mutates short inputs far faster.
const MAX_SEED: usize = 16 * 1024;

/// One syscall's bytes, as captured.
struct Chunk {
    tgid: u32,
    fd: i32,
    dir: u8,
    fd_kind: u8,
    data: Vec<u8>,
}

fn write_seed(out: &Path, target: &str, name: &str, bytes: &[u8]) -> Result<()> {
    let dir = out.join(target);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(name), bytes).with_context(|| format!("writing {target}/{name}"))
}

/// Every stream's bytes in capture order, keyed by (tgid, fd, dir, kind).
fn streams(chunks: &[Chunk]) -> BTreeMap<(u32, i32, u8, u8), Vec<u8>> {
    let mut out: BTreeMap<_, Vec<u8>> = BTreeMap::new();
    for c in chunks {
        out.entry((c.tgid, c.fd, c.dir, c.fd_kind))
            .or_default()
            .extend_from_slice(&c.data);
    }
    out
}

/// The first line of a stream parsed as JSON, if it is a request: the stream's writer is then
/// an MCP client.
fn starts_with_request(bytes: &[u8]) -> bool {
    let line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    serde_json::from_slice::<serde_json::Value>(line)
        .is_ok_and(|v| v.get("method").is_some() && v.get("id").is_some())
}

fn seeds_from(capture: &Path, stem: &str, out: &Path) -> Result<usize> {
    let mut reader = Reader::new(BufReader::new(
        File::open(capture).with_context(|| format!("opening {}", capture.display()))?,
    ))
    .map_err(|e| anyhow::anyhow!("{}: {e}", capture.display()))?;
    let mut frames = Vec::new();
    let mut chunks = Vec::new();
    while let Some(frame) = reader
        .next_frame()
        .map_err(|e| anyhow::anyhow!("{}: {e}", capture.display()))?
    {
        if let Frame::Record(raw) = &frame
            && let Ok(r) = Record::parse(raw)
            && r.hdr.record == RECORD_DATA
        {
            chunks.push(Chunk {
                tgid: r.hdr.tgid,
                fd: r.hdr.fd,
                dir: r.hdr.dir,
                fd_kind: r.hdr.fd_kind,
                data: r.data.to_vec(),
            });
        }
        frames.push(frame);
    }
    let mut n = 0;
    let streams = streams(&chunks);

    // ndjson: each stdio stream, after the target's two parameter bytes (line limit, split).
    for (&(tgid, fd, dir, kind), bytes) in &streams {
        if kind == FD_PIPE || kind == FD_UNIX {
            let mut seed = vec![255, (tgid as u8) | 1];
            seed.extend_from_slice(&bytes[..bytes.len().min(MAX_SEED)]);
            write_seed(out, "ndjson", &format!("{stem}-{tgid}-{fd}-{dir}"), &seed)?;
            n += 1;
        }
    }

    // http: a client connection's requests, then its responses, after four parameter bytes
    // (body limit, split, and where the requests end).
    for (&(tgid, fd, dir, kind), requests) in &streams {
        if kind != FD_TCP
            || dir != DIR_OUT
            || !requests.starts_with(b"POST ") && !requests.starts_with(b"GET ")
        {
            continue;
        }
        let Some(responses) = streams.get(&(tgid, fd, DIR_IN, kind)) else {
            continue;
        };
        let req = &requests[..requests.len().min(MAX_SEED / 2)];
        let resp = &responses[..responses.len().min(MAX_SEED / 2)];
        let mut seed = vec![255, 7];
        seed.extend_from_slice(&(req.len() as u16).to_le_bytes());
        seed.extend_from_slice(req);
        seed.extend_from_slice(resp);
        write_seed(out, "http", &format!("{stem}-{tgid}-{fd}"), &seed)?;
        n += 1;

        // sse: the event stream bodies inside the responses (what follows each head that
        // announces text/event-stream), after the target's two parameter bytes.
        let text = String::from_utf8_lossy(resp);
        for (i, part) in text.split("HTTP/1.1 ").enumerate() {
            if !part.to_ascii_lowercase().contains("text/event-stream") {
                continue;
            }
            if let Some(body) = part.split_once("\r\n\r\n").map(|(_, b)| b) {
                let mut seed = vec![255, 5];
                seed.extend_from_slice(body.as_bytes());
                write_seed(out, "sse", &format!("{stem}-{tgid}-{fd}-{i}"), &seed)?;
                n += 1;
            }
        }
    }

    // mcp: each stdio client and its server, as the script `mcptap::fuzz::mcp` reads: ops
    // separated by 0x1e, each naming who moved the bytes.
    let clients: Vec<u32> = streams
        .iter()
        .filter(|((_, _, dir, kind), bytes)| {
            *kind == FD_PIPE && *dir == DIR_OUT && starts_with_request(bytes)
        })
        .map(|((tgid, ..), _)| *tgid)
        .collect();
    for client in clients {
        let mut script = Vec::new();
        for c in chunks.iter().filter(|c| c.fd_kind == FD_PIPE) {
            let op = match (c.tgid == client, c.dir) {
                (true, DIR_OUT) => b'0',
                (false, DIR_IN) => b'1',
                (false, DIR_OUT) => b'2',
                (true, DIR_IN) => b'3',
                _ => continue,
            };
            if script.len() + c.data.len() > MAX_SEED {
                break;
            }
            script.push(op);
            script.extend_from_slice(&c.data);
            script.push(0x1e);
        }
        script.extend_from_slice(b"6\x1e5");
        write_seed(out, "mcp", &format!("{stem}-{client}"), &script)?;
        n += 1;
    }

    // record: the capture's metadata and its first kernel records, as a capture file.
    let mut file = Vec::new();
    let mut w = Writer::new(&mut file)?;
    let mut records = 0;
    for frame in &frames {
        match frame {
            Frame::Record(raw) if records < 40 => {
                w.record(raw)?;
                records += 1;
            }
            Frame::Record(_) => {}
            Frame::Process(p) => w.process(p)?,
            Frame::Clock(c) => w.clock(c)?,
            Frame::Holders(h) => w.holders(h)?,
            Frame::Counters(_) => {}
        }
    }
    w.flush()?;
    drop(w);
    write_seed(out, "record", &format!("{stem}.bin"), &file)?;
    Ok(n + 1)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out, captures @ ..] = args.as_slice() else {
        bail!("usage: fuzz_seeds OUT_DIR CAPTURE.mcptap...");
    };
    if captures.is_empty() {
        bail!("usage: fuzz_seeds OUT_DIR CAPTURE.mcptap...");
    }
    let out = Path::new(out);
    for capture in captures {
        let path = Path::new(capture);
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("capture");
        let n = seeds_from(path, stem, out)?;
        eprintln!("{}: {n} seeds", path.display());
    }
    Ok(())
}
