//! vsock-probe: a small socat-like tool for kiln's virtio-vsock tests, run
//! in the guest (AF_VSOCK) and on the host (kiln's Unix socket). See USAGE.

mod bench;
mod checks;
mod http;
mod pty;
mod run_as;
mod serve;
mod sock;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use serve::Mode;
use sock::{Addr, Listener};

const USAGE: &str = "\
usage: vsock-probe COMMAND ARGS...
Addresses: vsock:CID:PORT (connect; the host is CID 2), vsock:PORT (listen),
  hybrid:PATH:PORT (kiln's socket PATH: send 'CONNECT PORT', expect 'OK <n>'),
  unix:PATH (a plain Unix socket, e.g. the <socket>_PORT a guest reaches).
Sizes take K, M or G (binary) suffixes. Times are seconds.

  listen ADDR MODE [--count N] [--ready FILE]
      serve connections, each in its own thread (N, then exit; default:
      forever). MODE: echo (send back, half-close at EOF), sink (read to
      EOF, answer '<bytes>\\n'), source (send the first 64K of the seed-0
      pattern over and over until the peer leaves), stdio (one connection: like stream). --ready FILE is
      created once the socket listens.
  stream ADDR [--retry SECS] [--timeout SECS]
      stdin to the connection (then shutdown(SHUT_WR)), the connection to
      stdout until the peer's EOF. --retry: retry while refused; --timeout:
      fail when the connection makes no progress for that long.
  echo-many ADDR N [--bytes SIZE] [--timeout SECS] [--retry SECS]
      open N connections at once, each sends its own pattern (default 16K)
      to an echo listener and checks what comes back.
  stall-check SOURCE-ADDR ECHO-ADDR [--bytes SIZE] [--stall SECS] [--timeout SECS]
      connect to a source and never read it; after --stall (default 2) an
      echo of --bytes (default 1M) on a second connection must complete;
      then the first must still deliver the pattern.
  expect-refused ADDR [--within SECS]
      succeed if the connection is refused, reset or (hybrid) closed
      without OK within SECS (default 10).
  gen SIZE [--seed N]
      write SIZE bytes of the pattern of seed N (default 0) to stdout.
  bench-send ADDR MIB | bench-recv ADDR MIB | bench-latency ADDR [ROUNDS]
      throughput to a sink / from a source; round trips to an echo
      listener (default 1000) and connect+first echo.
  pty-run ROWS COLS -- CMD [ARGS...]
      run CMD on a new pseudo-terminal of that size (its controlling
      terminal), copy what it writes to stdout, exit with its status.
  run-as UID GID -- CMD [ARGS...]
      drop supplementary groups, then become GID and UID, and exec CMD.
  http SOCK METHOD PATH [BODY]
      one HTTP request to a Unix socket; prints `STATUS BODY` on one line.
Exit status: 0 done/passed, 1 failed (one line on stderr), 2 usage error.";

/// One parsed command line.
#[derive(Debug, PartialEq)]
enum Cmd {
    Listen {
        addr: Addr,
        mode: Mode,
        count: Option<u64>,
        ready: Option<PathBuf>,
    },
    Stream {
        addr: Addr,
        retry: Duration,
        timeout: Option<Duration>,
    },
    EchoMany {
        addr: Addr,
        n: usize,
        bytes: usize,
        timeout: Duration,
        retry: Duration,
    },
    StallCheck {
        source: Addr,
        echo: Addr,
        bytes: usize,
        stall: Duration,
        timeout: Duration,
    },
    ExpectRefused {
        addr: Addr,
        within: Duration,
    },
    Gen {
        bytes: u64,
        seed: u64,
    },
    BenchSend {
        addr: Addr,
        mib: usize,
    },
    BenchRecv {
        addr: Addr,
        mib: usize,
    },
    BenchLatency {
        addr: Addr,
        rounds: usize,
    },
    Help,
}

/// How long a check waits on any one read or write before calling it a stall.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// `64`, `16K`, `64M`, `1G` (binary multiples).
fn parse_size(s: &str) -> Result<u64, String> {
    let (digits, mult) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 1 << 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("size '{s}' is not a number with an optional K, M or G"));
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("size '{s}' is too large"))
}

fn parse_count(what: &str, s: &str, max: usize) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("{what} '{s}' must be a whole number from 1 to {max}")),
    }
}

fn parse_secs(what: &str, s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && (0.0..=86400.0).contains(&x) => Ok(Duration::from_secs_f64(x)),
        _ => Err(format!(
            "{what} '{s}' must be a number of seconds from 0 to 86400"
        )),
    }
}

/// Splits `args` into positionals and `--flag VALUE` options from `allowed`.
fn split_args<'a>(
    args: &'a [String],
    allowed: &[&str],
) -> Result<(Vec<&'a str>, HashMap<&'a str, &'a str>), String> {
    let mut pos = Vec::new();
    let mut opts = HashMap::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(name) = a.strip_prefix("--") {
            if !allowed.contains(&name) {
                return Err(format!("unknown option '{a}' here (try --help)"));
            }
            let v = it.next().ok_or_else(|| format!("option '{a}' needs a value"))?;
            opts.insert(name, v.as_str());
        } else {
            pos.push(a.as_str());
        }
    }
    Ok((pos, opts))
}

fn parse(argv: &[String]) -> Result<Cmd, String> {
    let Some((cmd, rest)) = argv.split_first() else {
        return Err("no command given (try --help)".into());
    };
    let allowed: &[&str] = match cmd.as_str() {
        "-h" | "--help" | "help" => return Ok(Cmd::Help),
        "listen" => &["count", "ready"],
        "stream" => &["retry", "timeout"],
        "echo-many" => &["bytes", "timeout", "retry"],
        "stall-check" => &["bytes", "stall", "timeout"],
        "expect-refused" => &["within"],
        "gen" => &["seed"],
        "bench-send" | "bench-recv" | "bench-latency" => &[],
        _ => return Err(format!("unknown command '{cmd}' (try --help)")),
    };
    let (pos, opts) = split_args(rest, allowed)?;
    let arity = |lo: usize, hi: usize| {
        if (lo..=hi).contains(&pos.len()) {
            Ok(())
        } else {
            let want = if hi > lo {
                format!("{lo} or {hi}")
            } else {
                lo.to_string()
            };
            Err(format!(
                "'{cmd}' takes {want} arguments, got {} (try --help)",
                pos.len()
            ))
        }
    };
    let secs = |name: &str, default: f64| match opts.get(name) {
        Some(v) => parse_secs(&format!("--{name}"), v),
        None => Ok(Duration::from_secs_f64(default)),
    };
    let bytes = |default: u64| -> Result<usize, String> {
        let b = opts.get("bytes").map_or(Ok(default), |v| parse_size(v))?;
        match usize::try_from(b) {
            Ok(b) if (1..=1 << 30).contains(&b) => Ok(b),
            _ => Err(format!("--bytes must be from 1 to 1G, got {b}")),
        }
    };
    Ok(match cmd.as_str() {
        "listen" => {
            arity(2, 2)?;
            let mode = Mode::parse(pos[1])?;
            let count = opts
                .get("count")
                .map(|c| parse_count("--count", c, 1 << 20))
                .transpose()?;
            if mode == Mode::Stdio && count != Some(1) {
                return Err("mode stdio serves one connection: give --count 1".into());
            }
            Cmd::Listen {
                addr: Addr::parse_listen(pos[0])?,
                mode,
                count: count.map(|c| c as u64),
                ready: opts.get("ready").map(PathBuf::from),
            }
        }
        "stream" => {
            arity(1, 1)?;
            Cmd::Stream {
                addr: Addr::parse_connect(pos[0])?,
                retry: secs("retry", 0.0)?,
                timeout: opts
                    .get("timeout")
                    .map(|v| parse_secs("--timeout", v))
                    .transpose()?,
            }
        }
        "echo-many" => {
            arity(2, 2)?;
            Cmd::EchoMany {
                addr: Addr::parse_connect(pos[0])?,
                n: parse_count("N", pos[1], 10_000)?,
                bytes: bytes(16 << 10)?,
                timeout: secs("timeout", DEFAULT_TIMEOUT.as_secs_f64())?,
                retry: secs("retry", 0.0)?,
            }
        }
        "stall-check" => {
            arity(2, 2)?;
            Cmd::StallCheck {
                source: Addr::parse_connect(pos[0])?,
                echo: Addr::parse_connect(pos[1])?,
                bytes: bytes(1 << 20)?,
                stall: secs("stall", 2.0)?,
                timeout: secs("timeout", DEFAULT_TIMEOUT.as_secs_f64())?,
            }
        }
        "expect-refused" => {
            arity(1, 1)?;
            Cmd::ExpectRefused {
                addr: Addr::parse_connect(pos[0])?,
                within: secs("within", 10.0)?,
            }
        }
        "gen" => {
            arity(1, 1)?;
            let seed = match opts.get("seed") {
                Some(s) => s
                    .parse()
                    .map_err(|_| format!("--seed '{s}' must be a whole number"))?,
                None => 0,
            };
            Cmd::Gen {
                bytes: parse_size(pos[0])?,
                seed,
            }
        }
        "bench-send" | "bench-recv" => {
            arity(2, 2)?;
            let addr = Addr::parse_connect(pos[0])?;
            let mib = parse_count("MIB", pos[1], 1 << 20)?;
            if cmd == "bench-send" {
                Cmd::BenchSend { addr, mib }
            } else {
                Cmd::BenchRecv { addr, mib }
            }
        }
        _ => {
            arity(1, 2)?;
            let rounds = pos
                .get(1)
                .map_or(Ok(1000), |r| parse_count("ROUNDS", r, 10_000_000))?;
            Cmd::BenchLatency {
                addr: Addr::parse_connect(pos[0])?,
                rounds,
            }
        }
    })
}

fn listen(addr: &Addr, mode: Mode, count: Option<u64>, ready: Option<&PathBuf>) -> Result<(), String> {
    let listener = Listener::bind(addr)?;
    if let Some(f) = ready {
        std::fs::write(f, b"").map_err(|e| format!("--ready {}: {e}", f.display()))?;
    }
    let mut handles = Vec::new();
    let mut served = 0u64;
    while count.is_none_or(|c| served < c) {
        let conn = listener.accept().map_err(|e| format!("accept on {addr}: {e}"))?;
        served += 1;
        let n = served;
        let report = move |r: Result<(), String>| {
            if let Err(e) = &r {
                eprintln!("vsock-probe listen: connection {n}: {e}");
            }
            r
        };
        if mode == Mode::Stdio {
            report(mode.serve(&conn))?;
            continue;
        }
        let handle = thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || report(mode.serve(&conn)))
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        // A forever listener keeps no handles: its threads end on their own.
        if count.is_some() {
            handles.push(handle);
        }
    }
    let failed = handles
        .into_iter()
        .map(|h| h.join())
        .filter(|r| !matches!(r, Ok(Ok(()))))
        .count();
    if failed > 0 {
        return Err(format!("{failed} of {served} connections failed (see above)"));
    }
    Ok(())
}

fn run(cmd: Cmd) -> Result<(), String> {
    match cmd {
        Cmd::Help => {
            println!("{USAGE}");
            Ok(())
        }
        Cmd::Listen {
            addr,
            mode,
            count,
            ready,
        } => listen(&addr, mode, count, ready.as_ref()),
        Cmd::Stream { addr, retry, timeout } => {
            let conn = checks::connect_retrying(&addr, timeout.unwrap_or(DEFAULT_TIMEOUT), retry)?;
            conn.set_timeout(timeout)
                .map_err(|e| format!("set timeout: {e}"))?;
            serve::pump_stdio(&conn)
        }
        Cmd::EchoMany {
            addr,
            n,
            bytes,
            timeout,
            retry,
        } => checks::echo_many(&addr, n, bytes, timeout, retry),
        Cmd::StallCheck {
            source,
            echo,
            bytes,
            stall,
            timeout,
        } => checks::stall_check(&source, &echo, bytes, stall, timeout),
        Cmd::ExpectRefused { addr, within } => checks::expect_refused(&addr, within),
        Cmd::Gen { bytes, seed } => serve::gen(bytes, seed),
        Cmd::BenchSend { addr, mib } => bench::send(&addr, mib, DEFAULT_TIMEOUT),
        Cmd::BenchRecv { addr, mib } => bench::recv(&addr, mib, DEFAULT_TIMEOUT),
        Cmd::BenchLatency { addr, rounds } => bench::latency(&addr, rounds, DEFAULT_TIMEOUT),
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("pty-run") {
        return pty_main(&argv[1..]);
    }
    if argv.first().map(String::as_str) == Some("http") {
        return http::main(&argv[1..]);
    }
    if argv.first().map(String::as_str) == Some("run-as") {
        let why = match run_as::parse(&argv[1..]) {
            Ok((uid, gid, cmd)) => run_as::run_as(uid, gid, cmd),
            Err(e) => e,
        };
        eprintln!("vsock-probe {why}");
        return ExitCode::from(2);
    }
    let cmd = match parse(&argv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vsock-probe: {e}");
            return ExitCode::from(2);
        }
    };
    let name = argv.first().cloned().unwrap_or_default();
    match run(cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = std::io::stdout().flush();
            eprintln!("vsock-probe {name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `pty-run ROWS COLS -- CMD [ARGS...]` (see pty.rs).
fn pty_main(args: &[String]) -> ExitCode {
    let parsed = match args {
        [rows, cols, dashes, cmd @ ..] if dashes == "--" && !cmd.is_empty() => {
            match (rows.parse::<u16>(), cols.parse::<u16>()) {
                (Ok(r), Ok(c)) if r > 0 && c > 0 => Ok((r, c, cmd)),
                _ => Err(format!(
                    "pty-run: ROWS and COLS must be numbers from 1 to 65535, got {rows} {cols}"
                )),
            }
        }
        _ => Err("usage: vsock-probe pty-run ROWS COLS -- CMD [ARGS...]".to_string()),
    };
    match parsed.and_then(|(r, c, cmd)| pty::pty_run(r, c, cmd)) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("vsock-probe pty-run: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &str) -> Result<Cmd, String> {
        parse(&args.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64"), Ok(64));
        assert_eq!(parse_size("16K"), Ok(16 << 10));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        for bad in ["", "M", "1.5M", "-1", "1T", "99999999999999999999G"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn commands_parse() {
        assert_eq!(
            p("listen vsock:5001 echo --ready /tmp/r"),
            Ok(Cmd::Listen {
                addr: Addr::Vsock {
                    cid: sock::CID_ANY,
                    port: 5001
                },
                mode: Mode::Echo,
                count: None,
                ready: Some("/tmp/r".into())
            })
        );
        assert_eq!(
            p("echo-many hybrid:/v.sock:5001 100 --bytes 4K --retry 30"),
            Ok(Cmd::EchoMany {
                addr: Addr::Hybrid {
                    path: "/v.sock".into(),
                    port: 5001
                },
                n: 100,
                bytes: 4096,
                timeout: DEFAULT_TIMEOUT,
                retry: Duration::from_secs(30)
            })
        );
        assert_eq!(
            p("gen 64M --seed 2"),
            Ok(Cmd::Gen {
                bytes: 64 << 20,
                seed: 2
            })
        );
        assert_eq!(
            p("bench-latency vsock:3:5001"),
            Ok(Cmd::BenchLatency {
                addr: Addr::Vsock { cid: 3, port: 5001 },
                rounds: 1000
            })
        );
        assert_eq!(p("--help"), Ok(Cmd::Help));
    }

    #[test]
    fn bad_command_lines_say_what_is_wrong() {
        for (bad, want) in [
            ("", "no command"),
            ("frobnicate", "unknown command"),
            ("listen vsock:5001 stdio", "--count 1"),
            ("listen vsock:5001 echo --count 0", "from 1 to"),
            ("listen vsock:5001", "takes 2 arguments, got 1"),
            ("stream vsock:2:1 --count 3", "unknown option '--count'"),
            ("stream vsock:2:1 --retry", "needs a value"),
            ("stream vsock:2:1 --retry soon", "seconds"),
            ("echo-many vsock:2:1 0", "N '0'"),
            ("echo-many vsock:2:1 5 --bytes 2G", "--bytes"),
            ("expect-refused vsock:1 ", "vsock:CID:PORT"),
            ("bench-send vsock:2:1", "takes 2 arguments"),
        ] {
            let e = p(bad).unwrap_err();
            assert!(e.contains(want), "'{bad}': {e}");
        }
    }
}
