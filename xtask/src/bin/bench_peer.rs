//! Synthetic JSON-RPC peers for `cargo xtask bench`: a client that sends `tools/call`
//! requests at a set rate and size, and a server that answers each one, over stdio pipes or
//! loopback TCP. Newline-delimited, one message per write, as the SDKs do.
//!
//!   bench_peer client-stdio RATE SIZE SECONDS     spawns `bench_peer server-stdio`
//!   bench_peer client-tcp PORT RATE SIZE SECONDS
//!   bench_peer server-tcp PORT                    serves until killed
//!   bench_peer server-sessions PORT[,PORT...] COUNT  answers COUNT connections once each, in
//!                                                  the order `sessions` makes them, holds them
//!   bench_peer sessions PORT[,PORT...] COUNT HOLD_SECONDS
//!                                                  COUNT connections, one exchange each, held,
//!                                                  made to the ports in turn
//!   bench_peer syscalls pipe|unix|socket COUNT        COUNT 64-byte writes, each read back by the same thread
//!
//! Clients print `{"sent":N,"received":N,"seconds":S}`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn request(id: u64, size: usize) -> Vec<u8> {
    let head = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{\"text\":\""
    );
    let tail = "\"}}}\n";
    let pad = size.saturating_sub(head.len() + tail.len());
    let mut m = Vec::with_capacity(size);
    m.extend_from_slice(head.as_bytes());
    m.resize(head.len() + pad, b'x');
    m.extend_from_slice(tail.as_bytes());
    m
}

fn response(line: &[u8]) -> Vec<u8> {
    // The id is the number after `"id":`; the peers only send numeric ids.
    let s = String::from_utf8_lossy(line);
    let id: String = s
        .split("\"id\":")
        .nth(1)
        .unwrap_or("0")
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":{{\"content\":[{{\"type\":\"text\",\"text\":\"ok\"}}]}}}}\n"
    )
    .into_bytes()
}

fn serve(reader: impl Read, mut writer: impl Write) {
    let mut r = BufReader::with_capacity(1 << 20, reader);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if writer.write_all(&response(&line)).is_err() {
                    return;
                }
            }
        }
    }
}

/// Send at `rate` messages/s for `seconds`, in steps of 1 ms; count answers on another
/// thread.
fn drive(mut w: impl Write, r: impl Read + Send + 'static, rate: u64, size: usize, seconds: f64) {
    let counter = std::thread::spawn(move || {
        let mut r = BufReader::with_capacity(1 << 20, r);
        let mut line = Vec::new();
        let mut n = 0u64;
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return n,
                Ok(_) => n += 1,
            }
        }
    });
    let start = Instant::now();
    let total = (rate as f64 * seconds) as u64;
    let mut sent = 0u64;
    let template = request(0, size);
    while sent < total {
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        if due <= sent {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        while sent < due {
            sent += 1;
            let msg = if size > 256 {
                // Large messages: patch the id into the template instead of rebuilding.
                let mut m = template.clone();
                let id = sent.to_string();
                let at = m.windows(6).position(|w| w == b"\"id\":0").expect("id") + 5;
                m.splice(at..at + 1, id.bytes());
                m
            } else {
                request(sent, size)
            };
            if w.write_all(&msg).is_err() {
                break;
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    drop(w);
    let received = counter.join().unwrap_or(0);
    println!("{{\"sent\":{sent},\"received\":{received},\"seconds\":{seconds:.3}}}");
}

/// A TCP write half that sends FIN when dropped, so the reader sees the end.
struct Half(TcpStream);

impl Write for Half {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl Drop for Half {
    fn drop(&mut self) {
        let _ = self.0.shutdown(std::net::Shutdown::Write);
    }
}

/// The command line: `args[0]` is this program, `args[1]` the mode.
struct Args(Vec<String>);

impl Args {
    fn float(&self, i: usize) -> f64 {
        self.0
            .get(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("argument {i} must be a number"))
    }

    fn num(&self, i: usize) -> u64 {
        self.float(i) as u64
    }
}

/// `client-stdio RATE SIZE SECONDS`: drive a `server-stdio` child over its stdio pipes.
fn client_stdio(a: &Args) {
    let (rate, size, secs) = (a.num(2), a.num(3) as usize, a.float(4));
    let mut child = Command::new(&a.0[0])
        .arg("server-stdio")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn server");
    let w = child.stdin.take().unwrap();
    let r = child.stdout.take().unwrap();
    drive(w, r, rate, size, secs);
    let _ = child.wait();
}

/// `server-tcp PORT`: answer every connection, each on its own thread, until killed. One fd
/// per connection (the stream reads and writes through shared references): 10,000 held
/// sessions must fit the open-file limit.
fn server_tcp(a: &Args) {
    let l = TcpListener::bind(("127.0.0.1", a.num(2) as u16)).expect("bind");
    for s in l.incoming().flatten() {
        std::thread::spawn(move || serve(&s, &s));
    }
}

/// `client-tcp PORT RATE SIZE SECONDS`.
fn client_tcp(a: &Args) {
    let s = TcpStream::connect(("127.0.0.1", a.num(2) as u16)).expect("connect");
    s.set_nodelay(true).ok();
    let r = s.try_clone().unwrap();
    drive(Half(s), r, a.num(3), a.num(4) as usize, a.float(5));
}

/// The ports of a `PORT[,PORT...]` argument.
fn ports(arg: &str) -> Vec<u16> {
    arg.split(',')
        .map(|p| p.parse().expect("a port number"))
        .collect()
}

/// Raise this process's open-file limit to the most the kernel allows (`fs.nr_open`): a
/// hundred thousand held sessions are a hundred thousand fds. Raising the hard limit needs
/// root; without it the soft limit goes up to the hard one.
fn raise_nofile() {
    let most = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let want = libc::rlimit {
        rlim_cur: most,
        rlim_max: most,
    };
    // SAFETY: a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } != 0 {
        let mut now = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: valid rlimit structs.
        unsafe {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut now);
            now.rlim_cur = now.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &now);
        }
    }
}

/// `server-sessions PORT[,PORT...] COUNT`: one thread answers one request on each of COUNT
/// connections, accepted from the ports in turn (the order `sessions` connects in, one at a
/// time), and holds them until killed: a hundred thousand sessions without a thread each.
fn server_sessions(a: &Args) {
    raise_nofile();
    let listeners: Vec<TcpListener> = ports(&a.0[2])
        .into_iter()
        .map(|p| TcpListener::bind(("127.0.0.1", p)).expect("bind"))
        .collect();
    let count = a.num(3) as usize;
    let mut held = Vec::with_capacity(count);
    while held.len() < count {
        let Ok((mut s, _)) = listeners[held.len() % listeners.len()].accept() else {
            break;
        };
        let mut line = Vec::new();
        // A connection closed without a request (someone checking the port listens) is
        // not a session, and not the next port's turn.
        if BufReader::new(&s)
            .read_until(b'\n', &mut line)
            .is_ok_and(|n| n > 0)
        {
            let _ = s.write_all(&response(&line));
            held.push(s);
        }
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// `sessions PORT[,PORT...] COUNT HOLD_SECONDS`: COUNT connections, one exchange each, held
/// open, made to the ports in turn (a port takes at most the ephemeral range's worth of
/// connections from one address).
fn sessions(a: &Args) {
    raise_nofile();
    let (ports, count, hold) = (ports(&a.0[2]), a.num(3), a.num(4));
    let mut conns = Vec::new();
    for i in 0..count {
        let port = ports[i as usize % ports.len()];
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.write_all(&request(i + 1, 200)).unwrap();
        let mut line = Vec::new();
        BufReader::new(&s).read_until(b'\n', &mut line).unwrap();
        conns.push(s);
    }
    println!("{{\"open\":{}}}", conns.len());
    std::io::stdout().flush().ok();
    std::thread::sleep(Duration::from_secs(hold));
}

/// The two ends of a pipe, a Unix socketpair or a loopback TCP connection.
fn channel(kind: &str) -> (Box<dyn Write + Send>, Box<dyn Read + Send>) {
    match kind {
        "pipe" => {
            let mut fds = [0; 2];
            // SAFETY: a valid two-int array.
            assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
            // SAFETY: fresh fds we own.
            unsafe {
                use std::os::fd::FromRawFd;
                (
                    Box::new(std::fs::File::from_raw_fd(fds[1])),
                    Box::new(std::fs::File::from_raw_fd(fds[0])),
                )
            }
        }
        "unix" => {
            let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
            (Box::new(a), Box::new(b))
        }
        _ => {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            c.set_nodelay(true).ok();
            let (s, _) = l.accept().unwrap();
            (Box::new(c), Box::new(s))
        }
    }
}

/// `syscalls pipe|unix|socket COUNT`.
fn syscalls(a: &Args) {
    let count = a.num(3);
    let (mut w, mut r) = channel(&a.0[2]);
    // One thread writes 64 bytes and reads them back: every iteration is two
    // syscalls that never block, so the time is the syscalls' own cost.
    let msg = [b'x'; 64];
    let mut buf = [0u8; 64];
    let start = Instant::now();
    for _ in 0..count {
        w.write_all(&msg).unwrap();
        r.read_exact(&mut buf).unwrap();
    }
    println!(
        "{{\"syscalls\":{},\"seconds\":{:.6}}}",
        2 * count,
        start.elapsed().as_secs_f64()
    );
}

fn main() {
    let a = Args(std::env::args().collect());
    match a.0.get(1).map(String::as_str) {
        Some("server-stdio") => serve(std::io::stdin(), std::io::stdout()),
        Some("client-stdio") => client_stdio(&a),
        Some("server-tcp") => server_tcp(&a),
        Some("client-tcp") => client_tcp(&a),
        Some("sessions") => sessions(&a),
        Some("server-sessions") => server_sessions(&a),
        Some("syscalls") => syscalls(&a),
        _ => {
            eprintln!("usage: bench_peer client-stdio|client-tcp|server-tcp|sessions|syscalls ...");
            std::process::exit(2);
        }
    }
}
