//! File transfer connections: `Put` writes a tree into the guest, `Get`
//! streams one out. Socket back-pressure paces both: the agent writes to
//! disk as it reads, and reads from disk only as fast as the host takes it.

use std::path::Path;

use super::{AgentError, PEER};
use crate::protocol::{read_frame, write_frame, AgentMsg, Conn, HostMsg, MsgName};
use crate::transfer::{send_tree, Item, Limits, TransferError, TreeWriter};

pub(super) fn put<C: Conn>(conn: &mut C, dest: &str) -> Result<(), AgentError> {
    let mut writer = TreeWriter::new(dest, Limits::UNLIMITED);
    let result = loop {
        let msg = match read_frame::<_, HostMsg>(conn, PEER) {
            Ok(Some(msg)) => msg,
            Ok(None) => {
                return Err(AgentError::HostBroke(
                    "the host closed a transfer before Done".into(),
                ))
            }
            Err(e) => {
                let _ = write_frame(conn, &AgentMsg::Error(e.to_string()), PEER);
                return Err(e.into());
            }
        };
        let step = match msg {
            HostMsg::Entry(entry) => writer.entry(entry),
            HostMsg::Data(data) => writer.data(&data),
            HostMsg::Done => break writer.finish(),
            other => {
                let err = AgentError::HostBroke(format!("unexpected {} during a transfer", other.name()));
                let _ = write_frame(conn, &AgentMsg::Error(err.to_string()), PEER);
                return Err(err);
            }
        };
        if let Err(e) = step {
            break Err(e);
        }
    };
    match result {
        Ok(()) => write_frame(conn, &AgentMsg::Done, PEER).map_err(Into::into),
        Err(e) => {
            // A failure here (disk full, a bad path) is the guest's: say so,
            // and read the rest so the host, which sends it all before
            // reading the answer, is not left blocked.
            write_frame(conn, &AgentMsg::Error(e.to_string()), PEER)?;
            while let Some(msg) = read_frame::<_, HostMsg>(conn, PEER)? {
                if msg == HostMsg::Done {
                    break;
                }
            }
            Ok(())
        }
    }
}

pub(super) fn get<C: Conn>(conn: &mut C, src: &str) -> Result<(), AgentError> {
    let sent = send_tree(Path::new(src), |item| {
        let msg = match item {
            Item::Entry(entry) => AgentMsg::Entry(entry),
            Item::Data(data) => AgentMsg::Data(data),
        };
        write_frame(conn, &msg, PEER).map_err(TransferError::from)
    });
    match sent {
        Ok(()) => write_frame(conn, &AgentMsg::Done, PEER).map_err(Into::into),
        // The host is gone: nobody to tell.
        Err(TransferError::Protocol(e)) => Err(e.into()),
        Err(e) => write_frame(conn, &AgentMsg::Error(e.to_string()), PEER).map_err(Into::into),
    }
}
