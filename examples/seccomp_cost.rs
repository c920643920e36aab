//! What installing each seccomp filter costs on this host: builds each
//! thread kind's filter and installs it on a fresh thread, 20 times, and
//! prints the BPF size and the median build and install times. (The
//! kernel JIT-compiles every filter it is given; on PVM hosts that is the
//! cost that matters.) `cargo run --release --example seccomp_cost`.

use std::time::{Duration, Instant};

use kiln::seccomp::{allowed_calls, filter, ThreadKind};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    for kind in [
        ThreadKind::Vmm,
        ThreadKind::Vcpu,
        ThreadKind::Api,
        ThreadKind::VmmWithApi,
    ] {
        let (mut builds, mut installs) = (Vec::new(), Vec::new());
        let mut size = 0;
        for _ in 0..20 {
            let t = Instant::now();
            let program = filter(kind);
            builds.push(t.elapsed());
            size = program.len();
            let install = std::thread::spawn(move || {
                let t = Instant::now();
                seccompiler::apply_filter(&program).expect("the filter installs");
                t.elapsed()
            });
            installs.push(install.join().expect("the filtered thread ends"));
        }
        println!(
            "{kind:?}: {} system calls, {size} BPF instructions; build {:?}, install {:?} (medians of 20)",
            allowed_calls(kind),
            median(builds),
            median(installs)
        );
    }
}
