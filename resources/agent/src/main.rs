//! kiln's guest agent: PID 1 of the sandbox guest. It mounts what commands
//! need, reaps orphans, serves kiln on vsock port
//! `kiln_agent::protocol::AGENT_VSOCK_PORT`, and powers the guest off
//! when kiln asks, or when it cannot serve at all (so a broken guest stops
//! instead of hanging until kiln's timeout). Outside PID 1 (for trying it
//! under another init) it only serves, and exits instead of powering off.

use kiln_agent::agent::init::{mount_all, power_off};
use kiln_agent::agent::reaper::ReapMode;
use kiln_agent::agent::vsock::VsockListener;
use kiln_agent::agent::{Agent, AgentError};
use kiln_agent::protocol::AGENT_VSOCK_PORT;

fn stop(pid1: bool, code: i32) -> ! {
    if pid1 {
        let err = power_off();
        eprintln!("kiln-agent: powering off failed: {err}");
        // PID 1 must not exit: that panics the kernel.
        loop {
            std::thread::park();
        }
    }
    std::process::exit(code)
}

fn serve(pid1: bool) -> Result<(), AgentError> {
    let mode = if pid1 { ReapMode::Pid1 } else { ReapMode::PerChild };
    let agent = Agent::new(mode, move || stop(pid1, 0))?;
    let listener = VsockListener::bind(AGENT_VSOCK_PORT).map_err(|source| AgentError::Io {
        what: "listening on vsock (does the kernel have virtio-vsock?)",
        source,
    })?;
    agent.serve(listener)
}

fn main() {
    let pid1 = std::process::id() == 1;
    if pid1 {
        match mount_all() {
            Ok(problems) => {
                for problem in problems {
                    eprintln!("kiln-agent: {problem}");
                }
            }
            Err(e) => {
                eprintln!("kiln-agent: {e}; stopping");
                stop(pid1, 1);
            }
        }
    }
    if let Err(e) = serve(pid1) {
        eprintln!("kiln-agent: {e}; stopping");
        stop(pid1, 1);
    }
}
