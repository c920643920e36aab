//! `run-as UID GID -- CMD [ARGS...]`: runs CMD as an ordinary user, so the
//! end-to-end suite can start kiln without privileges in a nested host that
//! has no `su` user database.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Parses `UID GID -- CMD [ARGS...]`.
pub fn parse(args: &[String]) -> Result<(u32, u32, &[String]), String> {
    match args {
        [uid, gid, dashes, cmd @ ..] if dashes == "--" && !cmd.is_empty() => {
            match (uid.parse::<u32>(), gid.parse::<u32>()) {
                (Ok(u), Ok(g)) => Ok((u, g, cmd)),
                _ => Err(format!("run-as: UID and GID must be numbers, got {uid} {gid}")),
            }
        }
        _ => Err("usage: vsock-probe run-as UID GID -- CMD [ARGS...]".to_string()),
    }
}

/// Drops supplementary groups, the gid and the uid (in that order: the uid
/// last, while changing the others is still allowed), then execs CMD.
/// Returns only on failure.
pub fn run_as(uid: u32, gid: u32, cmd: &[String]) -> String {
    // SAFETY: plain syscalls on this single-threaded process's credentials;
    // a null list with length 0 is what setgroups(2) takes to clear them.
    let dropped = unsafe {
        libc::setgroups(0, std::ptr::null()) == 0 && libc::setgid(gid) == 0 && libc::setuid(uid) == 0
    };
    if !dropped {
        return format!(
            "run-as: cannot become {uid}:{gid}: {}",
            std::io::Error::last_os_error()
        );
    }
    let err = Command::new(&cmd[0]).args(&cmd[1..]).exec();
    format!("run-as: cannot run {}: {err}", cmd[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn run_as_parses_ids_and_the_command() {
        let a = args("1000 1000 -- /kiln boot --kernel k");
        let (u, g, cmd) = parse(&a).unwrap();
        assert_eq!((u, g), (1000, 1000));
        assert_eq!(cmd, &args("/kiln boot --kernel k")[..]);
        assert!(parse(&args("x 1 -- a")).is_err());
        assert!(parse(&args("1 1 a")).is_err());
        assert!(parse(&args("1 1 --")).is_err());
    }
}
