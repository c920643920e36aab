//! Device models, their transports, and the bus that routes exits to them.

pub mod bus;
pub mod legacy;
pub mod virtio;

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber};

/// The one event loop the VMM thread runs; every device with file
/// descriptors to watch is a subscriber.
pub type EventLoop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;
